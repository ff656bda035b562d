/*
 * untouched.c - frames the unwinder walks by frame pointer (no CFI at all:
 * built without unwind tables or debug info), whose frame pointer points into
 * memory that nothing ever touched:
 *
 *   main   -> wait_with_fp: rbp = &untouched[middle] (the executable's .rodata)
 *   thread -> wait_with_fp: rbp = the middle of an anonymous mmap
 *   both then in pause(), by a raw `syscall`
 *
 * Neither page is in the process's page tables, so the kernel's
 * bpf_probe_read_user (which may not fault) cannot read them, while replay
 * reads the file's bytes and the core's zeros. `coredump live -compare` found
 * both differences; the fix is harness/live/residency.py.
 */
#include <pthread.h>
#include <stdio.h>
#include <sys/mman.h>
#include <unistd.h>

#define WORDS (1 << 17) /* 1 MiB: the middle is far from any page the program touches */

__attribute__((used)) static const unsigned long untouched[WORDS] = {
    [WORDS / 2] = 0x1234, [WORDS / 2 + 1] = 0x5678};

/* 128 KiB-aligned, so no other code shares its 64 KiB page of stack deltas. */
static volatile int parked;

__attribute__((noinline, aligned(1 << 17))) static void wait_with_fp(const void *fp, int ready)
{
  if (ready) {
    while (!parked)
      usleep(1000);
    usleep(100 * 1000); /* let the thread enter its system call */
    printf("ready %d\n", (int)getpid());
    fflush(stdout);
  } else {
    parked = 1;
  }
  for (;;) {
    long ret;
    /* The realignment loses the stack pointer for rules synthesized from the
     * instructions (unwind_data/synthesize.py), so this frame too is walked by
     * its (bogus) frame pointer. */
    __asm__ volatile("push %%rbp\n\tmov %%rsp, %%r12\n\tand $-16, %%rsp\n\t"
                     "mov %1, %%rbp\n\tmov $34, %%eax\n\tsyscall\n\t"
                     "mov %%r12, %%rsp\n\tpop %%rbp"
                     : "=a"(ret)
                     : "r"(fp)
                     : "rcx", "r11", "r12", "memory");
  }
}

static void *anon_thread(void *arg)
{
  wait_with_fp(arg, 0);
  return arg;
}

int main(void)
{
  pthread_t thread;
  char *anon = mmap(NULL, 1 << 20, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (anon == MAP_FAILED || pthread_create(&thread, NULL, anon_thread, anon + (1 << 19)) != 0) {
    perror("untouched");
    return 1;
  }
  wait_with_fp(&untouched[WORDS / 2], 1);
  return 0;
}
