/*
 * vdso.c - threads that spend nearly all their time inside the vDSO:
 *
 *   main     clock_gettime(CLOCK_MONOTONIC) in a loop
 *   tod      gettimeofday() in a loop
 *   clock    clock_gettime(CLOCK_REALTIME) in a loop, two frames deep
 *
 * None of them enters the kernel, so a core taken at any moment has most of
 * them stopped at an instruction of the vDSO (linux-vdso.1.so), whose image
 * is only in the core's memory at AT_SYSINFO_EHDR: no file maps it. "ready"
 * is printed once every thread is looping.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <sys/time.h>
#include <time.h>

#define KEEP __attribute__((noinline, noclone))

static atomic_int looping;
static volatile long sink;

static KEEP void *tod_loop(void *arg)
{
  (void)arg;
  struct timeval tv;
  atomic_fetch_add(&looping, 1);
  for (;;) {
    gettimeofday(&tv, NULL);
    sink += tv.tv_usec;
  }
  return NULL;
}

static KEEP long realtime_now(void)
{
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return ts.tv_nsec;
}

static KEEP void *clock_loop(void *arg)
{
  (void)arg;
  atomic_fetch_add(&looping, 1);
  for (;;)
    sink += realtime_now();
  return NULL;
}

int main(void)
{
  pthread_t tod, clock;
  struct timespec ts;
  pthread_create(&tod, NULL, tod_loop, NULL);
  pthread_create(&clock, NULL, clock_loop, NULL);
  while (atomic_load(&looping) < 2)
    ;
  puts("ready");
  fflush(stdout);
  for (;;) {
    clock_gettime(CLOCK_MONOTONIC, &ts);
    sink += ts.tv_nsec;
  }
}
