/*
 * realign.c - main realigns its stack through a DRAP register, as GCC does for a
 * function that must align its frame beyond what its caller guarantees and is
 * passed arguments on the stack (built with -mincoming-stack-boundary=3):
 *
 *   main (CFA = *(rbp - 8): DW_CFA_def_cfa_expression, caller's rbp at rbp + 0)
 *     -> aligned_frame (8 arguments, 64-byte aligned locals)
 *       -> wait_here -> pause()
 *
 * An unwinder that knows only SP- and FP-relative CFAs stops at main.
 */
#include <stdalign.h>
#include <stdio.h>
#include <unistd.h>

#define KEEP __attribute__((noinline, noclone))

static volatile long sink;

static KEEP void wait_here(double *v)
{
  sink += (long)v[0];
  puts("ready");
  fflush(stdout);
  for (;;)
    pause();
}

static KEEP void aligned_frame(int a, int b, int c, int d, int e, int f, int g, int h)
{
  alignas(64) double v[8];
  for (int i = 0; i < 8; i++)
    v[i] = a + b + c + d + e + f + g + h + i;
  wait_here(v);
  sink += (long)v[a & 7];
}

int main(int argc, char **argv)
{
  (void)argv;
  aligned_frame(argc, 2, 3, 4, 5, 6, 7, 8);
  return 0;
}
