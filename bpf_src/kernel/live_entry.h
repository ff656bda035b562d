/* Live mode (kernel build only): run the unwinder on a live process's threads
 * at the moment each one enters a system call (`coredump live`).
 *
 * Why the syscall-entry raw tracepoint, and not a sleepable task iterator: a
 * thread blocked in a system call keeps its user state (registers and stack)
 * unchanged while it sleeps, and a thread that is woken without a signal to
 * handle (PTRACE_INTERRUPT, harness/live/trigger.py) restarts the same call
 * with the same user registers. So the state this program sees at sys_enter
 * is exactly the state a core taken while the thread sleeps holds. The
 * program runs in the thread's own context, so the unwinder's user-memory
 * reads (bpf_probe_read_user) read that thread's memory, as a profiler's
 * perf-event program does; a task iterator runs in the reader's context and
 * would need bpf_copy_from_user_task, which the unwinder does not use. A raw
 * tracepoint needs neither tracefs (not mounted everywhere) nor a perf event.
 *
 * The entry program and the unwinder it tail-calls into are loaded as
 * BPF_PROG_TYPE_RAW_TRACEPOINT (a prog array holds programs of one type):
 * unwind_native only passes its context on to bpf_tail_call, so it is the
 * same code under either type.
 */
#ifndef UNWINDER_KERNEL_LIVE_ENTRY_H
#define UNWINDER_KERNEL_LIVE_ENTRY_H

/* Its helpers (bpf_get_current_task_btf, bpf_task_pt_regs,
 * bpf_probe_read_kernel) are declared in bpf_defs.h with the others. */

/* The processes (thread group ids) whose system calls are traced; written by
 * user space (harness/live), any value. */
struct {
  __uint(type, BPF_MAP_TYPE_HASH);
  __type(key, u32);
  __type(value, u32);
  __uint(max_entries, MAX_PIDS);
} live_targets SEC(".maps");

SEC("raw_tp/sys_enter")
int live_syscall_entry(void *ctx)
{
  u64 pid_tgid = bpf_get_current_pid_tgid();
  u32 tgid = pid_tgid >> 32;
  if (!bpf_map_lookup_elem(&live_targets, &tgid))
    return 0;

  struct unwind_scratch *scratch = cpu_scratch();
  if (!scratch) {
    DEBUG_PRINT("live: no unwind_scratch for this CPU, tid %u dropped", (u32)pid_tgid);
    return 0;
  }

  /* The user registers the thread entered the kernel with (the top of its
   * kernel stack): the registers a core of the sleeping thread holds.
   * struct target_regs mirrors the kernel's pt_regs prefix for the target. */
  struct target_regs regs;
  if (bpf_probe_read_kernel(&regs, sizeof(regs), bpf_task_pt_regs(bpf_get_current_task_btf()))) {
    scratch->trace.pid = tgid;
    scratch->trace.tid = (u32)pid_tgid;
    scratch->trace.num_frames = 0;
    abort_trace(&scratch->trace, ERR_LIVE_READ_REGS, 0);
    send_trace(scratch);
    return 0;
  }
  begin_trace(scratch, pid_tgid, &regs);
  bpf_tail_call(ctx, &unwind_progs, PROG_UNWIND_NATIVE);
  DEBUG_PRINT("live: tail call to unwind_native failed, tid %u", scratch->trace.tid);
  abort_trace(&scratch->trace, ERR_NATIVE_TAIL_CALL, 0);
  send_trace(scratch);
  return 0;
}

#endif /* UNWINDER_KERNEL_LIVE_ENTRY_H */
