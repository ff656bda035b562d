/*
 * static.c - a short call chain in a fully static executable, blocked in
 * nanosleep():
 *
 *   main -> outer -> inner -> nanosleep()
 *
 * There is no ld.so, no libc.so and no PT_DYNAMIC: the core holds one module,
 * and libc's code (and its unwind tables) live in the executable itself.
 */
#include <signal.h>
#include <stdio.h>
#include <time.h>
#include <unistd.h>

#define KEEP __attribute__((noinline, noclone))

static volatile sig_atomic_t stop;      /* never set */

KEEP int inner(int x)
{
    struct timespec ts = { .tv_sec = 3600, .tv_nsec = 0 };

    printf("ready %d\n", (int)getpid());
    fflush(stdout);
    while (!stop)
        nanosleep(&ts, NULL);
    return x + (int)ts.tv_nsec;
}

KEEP int outer(int x)
{
    int r = inner(x * 5 + 2);
    return r - x;
}

int main(int argc, char **argv)
{
    (void)argv;
    return outer(argc) & 1;
}
