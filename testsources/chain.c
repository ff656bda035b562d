/*
 * chain.c - a plain five-deep call chain that ends blocked in pause().
 *
 *   main -> a -> b -> c -> d -> pause()
 *
 * Built at -O0/-O2/-O3, each with and without frame pointers, so the same
 * source exercises frame-pointer unwinding, pure CFI unwinding and the
 * prologue/epilogue shapes of different optimisation levels.
 *
 * Every function is noinline+noclone (so the names stay exactly a..d, with no
 * .constprop/.isra clones), keeps a few locals alive across its call and uses
 * the callee's result afterwards, which rules out tail calls.
 */
#include <signal.h>
#include <stdio.h>
#include <unistd.h>

#define KEEP __attribute__((noinline, noclone))

/* Never set; it only keeps d() from being "noreturn", which would let the
 * compiler drop the code after each call and shift return addresses. */
static volatile sig_atomic_t stop;

KEEP int d(int x)
{
    int local[4] = { x, x * 2, x * 3, x * 4 };

    printf("ready %d\n", (int)getpid());
    fflush(stdout);
    while (!stop)
        pause();
    return local[0] + local[1] + local[2] + local[3];
}

KEEP int c(int x)
{
    int y = x * 7 + 1;
    int r = d(y);
    return r + y;
}

KEEP int b(int x)
{
    int acc = 0;
    for (int i = 0; i < x % 5 + 3; i++)
        acc += i * x;
    int r = c(acc);
    return r ^ acc;
}

KEEP int a(int x)
{
    char buf[32];
    int n = snprintf(buf, sizeof buf, "a(%d)", x);
    int r = b(x + n);
    return r + buf[0];
}

int main(int argc, char **argv)
{
    (void)argv;
    int r = a(argc + 1);
    return r & 1;
}
