/* CPython unwinder: the Python frames that one eval-loop call runs.
 *
 * unwind_native tail-calls unwind_python when a frame's PC lies in a CPython
 * eval loop (interpreter_ranges), before it records that native frame. This
 * program pushes the Python frames of that eval-loop call, innermost first, as
 * FRAME_PYTHON frames (code object address, instruction byte offset), and
 * tail-calls unwind_native back, which then records the eval-loop frame itself
 * and goes on. Python frames carry no symbols: user space reads the code
 * objects from the process (harness/interpreters/python/).
 *
 * The first call of a trace finds the thread's PyThreadState: it walks the
 * main interpreter's thread list (_PyRuntime.interpreters.head ->
 * threads.head -> next ...) for the state whose native_thread_id is this
 * thread's id, the one bpf_get_current_pid_tgid gives. A kernel profiler can
 * always do this, also where the thread pointer is not at hand (qemu-user
 * cores have no NT_ARM_TLS). From there python_frame is the next frame to emit:
 *
 * - up to 3.10 (PYTHON_FRAME_OBJECTS) every eval-loop call runs exactly one
 *   PyFrameObject, tstate->frame and then the f_back chain;
 * - from 3.11 (PYTHON_INTERPRETER_FRAMES) one call runs several
 *   _PyInterpreterFrames (Python-to-Python calls do not recurse in C): 3.11
 *   marks the call's last frame with is_entry; 3.12+ put an entry shim frame
 *   (owner FRAME_OWNED_BY_CSTACK) below them, which is not emitted.
 *
 * Every offset comes from python_layouts (the agent's, per interpreter build);
 * memory only through bpf_probe_read_user; loops are bpf_loop callbacks.
 * Included by native_stack.c: it uses that file's trace helpers.
 */
#ifndef UNWINDER_PYTHON_STACK_H
#define UNWINDER_PYTHON_STACK_H

/* Reads a pointer-sized word; 0 on failure (never a valid frame or state). */
static __always_inline u64 read_word(u64 addr)
{
  u64 value = 0;
  if (bpf_probe_read_user(&value, sizeof(value), (void *)addr))
    return 0;
  return value;
}

/* bpf_loop context of the thread-state search. */
struct python_thread_search {
  u16 id_field; /* native_thread_id, else thread_id (copies: the callback sees only this) */
  u16 next;
  u64 tstate;   /* current candidate; 0 when the list ended */
  u64 want;     /* the thread id, else the thread pointer (pthread_self()) */
  u8 found;
};

static long python_thread_step(u64 index, void *data)
{
  (void)index;
  struct python_thread_search *search = data;
  if (!search->tstate)
    return 1;
  u64 id = read_word(search->tstate + search->id_field);
  if (id == search->want) {
    search->found = 1;
    return 1;
  }
  search->tstate = read_word(search->tstate + search->next);
  return 0;
}

/* The user thread pointer, as a kernel program reads it: from the current task
 * at the offset the agent found in the kernel's BTF (0: not known). */
static __always_inline u64 thread_pointer(void)
{
  u32 zero = 0;
  struct unwinder_config *config = bpf_map_lookup_elem(&unwinder_config, &zero);
  if (!config || !config->task_thread_pointer)
    return 0;
  u64 tp = 0;
  u64 task = bpf_get_current_task();
  if (bpf_probe_read_kernel(&tp, sizeof(tp), (void *)(task + config->task_thread_pointer)))
    return 0;
  return tp;
}

/* This thread's innermost Python frame (0: it runs none), found from
 * _PyRuntime; an error if the runtime or the thread's state cannot be read. */
static __always_inline enum unwind_error python_first_frame(const struct python_layout *layout,
                                                           u64 bias, u32 tid, u64 *frame)
{
  u64 runtime = layout->runtime + bias;
  u64 interp = read_word(runtime + layout->runtime_interpreters_head);
  if (!interp) {
    DEBUG_PRINT("python: no interpreter at _PyRuntime 0x%llx", runtime);
    return ERR_PYTHON_READ_THREAD_STATE;
  }
  struct python_thread_search search = {
      .id_field = layout->tstate_native_thread_id,
      .next = layout->tstate_next,
      .tstate = read_word(interp + layout->interp_threads_head),
      .want = tid,
      .found = 0,
  };
  if (!layout->tstate_native_thread_id) {
    /* <= 3.10 keeps only pthread_self(): on x86-64 glibc, the thread pointer */
    search.id_field = layout->tstate_thread_id;
    search.want = thread_pointer();
    if (!search.want) {
      DEBUG_PRINT("python: no thread pointer for thread %u", tid);
      return ERR_PYTHON_NO_THREAD_POINTER;
    }
  }
  bpf_loop(PYTHON_MAX_THREADS, python_thread_step, &search, 0);
  if (!search.found) {
    DEBUG_PRINT("python: no thread state for thread %u (interpreter 0x%llx)", tid, interp);
    return ERR_PYTHON_NO_THREAD_STATE;
  }
  u64 at = read_word(search.tstate + layout->tstate_frame);
  if (layout->via_cframe && at)
    at = read_word(at + layout->cframe_current_frame);
  *frame = at;
  return ERR_NONE;
}

/* The fields of one frame that the walk needs. */
struct python_frame_fields {
  u64 code;
  u64 previous;
  u64 instr;     /* f_lasti (<= 3.10, an int) or the instruction pointer */
  u8 entry;      /* is_entry / owner */
};

static __always_inline enum unwind_error read_python_frame(const struct python_layout *layout,
                                                          u64 frame,
                                                          struct python_frame_fields *out)
{
  out->code = 0;
  out->instr = 0;
  out->entry = 0;
  out->previous = 0;
  if (bpf_probe_read_user(&out->previous, sizeof(out->previous),
                          (void *)(frame + layout->frame_previous)) ||
      bpf_probe_read_user(&out->code, sizeof(out->code), (void *)(frame + layout->frame_code)))
    return ERR_PYTHON_READ_FRAME;
  if (layout->frame_model == PYTHON_FRAME_OBJECTS) {
    s32 lasti = 0;
    if (bpf_probe_read_user(&lasti, sizeof(lasti), (void *)(frame + layout->frame_instr)))
      return ERR_PYTHON_READ_FRAME;
    out->instr = lasti < 0 ? 0 : (u64)lasti * layout->lasti_unit;
    return ERR_NONE;
  }
  if (bpf_probe_read_user(&out->instr, sizeof(out->instr), (void *)(frame + layout->frame_instr)) ||
      bpf_probe_read_user(&out->entry, sizeof(out->entry), (void *)(frame + layout->frame_entry)))
    return ERR_PYTHON_READ_FRAME;
  /* the byte offset of the instruction in the code object's bytecode */
  u64 first = out->code + layout->code_instructions;
  out->instr = out->instr >= first ? out->instr - first : 0;
  return ERR_NONE;
}

/* bpf_loop context of the frame walk. */
struct python_walk {
  struct python_layout layout; /* a copy: the callback sees only this context */
  u8 done;      /* this eval-loop call's frames are all pushed */
  u16 error;    /* enum unwind_error: the walk aborted the trace */
};

/* One Python frame of the current eval-loop call; a non-zero return ends the loop. */
static long python_frame_step(u64 index, void *data)
{
  (void)index;
  struct python_walk *walk = data;
  const struct python_layout *layout = &walk->layout;
  struct unwind_scratch *scratch = cpu_scratch();
  if (!scratch) {
    walk->error = ERR_NATIVE_MAP_LOOKUP;
    return 1;
  }
  struct unwind_state *st = &scratch->state;
  u64 frame = st->python_frame;
  if (!frame) {
    walk->done = 1; /* an eval-loop call with no frame left: nothing to push */
    return 1;
  }

  struct python_frame_fields f;
  enum unwind_error err = read_python_frame(layout, frame, &f);
  if (err) {
    DEBUG_PRINT("python: cannot read the frame at 0x%llx", frame);
    walk->error = err;
    abort_trace(&scratch->trace, err, frame);
    return 1;
  }
  st->python_frame = f.previous;
  if (layout->entry_marker == PYTHON_ENTRY_SHIM && f.entry == layout->owner_cstack) {
    walk->done = 1; /* the call's entry shim: its frames are all pushed */
    return 1;
  }
  if (scratch->trace.num_frames >= MAX_FRAMES - 1) {
    walk->error = ERR_PYTHON_MAX_FRAMES;
    abort_trace(&scratch->trace, ERR_PYTHON_MAX_FRAMES, 0);
    return 1;
  }
  struct frame *pushed = push_frame(&scratch->trace, st->interp_file_id, f.code, FRAME_PYTHON,
                                    0, ERR_NONE);
  if (pushed)
    pushed->cfa = f.instr;
  if (layout->frame_model == PYTHON_FRAME_OBJECTS ||
      (layout->entry_marker == PYTHON_ENTRY_IS_ENTRY && f.entry)) {
    walk->done = 1;
    return 1;
  }
  return 0;
}

/* Pushes the Python frames of the eval-loop call at the current frame; 1 when
 * they are all pushed, 0 when the walk must go on in another program, -1 when
 * the trace ended (sent by the caller). */
static __always_inline int python_call_frames(struct python_walk *walk)
{
  walk->done = 0;
  walk->error = ERR_NONE;
  bpf_loop(PYTHON_FRAMES_PER_PROGRAM, python_frame_step, walk, 0);
  if (walk->error)
    return -1;
  return walk->done;
}

SEC("perf_event")
int unwind_python(struct perf_event_ctx *ctx)
{
  struct unwind_scratch *scratch = cpu_scratch();
  if (!scratch)
    return 0;
  struct unwind_state *st = &scratch->state;
  struct python_layout *layout = bpf_map_lookup_elem(&python_layouts, &st->interp_file_id);
  if (!layout) {
    DEBUG_PRINT("python: no layout for file 0x%llx", st->interp_file_id);
    abort_trace(&scratch->trace, ERR_PYTHON_NO_LAYOUT, 0);
    send_trace(scratch);
    return 0;
  }

  if (!st->python_started) {
    u64 frame = 0;
    enum unwind_error err = python_first_frame(layout, st->interp_bias, scratch->trace.tid,
                                               &frame);
    if (err) {
      abort_trace(&scratch->trace, err, 0);
      send_trace(scratch);
      return 0;
    }
    st->python_frame = frame;
    st->python_started = 1;
  }

  /* Python frames of this eval-loop call, then the native frames up to the next
   * eval-loop call of the same interpreter (the native program's own loop and
   * callback), and again: one tail call per PYTHON_CALLS_PER_PROGRAM calls. */
  struct python_walk walk = {.layout = *layout};
  u64 file_id = st->interp_file_id;
  u32 status = TRACE_STATUS_RUNNING;
  for (int call = 0; call < PYTHON_CALLS_PER_PROGRAM; call++) {
    int pushed = python_call_frames(&walk);
    scratch = cpu_scratch(); /* the verifier forgets map values across the loop */
    if (!scratch)
      return 0;
    if (pushed < 0) {
      send_trace(scratch);
      return 0;
    }
    if (pushed == 0) {
      bpf_tail_call(ctx, &unwind_progs, PROG_UNWIND_PYTHON); /* more frames in this call */
      break;
    }
    scratch->state.interp_done = 1;
    status = TRACE_STATUS_RUNNING;
    bpf_loop(FRAMES_PER_PROGRAM, unwind_frame, &status, 0);
    scratch = cpu_scratch();
    if (!scratch)
      return 0;
    if (status == TRACE_STATUS_INTERPRETER && scratch->state.interp_prog == PROG_UNWIND_PYTHON &&
        scratch->state.interp_file_id == file_id)
      continue; /* the next call of this interpreter */
    if (status == TRACE_STATUS_INTERPRETER) {
      bpf_tail_call(ctx, &unwind_progs, scratch->state.interp_prog);
      break;
    }
    if (status != TRACE_STATUS_RUNNING) {
      send_trace(scratch);
      return 0;
    }
    bpf_tail_call(ctx, &unwind_progs, PROG_UNWIND_NATIVE); /* native frames go on */
    break;
  }
  if (status == TRACE_STATUS_INTERPRETER && scratch->state.interp_prog == PROG_UNWIND_PYTHON)
    bpf_tail_call(ctx, &unwind_progs, PROG_UNWIND_PYTHON); /* more eval-loop calls */
  DEBUG_PRINT("python: out of tail calls after %u frames", scratch->trace.num_frames);
  abort_trace(&scratch->trace, ERR_NATIVE_MAX_FRAMES, 0);
  send_trace(scratch);
  return 0;
}

#endif /* UNWINDER_PYTHON_STACK_H */
