/*
 * vfork.c - a parent frozen in vfork() while its child runs on the parent's
 * stack and memory:
 *
 *   parent  main -> spawn -> vfork(), waiting in the kernel for the child
 *   child   main -> spawn -> child_wait -> nanosleep(), until it is killed
 *
 * The child shares the parent's address space until it execs or exits, so a
 * core of either holds both stacks' contents; the parent's is taken by the
 * kernel (a fatal signal ends its vfork wait, which a ptrace stop cannot),
 * the child's by gcore. "ready <child pid>" is printed by the child.
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <time.h>
#include <unistd.h>

#define KEEP __attribute__((noinline, noclone))

static KEEP void child_wait(void)
{
  char line[32];
  int n = snprintf(line, sizeof(line), "ready %d\n", (int)getpid());
  write(1, line, (size_t)n);
  struct timespec ts = {1000, 0};
  for (;;)
    nanosleep(&ts, NULL);
}

static KEEP int spawn(void)
{
  pid_t pid = vfork();
  if (pid == 0) {
    child_wait();
    _exit(0);
  }
  return pid;
}

int main(void)
{
  return spawn() < 0;
}
