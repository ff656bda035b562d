/*
 * sighandler.c - two threads interrupted mid-loop by a signal, each parked in
 * its handler:
 *
 *   alt:    spin_outer -> spin_loop  <SIGUSR1, handler on a sigaltstack>
 *               [signal frame] -> on_signal -> handler_wait -> pause()
 *   normal: spin_outer -> spin_loop  <SIGUSR2, handler on the thread's stack>
 *               [signal frame] -> on_signal -> handler_wait -> pause()
 *   main:   pthread_join()
 *
 * The interrupted pc is an arbitrary instruction of a loop (not a call site),
 * so the unwinder must take it as exact. On the alternate stack the handler's
 * frames and the interrupted frames are on different stacks; the unwinder
 * must follow the signal frame back across. The signal trampoline is the
 * libc's restorer on amd64, the vDSO's on an arm64 kernel, and a page of
 * anonymous memory under qemu-user: the point of this program.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define KEEP __attribute__((noinline, noclone))

static atomic_int spinning;             /* threads inside spin_loop */
static atomic_int parked;               /* handlers about to pause() */
static volatile int stop;               /* never set */
static volatile unsigned long counter;

KEEP void handler_wait(int sig)
{
    atomic_fetch_add(&parked, 1);
    while (!stop)
        pause();
    counter += (unsigned long)sig;
}

KEEP static void on_signal(int sig)
{
    handler_wait(sig);
    asm volatile("" ::: "memory");      /* no tail call: keep this frame */
}

KEEP unsigned long spin_loop(unsigned long step)
{
    atomic_fetch_add(&spinning, 1);
    while (!stop)
        counter += step;
    return counter;
}

KEEP unsigned long spin_outer(unsigned long step)
{
    unsigned long r = spin_loop(step * 3);
    return r ^ step;
}

static void *alt_thread(void *arg)
{
    stack_t ss = { .ss_size = 64 * 1024, .ss_flags = 0 };

    ss.ss_sp = malloc(ss.ss_size);
    if (ss.ss_sp == NULL || sigaltstack(&ss, NULL) != 0) {
        perror("sigaltstack");
        exit(1);
    }
    spin_outer((unsigned long)arg);
    return arg;
}

static void *normal_thread(void *arg)
{
    spin_outer((unsigned long)arg);
    return arg;
}

static void handle(int sig, int flags)
{
    struct sigaction sa;

    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = flags;
    if (sigaction(sig, &sa, NULL) != 0) {
        perror("sigaction");
        exit(1);
    }
}

int main(void)
{
    pthread_t alt, normal;

    handle(SIGUSR1, SA_ONSTACK);
    handle(SIGUSR2, 0);
    if (pthread_create(&alt, NULL, alt_thread, (void *)1UL) != 0 ||
        pthread_create(&normal, NULL, normal_thread, (void *)2UL) != 0) {
        perror("pthread_create");
        return 1;
    }
    pthread_setname_np(alt, "alt");
    pthread_setname_np(normal, "normal");
    while (atomic_load(&spinning) < 2)
        usleep(1000);
    usleep(20 * 1000);                  /* well inside the loop */
    pthread_kill(alt, SIGUSR1);
    pthread_kill(normal, SIGUSR2);
    while (atomic_load(&parked) < 2)
        usleep(1000);
    usleep(100 * 1000);                 /* let both enter pause() */
    printf("ready %d\n", (int)getpid());
    fflush(stdout);
    pthread_join(alt, NULL);            /* never returns */
    return 0;
}
