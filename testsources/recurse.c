/*
 * recurse.c - a single thread 220 frames deep in non-tail recursion,
 * blocked at the bottom in pause():
 *
 *   main -> recurse(220) -> recurse(219) -> ... -> recurse(1) -> bottom() -> pause()
 *
 * Deep stacks test an unwinder's frame limit and its per-frame cost; every
 * frame has the same function, so an off-by-one in the CFA computation shows
 * up as a wrong depth rather than a wrong name.
 */
#include <signal.h>
#include <stdio.h>
#include <unistd.h>

#define KEEP __attribute__((noinline, noclone))
#define DEPTH 220

static volatile sig_atomic_t stop;      /* never set: keeps bottom() returning */

KEEP int bottom(int n)
{
    printf("ready %d\n", (int)getpid());
    fflush(stdout);
    while (!stop)
        pause();
    return n;
}

KEEP int recurse(int n)
{
    volatile int local = n * 3;         /* one stack slot per frame */

    if (n <= 1)
        return bottom(local);
    /* Using the result after the call keeps this a real (non-tail) call. */
    return recurse(n - 1) + local;
}

int main(void)
{
    return recurse(DEPTH) & 1;
}
