/* What the unwinder needs to know about the target architecture: where the
 * registers are in the program context and in a signal frame. */
#ifndef UNWINDER_ARCH_H
#define UNWINDER_ARCH_H

#include "types.h"

#if defined(TARGET_ARCH_X86_64)

static __always_inline void state_from_regs(struct unwind_state *st,
                                            const struct target_regs *regs)
{
  st->pc = regs->ip;
  st->sp = regs->sp;
  st->fp = regs->bp;
  st->lr = 0;
  st->lr_valid = 0; /* x86_64 has no link register */
}

/* At __restore_rt the stack pointer is at the ucontext of the rt_sigframe;
 * uc_mcontext (struct sigcontext) starts 40 bytes in. We read rbp..rip:
 * rbp, rbx, rdx, rax, rcx, rsp, rip. */
#define SIGFRAME_READ_OFFSET (40 + 10 * 8)
#define SIGFRAME_READ_WORDS 7
#define SIGFRAME_FP 0
#define SIGFRAME_SP 5
#define SIGFRAME_PC 6
#define SIGFRAME_LR (-1)

#else /* TARGET_ARCH_ARM64 */

static __always_inline void state_from_regs(struct unwind_state *st,
                                            const struct target_regs *regs)
{
  st->pc = regs->pc;
  st->sp = regs->sp;
  st->fp = regs->regs[29];
  st->lr = regs->regs[30];
  st->lr_valid = 1;
}

/* At __kernel_rt_sigreturn the stack pointer is at the rt_sigframe: 128 bytes
 * of siginfo, then the ucontext whose uc_mcontext starts 176 bytes in, and
 * sigcontext.regs[] 8 bytes after that. We read x29, x30, sp, pc. */
#define SIGFRAME_READ_OFFSET (128 + 176 + 8 + 29 * 8)
#define SIGFRAME_READ_WORDS 4
#define SIGFRAME_FP 0
#define SIGFRAME_LR 1
#define SIGFRAME_SP 2
#define SIGFRAME_PC 3

#endif

#endif /* UNWINDER_ARCH_H */
