/* Native stack unwinder.
 *
 * native_tracer_entry runs on a perf event: it captures the interrupted
 * thread's registers and tail-calls unwind_native, which walks up to
 * FRAMES_PER_PROGRAM frames per invocation and tail-calls itself until the
 * outermost frame or an error. Each step finds the module of the PC
 * (pid_mappings), the unwind rule for the PC's ELF address (delta_pages,
 * stack_deltas, unwind_rules) and applies it: compute the CFA, read the
 * return address and the saved frame pointer. Modules without unwind data
 * are walked by frame-pointer chaining.
 */
#include "bpf_defs.h"
#include "arch.h"
#include "maps.h"

/* Frame-pointer chaining, used where no stack delta covers the PC:
 * FP points at the saved (FP, return address) pair. */
static __always_inline void frame_pointer_rule(struct unwind_rule *rule)
{
  rule->cfa_op = CFA_FP;
  rule->aux = 0;
  rule->pad = 0;
  rule->cfa_param = 16;
  rule->fp_offset = -16;
  rule->ra_offset = -8;
}

static __always_inline int push_frame(struct trace *trace, u64 file_id, u64 addr, u8 kind,
                                      u8 flags, u16 error)
{
  u32 n = trace->num_frames;
  if (n >= MAX_FRAMES)
    return -1;
  struct frame *f = &trace->frames[n & (MAX_FRAMES - 1)];
  f->file_id = file_id;
  f->addr = addr;
  f->cfa = 0;
  f->error = error;
  f->kind = kind;
  f->flags = flags;
  f->pad = 0;
  trace->num_frames = n + 1;
  return 0;
}

/* Ends the trace with an error frame; the last slot is kept for it. */
static __always_inline int abort_trace(struct trace *trace, u16 error, u64 addr)
{
  if (trace->num_frames >= MAX_FRAMES)
    trace->num_frames = MAX_FRAMES - 1;
  push_frame(trace, 0, addr, FRAME_ERROR, 0, error);
  trace->status = TRACE_STATUS_ABORTED;
  return TRACE_STATUS_ABORTED;
}

static __always_inline struct mapping_info *find_mapping(u32 pid, u64 pc)
{
  struct mapping_key key = {
      .prefixlen = 32 + 64,
      .pid = pid,
      .addr_be = __builtin_bswap64(pc),
  };
  return bpf_map_lookup_elem(&pid_mappings, &key);
}

/* Finds the rule for an ELF address: the last delta of the address's page
 * whose addr_low is <= the address. Returns 0 or an ERR_* code. */
static __always_inline int find_unwind_rule(u64 file_id, u64 vaddr, struct unwind_rule *rule)
{
  struct delta_page_key key = {.file_id = file_id, .page = vaddr >> DELTA_PAGE_BITS};
  struct delta_page *page = bpf_map_lookup_elem(&delta_pages, &key);
  if (!page) {
    frame_pointer_rule(rule);
    return 0;
  }

  u32 first = page->first;
  u32 lo = 0, hi = page->count;
  u16 target = vaddr & ((1 << DELTA_PAGE_BITS) - 1);
  struct stack_delta *delta;

  /* Invariant: deltas[first + lo].addr_low <= target < deltas[first + hi].addr_low */
  for (int i = 0; i < DELTA_SEARCH_STEPS; i++) {
    if (hi - lo <= 1)
      break;
    u32 mid = lo + (hi - lo) / 2;
    u32 index = first + mid;
    delta = bpf_map_lookup_elem(&stack_deltas, &index);
    if (!delta)
      return ERR_MAP_LOOKUP;
    if (delta->addr_low <= target)
      lo = mid;
    else
      hi = mid;
  }

  u32 index = first + lo;
  delta = bpf_map_lookup_elem(&stack_deltas, &index);
  if (!delta)
    return ERR_MAP_LOOKUP;
  u32 rule_index = delta->rule;
  struct unwind_rule *found = bpf_map_lookup_elem(&unwind_rules, &rule_index);
  if (!found)
    return ERR_MAP_LOOKUP;
  *rule = *found;
  return 0;
}

/* Restores PC, SP, FP (and LR) from the signal frame at the current SP. */
static __always_inline int unwind_signal_frame(struct unwind_state *st)
{
  u64 words[SIGFRAME_READ_WORDS];
  if (bpf_probe_read_user(words, sizeof(words), (void *)(st->sp + SIGFRAME_READ_OFFSET)))
    return ERR_READ_SIGFRAME;
  st->fp = words[SIGFRAME_FP];
  st->sp = words[SIGFRAME_SP];
  st->pc = words[SIGFRAME_PC];
  if (SIGFRAME_LR >= 0) {
    st->lr = words[SIGFRAME_LR < 0 ? 0 : SIGFRAME_LR];
    st->lr_valid = 1;
  } else {
    st->lr_valid = 0;
  }
  st->return_address = 0; /* the interrupted PC is exact */
  st->signal_frame = 1;
  return 0;
}

static __always_inline u64 return_address_mask(void)
{
  u32 zero = 0;
  struct unwinder_config *config = bpf_map_lookup_elem(&unwinder_config, &zero);
  return config && config->ra_mask ? config->ra_mask : ~0ULL;
}

/* Unwinds one frame. Returns TRACE_STATUS_RUNNING while there are more. */
static __always_inline int unwind_step(struct unwind_scratch *scratch)
{
  struct unwind_state *st = &scratch->state;
  struct trace *trace = &scratch->trace;

  if (trace->num_frames >= MAX_FRAMES - 1)
    return abort_trace(trace, ERR_MAX_FRAMES, 0);
  if (st->pc == 0)
    return abort_trace(trace, ERR_ZERO_PC, 0);

  /* A return address points after the call: look up the call itself. */
  u64 lookup_pc = st->pc - (st->return_address ? 1 : 0);
  struct mapping_info *mapping = find_mapping(trace->pid, lookup_pc);
  if (!mapping || !mapping->file_id)
    return abort_trace(trace, ERR_PC_NOT_MAPPED, lookup_pc);

  u64 file_id = mapping->file_id;
  u64 vaddr = lookup_pc - mapping->bias;
  u8 flags = (st->return_address ? FRAME_FLAG_RETURN_ADDRESS : 0) |
             (st->signal_frame ? FRAME_FLAG_SIGNAL : 0);
  if (push_frame(trace, file_id, vaddr, FRAME_NATIVE, flags, 0))
    return abort_trace(trace, ERR_MAX_FRAMES, 0);
  struct frame *frame = &trace->frames[(trace->num_frames - 1) & (MAX_FRAMES - 1)];

  struct unwind_rule rule;
  int err = find_unwind_rule(file_id, vaddr, &rule);
  if (err)
    return abort_trace(trace, err, 0);

  u64 cfa;
  switch (rule.cfa_op) {
  case CFA_STOP:
    trace->status = TRACE_STATUS_DONE;
    return TRACE_STATUS_DONE;
  case CFA_SIGNAL:
    err = unwind_signal_frame(st);
    if (err)
      return abort_trace(trace, err, 0);
    return TRACE_STATUS_RUNNING;
  case CFA_SP:
    cfa = st->sp + (s64)rule.cfa_param;
    break;
  case CFA_FP:
    cfa = st->fp + (s64)rule.cfa_param;
    break;
  case CFA_PLT:
    cfa = st->sp + (s64)rule.cfa_param + ((st->pc & 15) >= rule.aux ? 8 : 0);
    break;
  default:
    return abort_trace(trace, ERR_NO_RULE, 0);
  }
  frame->cfa = cfa;

  u64 ra;
  if (rule.ra_offset == 0) {
    if (!st->lr_valid)
      return abort_trace(trace, ERR_NO_LINK_REGISTER, 0);
    ra = st->lr;
  } else if (bpf_probe_read_user(&ra, sizeof(ra), (void *)(cfa + (s64)rule.ra_offset))) {
    return abort_trace(trace, ERR_READ_RA, cfa + (s64)rule.ra_offset);
  }

  u64 fp = st->fp;
  if (rule.fp_offset != 0 &&
      bpf_probe_read_user(&fp, sizeof(fp), (void *)(cfa + (s64)rule.fp_offset)))
    return abort_trace(trace, ERR_READ_FP, cfa + (s64)rule.fp_offset);

  ra &= return_address_mask();
  if (ra == 0) {
    /* A zero return address ends the frame-pointer chain. */
    trace->status = TRACE_STATUS_DONE;
    return TRACE_STATUS_DONE;
  }
  if (cfa < st->sp || (cfa == st->sp && ra == st->pc))
    return abort_trace(trace, ERR_STACK_NOT_PROGRESSING, 0);

  st->pc = ra;
  st->sp = cfa;
  st->fp = fp;
  st->lr_valid = 0;
  st->return_address = 1;
  st->signal_frame = 0;
  return TRACE_STATUS_RUNNING;
}

static __always_inline void send_trace(void *ctx, struct unwind_scratch *scratch)
{
  bpf_perf_event_output(ctx, &trace_events, BPF_F_CURRENT_CPU, &scratch->trace,
                        sizeof(scratch->trace));
}

SEC("perf_event")
int unwind_native(struct perf_event_ctx *ctx)
{
  u32 zero = 0;
  struct unwind_scratch *scratch = bpf_map_lookup_elem(&unwind_scratch, &zero);
  if (!scratch)
    return 0;

  for (int i = 0; i < FRAMES_PER_PROGRAM; i++) {
    if (unwind_step(scratch) != TRACE_STATUS_RUNNING) {
      send_trace(ctx, scratch);
      return 0;
    }
  }

  bpf_tail_call(ctx, &unwind_progs, PROG_UNWIND_NATIVE);
  /* Only reached when the tail-call budget is exhausted. */
  abort_trace(&scratch->trace, ERR_MAX_FRAMES, 0);
  send_trace(ctx, scratch);
  return 0;
}

SEC("perf_event")
int native_tracer_entry(struct perf_event_ctx *ctx)
{
  u32 zero = 0;
  struct unwind_scratch *scratch = bpf_map_lookup_elem(&unwind_scratch, &zero);
  if (!scratch)
    return 0;

  u64 pid_tgid = bpf_get_current_pid_tgid();
  scratch->trace.pid = pid_tgid >> 32;
  scratch->trace.tid = (u32)pid_tgid;
  scratch->trace.num_frames = 0;
  scratch->trace.status = TRACE_STATUS_RUNNING;

  state_from_regs(&scratch->state, &ctx->regs);
  scratch->state.return_address = 0;
  scratch->state.signal_frame = 0;

  bpf_tail_call(ctx, &unwind_progs, PROG_UNWIND_NATIVE);
  abort_trace(&scratch->trace, ERR_TAIL_CALL, 0);
  send_trace(ctx, scratch);
  return 0;
}

char LICENSE[] SEC("license") = "GPL";
