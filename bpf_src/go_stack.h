/* Go's stack switches, for the native unwinder (included by native_stack.c).
 *
 * Go runs runtime and C code on the thread's system stack (g0) and Go code on
 * goroutine stacks; a return address can lead from one to the other. The
 * agent marks the functions where that happens (harness/unwind_data/
 * go_deltas.py):
 *
 * - runtime.asmcgocall (CFA_GO_ASMCGOCALL) calls C on g0 after saving, at the
 *   aligned SP it calls from, the goroutine's g (at SP + rule->aux) and the
 *   depth of its SP below g.stack.hi (at SP + rule->cfa_param; the agent reads
 *   both offsets from the function's code, they differ between Go versions):
 *   the goroutine's SP is g->stack.hi - depth, and the return address into
 *   asmcgocall's caller is there (runtime/asm_amd64.s, asmcgocall). On the
 *   "nosave" path (already on g0) g is 0 and the depth slot holds the old SP.
 * - runtime.systemstack on g0 (CFA_GO_STACK_SWITCH): the goroutine's state is
 *   only in g->sched, and g is in thread-local storage, which a perf event's
 *   registers do not give; the walk ends with ERR_GO_STACK_SWITCH.
 * - Go's vDSO calls (nanotime1, walltime, time.now) keep the SP of their frame
 *   in a callee-saved register (r12 / x20) while SP is on g0 (CFA_GO_SAVED_SP,
 *   between the two moves): the top frame's register gives the CFA. A caller
 *   frame there (below the vDSO's code) would need that register restored
 *   through the vDSO's CFI, which the unwinder does not track: the walk ends
 *   with ERR_GO_STACK_SWITCH.
 */
#ifndef UNWINDER_GO_STACK_H
#define UNWINDER_GO_STACK_H

/* runtime.g starts with its stack bounds: struct stack { lo, hi uintptr }
 * (runtime/runtime2.go, the same in every Go version). */
enum go_layout {
  GO_G_STACK_HI_OFFSET = 8,
};

/* The caller of asmcgocall, on the goroutine's stack. */
static __always_inline enum trace_status unwind_go_asmcgocall(struct unwind_state *st,
                                                              const struct unwind_rule *rule,
                                                              struct trace *trace,
                                                              struct frame *frame)
{
#if defined(TARGET_ARCH_X86_64)
  u64 cfa;
  if (!st->return_address) {
    /* Stopped inside asmcgocall itself, not in C: its own frame is empty
     * ($0), the return address at SP. */
    cfa = st->sp + sizeof(u64);
    frame->cfa = cfa;
    return unwind_to_caller(st, rule, cfa, trace);
  }
  u64 depth, g;
  u64 depth_at = st->sp + (s64)rule->cfa_param, g_at = st->sp + rule->aux;
  if (bpf_probe_read_user(&depth, sizeof(depth), (void *)depth_at) ||
      bpf_probe_read_user(&g, sizeof(g), (void *)g_at)) {
    DEBUG_PRINT("go: cannot read asmcgocall's saved g and depth at 0x%llx", st->sp);
    return abort_trace(trace, ERR_GO_READ_CGO_FRAME, st->sp);
  }
  u64 old_sp = depth;
  if (g) {
    u64 stack_hi;
    if (bpf_probe_read_user(&stack_hi, sizeof(stack_hi),
                            (void *)(g + GO_G_STACK_HI_OFFSET))) {
      DEBUG_PRINT("go: cannot read g->stack.hi of g 0x%llx", g);
      return abort_trace(trace, ERR_GO_READ_CGO_FRAME, g + GO_G_STACK_HI_OFFSET);
    }
    old_sp = stack_hi - depth;
  }
  /* asmcgocall's frame on the goroutine stack: the return address at old_sp.
   * The goroutine stack may lie anywhere relative to g0's, so the "stack
   * progresses" check of unwind_to_caller does not apply. */
  u64 ra;
  cfa = old_sp + sizeof(u64);
  frame->cfa = cfa;
  if (bpf_probe_read_user(&ra, sizeof(ra), (void *)old_sp)) {
    DEBUG_PRINT("go: cannot read asmcgocall's return address at 0x%llx", old_sp);
    return abort_trace(trace, ERR_NATIVE_READ_RETURN_ADDRESS, old_sp);
  }
  if (ra == 0)
    return end_trace(trace);
  enter_caller(st, ra, cfa, st->fp);
  return TRACE_STATUS_RUNNING;
#else
  (void)st;
  (void)rule;
  (void)frame;
  DEBUG_PRINT("go: asmcgocall is followed on x86_64 only");
  return abort_trace(trace, ERR_GO_STACK_SWITCH, 0);
#endif
}

/* A Go vDSO call, stopped on g0 with its old SP in a register. */
static __always_inline enum trace_status unwind_go_saved_sp(struct unwind_state *st,
                                                            const struct unwind_rule *rule,
                                                            struct trace *trace,
                                                            struct frame *frame)
{
  if (st->return_address || !st->go_saved_sp) {
    DEBUG_PRINT("go: vDSO call at pc 0x%llx: its SP register is known only in the top frame",
                st->pc);
    return abort_trace(trace, ERR_GO_STACK_SWITCH, 0);
  }
  u64 cfa = st->go_saved_sp + (s64)rule->cfa_param;
  u64 ra, fp;
  enum trace_status status = read_caller(st, rule, cfa, trace, &ra, &fp);
  if (status != TRACE_STATUS_RUNNING)
    return status;
  frame->cfa = cfa;
  /* The goroutine's stack, not g0's: no "stack progresses" check. */
  enter_caller(st, ra & return_address_mask(), cfa, fp);
  return TRACE_STATUS_RUNNING;
}

static __always_inline enum trace_status unwind_go_switch(struct unwind_state *st,
                                                          const struct unwind_rule *rule,
                                                          struct trace *trace,
                                                          struct frame *frame)
{
  if (rule->cfa_op == CFA_GO_ASMCGOCALL)
    return unwind_go_asmcgocall(st, rule, trace, frame);
  if (rule->cfa_op == CFA_GO_SAVED_SP)
    return unwind_go_saved_sp(st, rule, trace, frame);
  DEBUG_PRINT("go: stack switch at pc 0x%llx cannot be followed", st->pc);
  return abort_trace(trace, ERR_GO_STACK_SWITCH, 0);
}

#endif /* UNWINDER_GO_STACK_H */
