/*
 * sigframe.c - a thread blocked inside a signal handler:
 *
 *   main -> outer -> raise(SIGUSR1) -> [kernel signal frame, __restore_rt]
 *        -> on_usr1 -> handler_work -> pause()
 *
 * The handler runs on the normal stack (no SA_ONSTACK), so the unwinder has
 * to recognise the signal trampoline, restore all registers from the
 * ucontext the kernel pushed, and then treat the interrupted pc as an exact
 * pc (not a return address) in raise's frame.
 */
#define _GNU_SOURCE
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#define KEEP __attribute__((noinline, noclone))

static volatile sig_atomic_t stop;      /* never set */

KEEP int handler_work(int sig)
{
    /* stdio in a handler is fine here: the signal is raised synchronously
     * from outer(), never while main is inside stdio. */
    printf("ready %d\n", (int)getpid());
    fflush(stdout);
    while (!stop)
        pause();                        /* SIGUSR1 stays blocked while we are here */
    return sig;
}

KEEP static void on_usr1(int sig)
{
    int r = handler_work(sig);
    asm volatile("" : : "r"(r) : "memory");  /* no tail call: keep this frame */
}

KEEP int outer(int x)
{
    int r = raise(SIGUSR1);
    return r + x;
}

int main(int argc, char **argv)
{
    struct sigaction sa;

    (void)argv;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_usr1;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = 0;                    /* no SA_ONSTACK: same stack as main */
    if (sigaction(SIGUSR1, &sa, NULL) != 0) {
        perror("sigaction");
        return 1;
    }
    return outer(argc) & 1;
}
