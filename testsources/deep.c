/*
 * deep.c - main -> ping -> pong -> ping ... DEPTH frames deep -> pause().
 *
 * Deeper than an unwinder that stops at 512 or 1,024 frames can show: the
 * BPF program walks it in one trace through bpf_loop and tail calls. The two
 * functions alternate and keep a value live across the call, so no compiler
 * turns the recursion into a loop. `deep` (4,000 frames) fits in a trace of
 * MAX_FRAMES (4,096); `deep.limit` (-DDEPTH=6000) does not, and its trace
 * ends with the explicit native_max_frames error frame.
 */
#include <stdio.h>
#include <unistd.h>

#define KEEP __attribute__((noinline, noclone))
#ifndef DEPTH
#define DEPTH 4000
#endif

static volatile int sink;

static KEEP int pong(int n);

static KEEP int ping(int n)
{
  volatile int here = n;
  if (n == 0) {
    puts("ready");
    fflush(stdout);
    for (;;)
      pause();
  }
  return pong(n - 1) + here;
}

static KEEP int pong(int n)
{
  volatile int here = n;
  return ping(n - 1) + here;
}

int main(void)
{
  sink = ping(DEPTH - 2);
  return sink;
}
