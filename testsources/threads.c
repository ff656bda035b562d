/*
 * threads.c - main plus five threads, each parked in a different place:
 *
 *   cond    pthread_cond_wait()      (futex wait inside libc)
 *   sleep   nanosleep()              (plain blocking syscall)
 *   reader  read() on a pipe nobody ever writes
 *   poll    poll() on the same pipe with an infinite timeout
 *   spin    busy loop, 3 frames deep, never enters the kernel
 *   main    pthread_join()
 *
 * So one core holds threads stopped in a syscall, one stopped at an arbitrary
 * user-space instruction, and a main thread whose stack ends in _start, while
 * the others end in clone3/start_thread.  "ready" is printed only once every
 * thread has announced that it is about to block.
 */
#define _GNU_SOURCE
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <time.h>
#include <unistd.h>

#define KEEP __attribute__((noinline, noclone))
#define NTHREADS 5

static atomic_int parked;               /* threads about to block */
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cv = PTHREAD_COND_INITIALIZER;
static int never;                       /* the condition nobody signals */
static int pipefd[2];                   /* never written */
static volatile unsigned long spins;    /* the busy thread's counter */
static volatile int stop_spinning;      /* never set: keeps spin_inner returning */

static void announce(void)
{
    atomic_fetch_add(&parked, 1);
}

static void *cond_thread(void *arg)
{
    pthread_mutex_lock(&mu);
    announce();
    while (!never)
        pthread_cond_wait(&cv, &mu);
    pthread_mutex_unlock(&mu);
    return arg;
}

static void *sleep_thread(void *arg)
{
    struct timespec ts = { .tv_sec = 3600, .tv_nsec = 0 };

    announce();
    for (;;)
        nanosleep(&ts, NULL);
    return arg;
}

static void *read_thread(void *arg)
{
    char c;

    announce();
    while (read(pipefd[0], &c, 1) != 0)
        ;
    return arg;
}

static void *poll_thread(void *arg)
{
    struct pollfd p = { .fd = pipefd[0], .events = POLLIN };

    announce();
    for (;;)
        poll(&p, 1, -1);
    return arg;
}

/* The spinner is three real frames deep so the unwinder has to walk through
 * user code from an arbitrary (non-call-site) pc. */
KEEP unsigned long spin_inner(unsigned long step)
{
    while (!stop_spinning)
        spins += step;
    return spins;
}

KEEP unsigned long spin_middle(unsigned long step)
{
    unsigned long r = spin_inner(step * 2);
    return r + step;
}

KEEP unsigned long spin_outer(unsigned long step)
{
    announce();
    unsigned long r = spin_middle(step + 1);
    return r ^ step;
}

static void *spin_thread(void *arg)
{
    spin_outer((unsigned long)arg);
    return arg;
}

int main(void)
{
    static const struct {
        const char *name;
        void *(*fn)(void *);
    } table[NTHREADS] = {
        { "cond", cond_thread },   { "sleep", sleep_thread },
        { "reader", read_thread }, { "poll", poll_thread },
        { "spin", spin_thread },
    };
    pthread_t tids[NTHREADS];

    if (pipe(pipefd) != 0) {
        perror("pipe");
        return 1;
    }
    for (int i = 0; i < NTHREADS; i++) {
        if (pthread_create(&tids[i], NULL, table[i].fn, (void *)1UL) != 0) {
            perror("pthread_create");
            return 1;
        }
        pthread_setname_np(tids[i], table[i].name);
    }
    while (atomic_load(&parked) < NTHREADS)
        usleep(1000);
    usleep(100 * 1000);                 /* let them actually enter their syscalls */

    printf("ready %d\n", (int)getpid());
    fflush(stdout);
    pthread_join(tids[0], NULL);        /* never returns */
    return 0;
}
