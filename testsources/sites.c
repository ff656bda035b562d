/* Prologue/epilogue sites: a debugger stops this program at chosen
 * instructions so a case freezes a thread exactly there.
 *
 *   main -> f1 -> f2 -> f3 -> f4 -> f5 -> leaf, called in an endless loop.
 *   f5   small frame: `stp x29, x30, [sp, #-N]!` ... `ldp x29, x30, [sp], #N; ret`
 *   f4   large frame: the frame record is not at the top, so its epilogue is
 *        `ldp x29, x30, [sp, #..]` then `add sp, sp, #..` then `ret`
 *   leaf never calls anything and never saves the link register.
 * testsources/record_qemu.py picks the instruction addresses with capstone.
 */
#include <stdio.h>

static volatile int sink = 1;
static volatile int forever = 1;

__attribute__((noinline, noclone)) int leaf(int x)
{
  int s = 0;
  for (int i = 0; i < x; i++)
    s += i * sink;
  return s;
}

__attribute__((noinline, noclone)) int f5(int n)
{
  volatile int small[4];
  small[n & 3] = n;
  int r = leaf(n + small[n & 3]);
  return r + small[n & 3];
}

__attribute__((noinline, noclone)) int f4(int n)
{
  volatile char big[1000];
  big[n] = (char)n;
  int r = f5(n + big[n]);
  return r + big[n];
}

__attribute__((noinline, noclone)) int f3(int n) { return f4(n + 1) + sink; }
__attribute__((noinline, noclone)) int f2(int n) { return f3(n + 1) + sink; }
__attribute__((noinline, noclone)) int f1(int n) { return f2(n + 1) + sink; }

int main(void)
{
  printf("ready %d\n", 0);
  fflush(stdout);
  int total = 0;
  while (forever)
    total += f1(1);
  return total;
}
