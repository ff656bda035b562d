/*
 * untouched.c - a frame the unwinder walks by frame pointer (no CFI at all:
 * built without unwind tables or debug info), whose frame pointer points into
 * a page of the executable's read-only data that nothing ever touched:
 *
 *   main -> wait_with_fp: rbp = &untouched[middle], then pause() by `syscall`
 *
 * The page is in the file but not in the process's page tables, so the
 * kernel's bpf_probe_read_user (which may not fault) cannot read it, while a
 * reader that serves the file's bytes can. `coredump live -compare` found the
 * emulator doing the latter; the fix is harness/live/residency.py.
 */
#include <stdio.h>
#include <unistd.h>

#define WORDS (1 << 17) /* 1 MiB: the middle is far from any page the program touches */

__attribute__((used)) static const unsigned long untouched[WORDS] = {
    [WORDS / 2] = 0x1234, [WORDS / 2 + 1] = 0x5678};

/* 128 KiB-aligned, so no other code shares its 64 KiB page of stack deltas. */
__attribute__((noinline, aligned(1 << 17))) static void wait_with_fp(const void *fp)
{
  printf("ready %d\n", (int)getpid());
  fflush(stdout);
  for (;;) {
    long ret;
    __asm__ volatile("push %%rbp\n\tmov %1, %%rbp\n\tmov $34, %%eax\n\tsyscall\n\tpop %%rbp"
                     : "=a"(ret)
                     : "r"(fp)
                     : "rcx", "r11", "memory");
  }
}

int main(void)
{
  wait_with_fp(&untouched[WORDS / 2]);
  return 0;
}
