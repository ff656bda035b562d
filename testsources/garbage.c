/*
 * garbage.c - a thread whose stack above it was overwritten, caught spinning:
 *
 *   main -> run -> smash: fills the 4 KiB above its own frame (its caller's
 *   frames, return addresses included) with 0x4141... and spins in place
 *
 * Memory corruption leaves stacks like this. The unwinder must end such a walk
 * with an error frame after a bounded number of steps, never loop or invent a
 * long trace.
 */
#include <stdio.h>

#define KEEP __attribute__((noinline, noclone))

static volatile unsigned long sink;

static KEEP void smash(void)
{
  volatile unsigned long *above = (volatile unsigned long *)__builtin_frame_address(0);
  for (int i = 0; i < 512; i++)
    above[i] = 0x4141414141414141UL; /* from this frame's saved rbp up */
  puts("ready");
  fflush(stdout);
  for (;;)
    sink++;
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
