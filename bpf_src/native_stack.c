/* Native stack unwinder.
 *
 * native_tracer_entry runs on a perf event: it captures the interrupted
 * thread's registers and tail-calls unwind_native, which walks up to
 * FRAMES_PER_PROGRAM frames per invocation (one bpf_loop, whose callback the
 * verifier checks once) and tail-calls itself until the outermost frame, an
 * error or MAX_FRAMES. Each step finds the module of the PC
 * (pid_mappings), the unwind rule for the PC's ELF address (delta_pages,
 * stack_deltas, unwind_rules) and applies it: compute the CFA, read the
 * return address and the saved frame pointer. Modules without unwind data
 * are walked by frame-pointer chaining.
 *
 * The steps of one frame return an enum trace_status: TRACE_STATUS_RUNNING
 * to go on. A step that fails says what failed (DEBUG_PRINT), ends the trace
 * with an error frame (abort_trace) and returns TRACE_STATUS_ABORTED.
 */
#include "bpf_defs.h"
#include "arch.h"
#include "maps.h"

/* What frame-pointer chaining finds where FP points: the caller's FP, then
 * the return address (x86_64: call, push %rbp; arm64: stp x29, x30). */
struct frame_record {
  u64 fp;
  u64 ra;
};

/* Offset of a frame_record field from the CFA, which is just above the record. */
#define FRAME_RECORD_OFFSET(field)                                                 \
  ((s32)__builtin_offsetof(struct frame_record, field) - (s32)sizeof(struct frame_record))

/* Frame-pointer chaining, used where no stack delta covers the PC. */
static __always_inline void frame_pointer_rule(struct unwind_rule *rule)
{
  rule->cfa_op = CFA_FP;
  rule->aux = 0;
  rule->pad = 0;
  rule->cfa_param = sizeof(struct frame_record);
  rule->fp_offset = FRAME_RECORD_OFFSET(fp);
  rule->ra_offset = FRAME_RECORD_OFFSET(ra);
}

/* ---- The trace record ----------------------------------------------------- */

/* Appends a frame; NULL when the trace is full. */
static __always_inline struct frame *push_frame(struct trace *trace, u64 file_id, u64 addr,
                                                u8 kind, u8 flags, u16 error)
{
  u32 n = trace->num_frames;
  if (n >= MAX_FRAMES)
    return NULL;
  struct frame *f = &trace->frames[n & (MAX_FRAMES - 1)];
  f->file_id = file_id;
  f->addr = addr;
  f->cfa = 0;
  f->error = error;
  f->kind = kind;
  f->flags = flags;
  f->pad = 0;
  trace->num_frames = n + 1;
  return f;
}

/* Ends the trace with an error frame; the last slot is kept for it. */
static __always_inline enum trace_status abort_trace(struct trace *trace,
                                                     enum unwind_error error, u64 addr)
{
  if (trace->num_frames >= MAX_FRAMES)
    trace->num_frames = MAX_FRAMES - 1;
  push_frame(trace, 0, addr, FRAME_ERROR, 0, error);
  trace->status = TRACE_STATUS_ABORTED;
  return TRACE_STATUS_ABORTED;
}

/* The outermost frame is reached: the trace is complete. */
static __always_inline enum trace_status end_trace(struct trace *trace)
{
  trace->status = TRACE_STATUS_DONE;
  return TRACE_STATUS_DONE;
}

/* ---- Lookups in the agent's maps ------------------------------------------ */

static __always_inline struct mapping_info *find_mapping(u32 pid, u64 pc)
{
  /* A key of full length: the trie answers with the longest stored prefix,
   * i.e. the mapping that holds pc. */
  struct mapping_key key = {
      .prefixlen = MAPPING_PID_BITS + MAPPING_ADDR_BITS,
      .pid = pid,
      .addr_be = __builtin_bswap64(pc),
  };
  return bpf_map_lookup_elem(&pid_mappings, &key);
}

/* Binary search of one delta page for the last delta whose addr_low is
 * <= target; *index receives its index in stack_deltas. */
static __always_inline enum unwind_error search_delta_page(const struct delta_page *page,
                                                           u16 target, u32 *index)
{
  u32 first = page->first;
  u32 count = page->count;
  u32 lo = 0, hi = count;

  if (count == 0) {
    /* The agent writes no empty pages: every page starts with addr_low 0. */
    DEBUG_PRINT("native: empty delta page at stack_deltas[%u]", first);
    return ERR_NATIVE_EMPTY_DELTA_PAGE;
  }

  /* Invariant: deltas[first + lo].addr_low <= target < deltas[first + hi].addr_low */
  for (int i = 0; i < DELTA_SEARCH_STEPS; i++) {
    if (hi - lo <= 1)
      break;
    u32 mid = lo + (hi - lo) / 2;
    u32 mid_index = first + mid;
    struct stack_delta *delta = bpf_map_lookup_elem(&stack_deltas, &mid_index);
    if (!delta) {
      DEBUG_PRINT("native: no stack_deltas[%u]", mid_index);
      return ERR_NATIVE_MAP_LOOKUP;
    }
    if (delta->addr_low <= target)
      lo = mid;
    else
      hi = mid;
  }

  /* Only a page larger than the address space of a page gets here. */
  if (hi - lo > 1) {
    DEBUG_PRINT("native: delta search out of steps, %u of %u deltas left", hi - lo, count);
    return ERR_NATIVE_DELTA_SEARCH_EXHAUSTED;
  }
  *index = first + lo;
  return ERR_NONE;
}

/* Finds the rule for an ELF address: the last delta of the address's page
 * whose addr_low is <= the address. A module without deltas for the page is
 * walked by frame-pointer chaining. */
static __always_inline enum unwind_error find_unwind_rule(u64 file_id, u64 vaddr,
                                                          struct unwind_rule *rule)
{
  struct delta_page_key key = {.file_id = file_id, .page = vaddr >> DELTA_PAGE_BITS};
  struct delta_page *page = bpf_map_lookup_elem(&delta_pages, &key);
  if (!page) {
    frame_pointer_rule(rule);
    return ERR_NONE;
  }

  u32 index;
  enum unwind_error err = search_delta_page(page, vaddr & DELTA_PAGE_MASK, &index);
  if (err)
    return err;
  struct stack_delta *delta = bpf_map_lookup_elem(&stack_deltas, &index);
  if (!delta) {
    DEBUG_PRINT("native: no stack_deltas[%u]", index);
    return ERR_NATIVE_MAP_LOOKUP;
  }
  u32 rule_index = page->rule_base + delta->rule;
  struct unwind_rule *found = bpf_map_lookup_elem(&unwind_rules, &rule_index);
  if (!found) {
    DEBUG_PRINT("native: no unwind_rules[%u] for stack_deltas[%u]", rule_index, index);
    return ERR_NATIVE_MAP_LOOKUP;
  }
  *rule = *found;
  return ERR_NONE;
}

/* The bits of a return address that are address: arm64 pointer
 * authentication signs the others. Set by the agent; all bits without it. */
static __always_inline u64 return_address_mask(void)
{
  u32 zero = 0;
  struct unwinder_config *config = bpf_map_lookup_elem(&unwinder_config, &zero);
  return config && config->ra_mask ? config->ra_mask : ~0ULL;
}

/* ---- One frame ------------------------------------------------------------- */

static __always_inline u8 frame_flags(const struct unwind_state *st)
{
  return (st->return_address ? FRAME_FLAG_RETURN_ADDRESS : 0) |
         (st->signal_frame ? FRAME_FLAG_SIGNAL : 0);
}

/* Records the current PC as the next frame (module and ELF address); *frame
 * receives it. */
static __always_inline enum trace_status push_native_frame(const struct unwind_state *st,
                                                           struct trace *trace,
                                                           struct frame **frame)
{
  if (trace->num_frames >= MAX_FRAMES - 1) {
    DEBUG_PRINT("native: trace full at %u frames, pc 0x%llx", trace->num_frames, st->pc);
    return abort_trace(trace, ERR_NATIVE_MAX_FRAMES, 0);
  }
  if (st->pc == 0) {
    DEBUG_PRINT("native: pc is zero, sp 0x%llx", st->sp);
    return abort_trace(trace, ERR_NATIVE_ZERO_PC, 0);
  }

  /* A return address points after the call: look up the call itself. */
  u64 pc = st->pc - (st->return_address ? 1 : 0);
  struct mapping_info *mapping = find_mapping(trace->pid, pc);
  if (!mapping || !mapping->file_id) {
    DEBUG_PRINT("native: pc 0x%llx of pid %u is in no known module", pc, trace->pid);
    return abort_trace(trace, ERR_NATIVE_PC_NOT_MAPPED, pc);
  }

  *frame = push_frame(trace, mapping->file_id, pc - mapping->bias, FRAME_NATIVE,
                      frame_flags(st), ERR_NONE);
  if (!*frame) {
    DEBUG_PRINT("native: no room for the frame of pc 0x%llx", pc);
    return abort_trace(trace, ERR_NATIVE_MAX_FRAMES, 0);
  }
  return TRACE_STATUS_RUNNING;
}

/* One more word on the stack once the PLT entry's push has run. */
static __always_inline u64 plt_pushed_bytes(u64 pc, u8 push_end)
{
  return (pc & (PLT_ENTRY_SIZE - 1)) >= push_end ? sizeof(u64) : 0;
}

/* The CFA (the caller's SP) from the rule and this frame's registers. */
static __always_inline enum trace_status compute_cfa(const struct unwind_state *st,
                                                     const struct unwind_rule *rule,
                                                     struct trace *trace, u64 *cfa)
{
  switch (rule->cfa_op) {
  case CFA_SP:
    *cfa = st->sp + (s64)rule->cfa_param;
    return TRACE_STATUS_RUNNING;
  case CFA_FP:
    *cfa = st->fp + (s64)rule->cfa_param;
    return TRACE_STATUS_RUNNING;
  case CFA_PLT:
    *cfa = st->sp + (s64)rule->cfa_param + plt_pushed_bytes(st->pc, rule->aux);
    return TRACE_STATUS_RUNNING;
  case CFA_DEREF_FP: {
    u64 slot = st->fp + (s64)rule->cfa_param;
    if (bpf_probe_read_user(cfa, sizeof(*cfa), (void *)slot)) {
      DEBUG_PRINT("native: cannot read the CFA at 0x%llx, pc 0x%llx", slot, st->pc);
      return abort_trace(trace, ERR_NATIVE_READ_CFA, slot);
    }
    return TRACE_STATUS_RUNNING;
  }
  default:
    DEBUG_PRINT("native: no usable unwind rule at pc 0x%llx, cfa_op %u", st->pc, rule->cfa_op);
    return abort_trace(trace, ERR_NATIVE_NO_UNWIND_RULE, 0);
  }
}

/* Signal trampoline: the interrupted registers are in the signal frame at SP. */
static __always_inline enum trace_status unwind_signal_frame(struct unwind_state *st,
                                                             struct trace *trace)
{
  struct sigframe_regs regs;
  u64 addr = st->sp + SIGFRAME_REGS_OFFSET;
  if (bpf_probe_read_user(&regs, sizeof(regs), (void *)addr)) {
    DEBUG_PRINT("native: cannot read the signal frame at 0x%llx", addr);
    return abort_trace(trace, ERR_NATIVE_READ_SIGNAL_FRAME, 0);
  }
  state_from_sigframe(st, &regs);
  st->go_saved_sp = 0;    /* not in the signal frame's registers we read */
  st->return_address = 0; /* the interrupted PC is exact */
  st->signal_frame = 1;
  return TRACE_STATUS_RUNNING;
}

/* The caller's return address: saved at CFA + ra_offset, or (ra_offset 0)
 * still in the link register, which only the top frame and a signal frame
 * hold for certain. */
static __always_inline enum trace_status read_return_address(const struct unwind_state *st,
                                                             const struct unwind_rule *rule,
                                                             u64 cfa, struct trace *trace,
                                                             u64 *ra)
{
  if (rule->ra_offset == 0) {
    if (!st->lr_valid) {
      DEBUG_PRINT("native: return address of pc 0x%llx is in the stale link register",
                  st->pc);
      return abort_trace(trace, ERR_NATIVE_STALE_LINK_REGISTER, 0);
    }
    *ra = st->lr;
    return TRACE_STATUS_RUNNING;
  }

  u64 addr = cfa + (s64)rule->ra_offset;
  if (bpf_probe_read_user(ra, sizeof(*ra), (void *)addr)) {
    DEBUG_PRINT("native: cannot read the return address at 0x%llx, pc 0x%llx", addr, st->pc);
    return abort_trace(trace, ERR_NATIVE_READ_RETURN_ADDRESS, addr);
  }
  return TRACE_STATUS_RUNNING;
}

/* The caller's frame pointer: saved at CFA + fp_offset, or (fp_offset 0)
 * left as it is. */
static __always_inline enum trace_status read_frame_pointer(const struct unwind_state *st,
                                                            const struct unwind_rule *rule,
                                                            u64 cfa, struct trace *trace,
                                                            u64 *fp)
{
  *fp = st->fp;
  u8 fp_relative = rule->cfa_op == CFA_DEREF_FP && rule->aux == FP_AT_FP;
  if (rule->fp_offset == 0 && !fp_relative)
    return TRACE_STATUS_RUNNING;

  u64 addr = (fp_relative ? st->fp : cfa) + (s64)rule->fp_offset;
  if (bpf_probe_read_user(fp, sizeof(*fp), (void *)addr)) {
    DEBUG_PRINT("native: cannot read the saved frame pointer at 0x%llx, pc 0x%llx", addr,
                st->pc);
    return abort_trace(trace, ERR_NATIVE_READ_FRAME_POINTER, addr);
  }
  return TRACE_STATUS_RUNNING;
}

/* The caller becomes the current frame: it resumes at ra with SP = CFA. */
static __always_inline void enter_caller(struct unwind_state *st, u64 ra, u64 cfa, u64 fp)
{
  st->pc = ra;
  st->sp = cfa;
  st->fp = fp;
  st->lr_valid = 0; /* the callee may have reused the link register */
  st->go_saved_sp = 0;
  st->return_address = 1;
  st->signal_frame = 0;
  st->interp_done = 0;
}

/* The caller's return address and frame pointer, found from the CFA by the rule. */
static __always_inline enum trace_status read_caller(const struct unwind_state *st,
                                                     const struct unwind_rule *rule, u64 cfa,
                                                     struct trace *trace, u64 *ra, u64 *fp)
{
  enum trace_status status = read_return_address(st, rule, cfa, trace, ra);
  if (status != TRACE_STATUS_RUNNING)
    return status;
  return read_frame_pointer(st, rule, cfa, trace, fp);
}

/* Reads the caller's registers relative to the CFA and moves to the caller. */
static __always_inline enum trace_status unwind_to_caller(struct unwind_state *st,
                                                          const struct unwind_rule *rule,
                                                          u64 cfa, struct trace *trace)
{
  u64 ra, fp;
  enum trace_status status = read_caller(st, rule, cfa, trace, &ra, &fp);
  if (status != TRACE_STATUS_RUNNING)
    return status;

  ra &= return_address_mask();
  if (ra == 0)
    return end_trace(trace); /* a zero return address ends the frame-pointer chain */
  if (cfa < st->sp || (cfa == st->sp && ra == st->pc)) {
    DEBUG_PRINT("native: stack not progressing: sp 0x%llx, cfa 0x%llx, ra 0x%llx", st->sp, cfa,
                ra);
    return abort_trace(trace, ERR_NATIVE_STACK_NOT_PROGRESSING, 0);
  }
  enter_caller(st, ra, cfa, fp);
  return TRACE_STATUS_RUNNING;
}

#include "go_stack.h"

/* An interpreter loop at the frame just pushed: its interpreter frames come
 * first (innermost first, right above this native frame), so the frame is
 * taken back and pushed again once interp_prog has run (interp_done). */
static __always_inline u8 enter_interpreter(struct unwind_state *st, struct trace *trace,
                                            const struct frame *frame)
{
  if (st->interp_done)
    return 0;
  struct interpreter_ranges *ranges = bpf_map_lookup_elem(&interpreter_ranges,
                                                          &frame->file_id);
  if (!ranges)
    return 0;
  for (u32 i = 0; i < MAX_INTERPRETER_RANGES; i++) {
    if (i >= ranges->count)
      break;
    if (ranges->start[i] <= frame->addr && frame->addr < ranges->end[i]) {
      st->interp_prog = ranges->prog;
      st->interp_file_id = frame->file_id;
      st->interp_bias = st->pc - (st->return_address ? 1 : 0) - frame->addr;
      trace->num_frames--;
      return 1;
    }
  }
  return 0;
}

/* Unwinds one frame. Returns TRACE_STATUS_RUNNING while there are more. */
static __always_inline enum trace_status unwind_step(struct unwind_scratch *scratch)
{
  struct unwind_state *st = &scratch->state;
  struct trace *trace = &scratch->trace;
  struct frame *frame;
  struct unwind_rule rule;
  enum trace_status status;
  enum unwind_error err;
  u64 cfa;

  status = push_native_frame(st, trace, &frame);
  if (status != TRACE_STATUS_RUNNING)
    return status;
  if (enter_interpreter(st, trace, frame))
    return TRACE_STATUS_INTERPRETER;

  err = find_unwind_rule(frame->file_id, frame->addr, &rule);
  if (err) {
    DEBUG_PRINT("native: no unwind rule for 0x%llx in file 0x%llx", frame->addr,
                frame->file_id);
    return abort_trace(trace, err, 0);
  }
  DEBUG_PRINT("native: pc 0x%llx sp 0x%llx cfa_op %u", st->pc, st->sp, rule.cfa_op);

  if (rule.cfa_op == CFA_STOP)
    return end_trace(trace);
  if (rule.cfa_op == CFA_SIGNAL)
    return unwind_signal_frame(st, trace);
  if (rule.cfa_op == CFA_GO_STACK_SWITCH || rule.cfa_op == CFA_GO_ASMCGOCALL ||
      rule.cfa_op == CFA_GO_SAVED_SP)
    return unwind_go_switch(st, &rule, trace, frame);

  status = compute_cfa(st, &rule, trace, &cfa);
  if (status != TRACE_STATUS_RUNNING)
    return status;
  frame->cfa = cfa;
  return unwind_to_caller(st, &rule, cfa, trace);
}

/* ---- Programs -------------------------------------------------------------- */

static __always_inline void send_trace(struct unwind_scratch *scratch)
{
  DEBUG_PRINT("native: trace done: %u frames, status %u", scratch->trace.num_frames,
              scratch->trace.status);
  /* Only the frames in use: a short trace is a short record. A trace holds 1 to
   * MAX_FRAMES frames; the mask states that bound so the verifier can see it
   * (0 frames, which cannot happen, would send them all). */
  u64 frames = ((scratch->trace.num_frames - 1) & (MAX_FRAMES - 1)) + 1;
  u64 size = __builtin_offsetof(struct trace, frames) + frames * sizeof(struct frame);
  long err = bpf_ringbuf_output(&trace_events, &scratch->trace, size, 0);
  if (err)
    DEBUG_PRINT("native: ringbuf_output failed (%ld), the trace is lost", err);
}

/* This CPU's unwind state and trace (NULL past MAX_CPUS: the sample is dropped). */
static __always_inline struct unwind_scratch *cpu_scratch(void)
{
  u32 cpu = bpf_get_smp_processor_id();
  return bpf_map_lookup_elem(&unwind_scratch, &cpu);
}

/* bpf_loop callback: one frame; a non-zero return ends the loop. */
static long unwind_frame(u64 index, void *data)
{
  (void)index;
  struct unwind_scratch *scratch = cpu_scratch();
  u32 *status = data;
  if (!scratch) {
    *status = TRACE_STATUS_ABORTED;
    return 1;
  }
  *status = unwind_step(scratch);
  return *status != TRACE_STATUS_RUNNING;
}

/* A new trace at the interrupted thread's registers. */
static __always_inline void begin_trace(struct unwind_scratch *scratch, u64 pid_tgid,
                                        const struct target_regs *regs)
{
  scratch->trace.pid = pid_tgid >> 32; /* the thread group: the process */
  scratch->trace.tid = (u32)pid_tgid;
  scratch->trace.num_frames = 0;
  scratch->trace.status = TRACE_STATUS_RUNNING;

  state_from_regs(&scratch->state, regs);
  scratch->state.return_address = 0;
  scratch->state.signal_frame = 0;
  scratch->state.interp_done = 0;
  scratch->state.python_started = 0;
  scratch->state.python_frame = 0;
}

SEC("perf_event")
int unwind_native(struct perf_event_ctx *ctx)
{
  struct unwind_scratch *scratch = cpu_scratch();
  if (!scratch) {
    DEBUG_PRINT("native: no unwind_scratch, trace dropped");
    return 0;
  }

  u32 status = TRACE_STATUS_RUNNING;
  bpf_loop(FRAMES_PER_PROGRAM, unwind_frame, &status, 0);
  scratch = cpu_scratch(); /* the verifier forgets map values across the loop */
  if (!scratch)
    return 0;
  if (status == TRACE_STATUS_INTERPRETER) {
    bpf_tail_call(ctx, &unwind_progs, scratch->state.interp_prog);
    DEBUG_PRINT("native: no interpreter program %u, tail call failed",
                scratch->state.interp_prog);
    abort_trace(&scratch->trace, ERR_NATIVE_MAX_FRAMES, 0);
    send_trace(scratch);
    return 0;
  }
  if (status != TRACE_STATUS_RUNNING) {
    send_trace(scratch);
    return 0;
  }

  bpf_tail_call(ctx, &unwind_progs, PROG_UNWIND_NATIVE);
  /* Only reached when the tail-call budget is exhausted. */
  DEBUG_PRINT("native: out of tail calls after %u frames", scratch->trace.num_frames);
  abort_trace(&scratch->trace, ERR_NATIVE_MAX_FRAMES, 0);
  send_trace(scratch);
  return 0;
}

SEC("perf_event")
int native_tracer_entry(struct perf_event_ctx *ctx)
{
  struct unwind_scratch *scratch = cpu_scratch();
  if (!scratch) {
    DEBUG_PRINT("native: no unwind_scratch for this CPU, sample dropped");
    return 0;
  }

  begin_trace(scratch, bpf_get_current_pid_tgid(), &ctx->regs);
  bpf_tail_call(ctx, &unwind_progs, PROG_UNWIND_NATIVE);
  DEBUG_PRINT("native: tail call to unwind_native failed, tid %u", scratch->trace.tid);
  abort_trace(&scratch->trace, ERR_NATIVE_TAIL_CALL, 0);
  send_trace(scratch);
  return 0;
}

/* Interpreter programs: they reuse the trace helpers above. */
#include "python/unwind_python.h"
#if defined(__bpf__)
#include "kernel/live_entry.h" /* coredump live: the same unwinder at syscall entry */
#endif

char LICENSE[] SEC("license") = "GPL";
