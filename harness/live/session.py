"""One live run: the kernel build of the unwinder, filled by the agent for a
process, attached at syscall entry while each thread is made to restart its
system call, and the traces read from the ring buffer as a profiler reads them.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..bpf import libbpf
from ..bpf.agent import Agent
from ..bpf.bridge import TraceResult, Unwinder, get_unwinder
from ..bpf.kernel import KernelUnwinder, TraceRing
from ..core.process import Process
from ..errors import HarnessError
from .kernel_btf import task_thread_pointer_offset
from .trigger import in_system_call, interrupt_threads, thread_ids

LIVE_ENTRY = "live_syscall_entry"
RAW_TP = libbpf.BPF_PROG_TYPE_RAW_TRACEPOINT
# Both as raw tracepoint programs: a prog array holds programs of one type.
LIVE_PROGRAMS = {"unwind_native": RAW_TP, LIVE_ENTRY: RAW_TP}
TARGETS_MAP = "live_targets"
RING_MAP = "trace_events"
KERNEL_BTF = Path("/sys/kernel/btf/vmlinux")
BPF_STATS_RUN_TIME = 0
BASELINE_SECONDS = 0.1


def live_unavailable_reason() -> str | None:
    """Why `coredump live` cannot run here, or None if it can."""
    reason = libbpf.bpf_unavailable_reason()
    if reason:
        return reason
    if not KERNEL_BTF.exists():
        return (f"the kernel has no BTF ({KERNEL_BTF}): the live entry program needs it "
                "for bpf_get_current_task_btf (CONFIG_DEBUG_INFO_BTF)")
    return None


@dataclass
class Timings:
    """Seconds per step of one run (and the kernel's own per-trace cost)."""

    load: float = 0.0
    fill: float = 0.0
    capture: float = 0.0
    deltas: int = 0
    # bpf_prog_info.run_time_ns of the entry program (tail calls included) per
    # trace, net of the runs that the tgid filter ends at once; None without stats
    kernel_ns_per_trace: float | None = None
    kernel_runs: int = 0       # runs of the entry program while attached
    kernel_ns: int = 0         # their run_time_ns
    filtered_ns: float = 0.0   # ns of one run the tgid filter ends (measured before)


@dataclass
class LiveResult:
    pid: int
    traces: dict[int, TraceResult]   # by thread id
    silent: list[int]                # threads in user space, in no system call
    timings: Timings = field(default_factory=Timings)


class LiveSession:
    """The kernel unwinder loaded and filled for one process (its model from a
    core of it: mappings and module files, as the agent needs them)."""

    def __init__(self, process: Process, host: Unwinder | None = None) -> None:
        self.process = process
        self.host = host or get_unwinder(process.arch)  # decodes the records
        self.timings = Timings()
        start = time.perf_counter()
        # Every program the entry may tail-call into (unwind_native, the interpreter
        # unwinders), as the same program type as the entry.
        programs = {**LIVE_PROGRAMS,
                    **{name: RAW_TP for name in self.host.abi.tail_call_slots.values()}}
        self.kernel = KernelUnwinder(process.arch, programs, self.host.source)
        try:
            self._check_records()
            self.timings.load = time.perf_counter() - start
            start = time.perf_counter()
            # CPython <= 3.10 matches thread states by the thread pointer, which the
            # kernel program reads from the task at the kernel's own offset.
            self.agent = Agent(self.kernel, process,
                               task_thread_pointer=task_thread_pointer_offset(process.arch) or 0)
            self.agent.attach()
            self.timings.deltas = self.agent.load_all_deltas()
            self.timings.fill = time.perf_counter() - start
        except BaseException:
            self.kernel.close()
            raise

    def _check_records(self) -> None:
        """The host build decodes the kernel's records: both must lay them out alike."""
        name = self.host.source.trace_struct
        host, kernel = self.host.layout.struct(name), self.kernel.layout.struct(name)
        if host.to_json() != kernel.to_json():
            raise HarnessError(f"struct {name} differs between the host build "
                               f"({self.host.path}) and the BPF build ({self.kernel.path})")

    def capture(self, timeout: float = 2.0) -> LiveResult:
        """Attach, make each thread restart its system call, collect one trace per
        thread (the first: the call it sleeps in), detach."""
        pid = self.process.pid
        kernel = self.kernel
        targets = kernel.maps[TARGETS_MAP]
        ring = TraceRing(kernel.maps[RING_MAP])
        stats = libbpf.libbpf().bpf_enable_stats(BPF_STATS_RUN_TIME)
        traces: dict[int, TraceResult] = {}
        start = time.perf_counter()
        try:
            kernel.attach(LIVE_ENTRY)
            baseline = self._baseline() if stats >= 0 else None
            before = kernel.prog_stats(LIVE_ENTRY)
            if targets.update(pid.to_bytes(4, "little"), (1).to_bytes(4, "little")):
                raise HarnessError(f"cannot add pid {pid} to {TARGETS_MAP}")
            # threads running in user space will enter no system call: not waited for
            waiting = {t for t in thread_ids(pid) if in_system_call(pid, t)}
            tids = interrupt_threads(pid)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and not waiting <= traces.keys():
                for record in ring.poll(50):
                    trace = self.host.decode_trace(record)
                    if trace.pid == pid:
                        traces.setdefault(trace.tid, trace)
            kernel.detach()
            for record in ring.poll(0):  # what arrived before the detach
                trace = self.host.decode_trace(record)
                if trace.pid == pid:
                    traces.setdefault(trace.tid, trace)
            after = kernel.prog_stats(LIVE_ENTRY)
        finally:
            kernel.detach()
            ring.close()
            if stats >= 0:
                os.close(stats)
        self.timings.capture = time.perf_counter() - start
        if baseline is not None and traces:
            runs, ns = after[1] - before[1], after[0] - before[0]
            self.timings.kernel_runs, self.timings.kernel_ns = runs, ns
            self.timings.filtered_ns = baseline
            filtered = max(0, runs - len(traces))
            self.timings.kernel_ns_per_trace = max(0.0, ns - filtered * baseline) / len(traces)
        return LiveResult(pid, traces, sorted(set(tids) - waiting), self.timings)

    def _baseline(self) -> float:
        """ns of one run that the tgid filter ends at once (no target set yet): the
        system's other system calls run the program too."""
        t0, n0 = self.kernel.prog_stats(LIVE_ENTRY)
        time.sleep(BASELINE_SECONDS)
        t1, n1 = self.kernel.prog_stats(LIVE_ENTRY)
        return (t1 - t0) / (n1 - n0) if n1 > n0 else 0.0

    def close(self) -> None:
        self.kernel.close()

    def __enter__(self) -> LiveSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
