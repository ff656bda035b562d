/* What the unwinder needs to know about the target architecture: where the
 * registers are in the program context and in a signal frame.
 *
 * The signal-frame layouts are kernel ABI (what the kernel writes on the user
 * stack when it delivers a signal); each offset below names the structure and
 * file it comes from. */
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
  /* x86_64 has no link register, but code may keep a return address in a
   * register for a moment: glibc's vfork pops it into rdi across the system
   * call (DW_CFA_register rip, rdi), which a thread frozen in vfork shows.
   * The CFI says so only for that register (harness/unwind_data: ra_register),
   * and only the top frame's registers are known. */
  st->lr = regs->di;
  st->lr_valid = 1;
  st->go_saved_sp = regs->r12; /* Go's vDSO calls keep the old SP there */
}

/* At __restore_rt the handler's ret has popped rt_sigframe.pretcode
 * (struct rt_sigframe, arch/x86/include/asm/sigframe.h), so the stack pointer
 * is at rt_sigframe.uc. */
enum sigframe_layout {
  /* struct ucontext (include/uapi/asm-generic/ucontext.h): uc_flags (8),
   * uc_link (8) and uc_stack (stack_t, 24) come before uc_mcontext. */
  UCONTEXT_MCONTEXT_OFFSET = 40,
  /* struct sigcontext (arch/x86/include/uapi/asm/sigcontext.h, x86_64):
   * r8..r15, rdi, rsi come before rbp. */
  SIGCONTEXT_RBP_OFFSET = 10 * sizeof(u64),
  SIGFRAME_REGS_OFFSET = UCONTEXT_MCONTEXT_OFFSET + SIGCONTEXT_RBP_OFFSET,
};

/* struct sigcontext from rbp to rip, in its order. */
struct sigframe_regs {
  u64 rbp, rbx, rdx, rax, rcx, rsp, rip;
};

static __always_inline void state_from_sigframe(struct unwind_state *st,
                                                const struct sigframe_regs *regs)
{
  st->pc = regs->rip;
  st->sp = regs->rsp;
  st->fp = regs->rbp;
  st->lr_valid = 0; /* x86_64 has no link register */
}

#else /* TARGET_ARCH_ARM64 */

/* AAPCS64: x29 is the frame pointer, x30 the link register. */
enum arm64_regno {
  ARM64_GO_SAVED_SP_REGNO = 20, /* Go's vDSO calls: the old SP (runtime/sys_linux_arm64.s) */
  ARM64_FP_REGNO = 29,
  ARM64_LR_REGNO = 30,
};

static __always_inline void state_from_regs(struct unwind_state *st,
                                            const struct target_regs *regs)
{
  st->pc = regs->pc;
  st->sp = regs->sp;
  st->fp = regs->regs[ARM64_FP_REGNO];
  st->lr = regs->regs[ARM64_LR_REGNO];
  st->lr_valid = 1;
  st->go_saved_sp = regs->regs[ARM64_GO_SAVED_SP_REGNO]; /* Go's vDSO calls keep the old SP there */
}

/* At __kernel_rt_sigreturn the stack pointer is at the rt_sigframe
 * (struct rt_sigframe { struct siginfo info; struct ucontext uc; },
 * arch/arm64/kernel/signal.c). */
enum sigframe_layout {
  SIGINFO_SIZE = 128, /* struct siginfo: SI_MAX_SIZE, include/uapi/asm-generic/siginfo.h */
  /* struct ucontext (arch/arm64/include/uapi/asm/ucontext.h): uc_flags (8),
   * uc_link (8), uc_stack (24), uc_sigmask (8) and the padding to glibc's
   * 1024-bit sigset_t (120), then uc_mcontext aligned to 16. */
  UCONTEXT_MCONTEXT_OFFSET = 176,
  /* struct sigcontext (arch/arm64/include/uapi/asm/sigcontext.h):
   * fault_address (8), then regs[31], sp, pc; we start at regs[29]. */
  SIGCONTEXT_X29_OFFSET = sizeof(u64) + ARM64_FP_REGNO * sizeof(u64),
  SIGFRAME_REGS_OFFSET = SIGINFO_SIZE + UCONTEXT_MCONTEXT_OFFSET + SIGCONTEXT_X29_OFFSET,
};

/* struct sigcontext from regs[29] to pc, in its order. */
struct sigframe_regs {
  u64 x29, x30, sp, pc;
};

static __always_inline void state_from_sigframe(struct unwind_state *st,
                                                const struct sigframe_regs *regs)
{
  st->pc = regs->pc;
  st->sp = regs->sp;
  st->fp = regs->x29;
  st->lr = regs->x30;
  st->lr_valid = 1;
}

#endif

#endif /* UNWINDER_ARCH_H */
