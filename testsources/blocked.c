/*
 * blocked.c - every thread blocked in a different system call, none in user
 * space, for `coredump live -compare` (each thread restarts its call when
 * interrupted, so the kernel unwinds it in the state a core holds):
 *
 *   sleep    nanosleep()                    (restart_syscall on restart)
 *   reader   read() on a pipe nobody writes  (-ERESTARTSYS)
 *   poll     poll() with no timeout          (restart block)
 *   mutex    pthread_mutex_lock() on a mutex main holds   (futex wait)
 *   cond     pthread_cond_wait()             (futex wait, condvar)
 *   altstack SIGUSR1 handler running on a sigaltstack, blocked in pause():
 *            handler -> __restore_rt signal frame -> the interrupted thread
 *   main     holds the mutex, pthread_join() (futex wait on the thread id)
 */
#define _GNU_SOURCE
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#define KEEP __attribute__((noinline, noclone))
#define NTHREADS 6

static atomic_int parked;
static pthread_mutex_t held = PTHREAD_MUTEX_INITIALIZER;  /* main never unlocks it */
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cv = PTHREAD_COND_INITIALIZER;
static int never;
static int pipefd[2];

static void announce(void)
{
    atomic_fetch_add(&parked, 1);
}

KEEP static void *sleep_thread(void *arg)
{
    struct timespec ts = { .tv_sec = 3600, .tv_nsec = 0 };

    announce();
    for (;;)
        nanosleep(&ts, NULL);
    return arg;
}

KEEP static void *read_thread(void *arg)
{
    char c;

    announce();
    while (read(pipefd[0], &c, 1) != 0)
        ;
    return arg;
}

KEEP static void *poll_thread(void *arg)
{
    struct pollfd p = { .fd = pipefd[0], .events = POLLIN };

    announce();
    for (;;)
        poll(&p, 1, -1);
    return arg;
}

KEEP static void *mutex_thread(void *arg)
{
    announce();
    pthread_mutex_lock(&held);
    return arg;
}

KEEP static void *cond_thread(void *arg)
{
    pthread_mutex_lock(&mu);
    announce();
    while (!never)
        pthread_cond_wait(&cv, &mu);
    pthread_mutex_unlock(&mu);
    return arg;
}

KEEP static void handler_wait(void)
{
    for (;;)
        pause();
}

static void on_usr1(int sig)
{
    (void)sig;
    announce();
    handler_wait();
}

KEEP static void *altstack_thread(void *arg)
{
    stack_t ss = { .ss_sp = malloc(1 << 16), .ss_size = 1 << 16, .ss_flags = 0 };
    struct sigaction sa = { .sa_handler = on_usr1, .sa_flags = SA_ONSTACK };

    if (!ss.ss_sp || sigaltstack(&ss, NULL) != 0 || sigaction(SIGUSR1, &sa, NULL) != 0) {
        perror("altstack");
        exit(1);
    }
    pthread_kill(pthread_self(), SIGUSR1);  /* the handler never returns */
    return arg;
}

int main(void)
{
    static const struct {
        const char *name;
        void *(*fn)(void *);
    } table[NTHREADS] = {
        { "sleep", sleep_thread }, { "reader", read_thread }, { "poll", poll_thread },
        { "mutex", mutex_thread }, { "cond", cond_thread },   { "altstack", altstack_thread },
    };
    pthread_t tids[NTHREADS];

    if (pipe(pipefd) != 0) {
        perror("pipe");
        return 1;
    }
    pthread_mutex_lock(&held);
    for (int i = 0; i < NTHREADS; i++) {
        if (pthread_create(&tids[i], NULL, table[i].fn, NULL) != 0) {
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
