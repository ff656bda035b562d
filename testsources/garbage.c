/*
 * garbage.c - a thread whose stack above it was overwritten, caught spinning:
 *
 *   main -> run -> smash: fills the 4 KiB above its own frame (its caller's
 *   frames, return addresses included) with 0x4141... and spins in place
 *   (garbage.block, -DBLOCK: sleeps in pause() instead, so `coredump live`
 *   catches it at syscall entry and both traces end in the same error frame)
 *
 * Memory corruption leaves stacks like this. The unwinder must end such a walk
 * with an error frame after a bounded number of steps, never loop or invent a
 * long trace.
 */
#include <stdio.h>
#include <unistd.h>

#define KEEP __attribute__((noinline, noclone))

static volatile unsigned long sink;

#ifdef BLOCK
/* 512 bytes: still every caller's frame, but never past the top of the stack,
 * which 4 KiB above the frame can be when the environment is small. */
#define SMASH_WORDS 64
#else
#define SMASH_WORDS 512
#endif

static KEEP void smash(void)
{
  volatile unsigned long *above = (volatile unsigned long *)__builtin_frame_address(0);
  for (int i = 0; i < SMASH_WORDS; i++)
    above[i] = 0x4141414141414141UL; /* from this frame's saved rbp up */
  puts("ready");
  fflush(stdout);
  for (;;)
#ifdef BLOCK
    pause();
#else
    sink++;
#endif
}

static KEEP void run(void)
{
  smash();
  sink--;
}

int main(void)
{
  run();
  return (int)sink;
}
