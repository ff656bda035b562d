"""`coredump live -pid PID [-compare]`: the kernel's traces of a live process,
and (with compare) the replay of a core of it beside them, thread by thread.

The order (run_live): a minimal gcore for the agent's model of the process,
the live traces, the page-table snapshot, the full gcore that is replayed. The
threads sleep in the same system calls throughout (gdb's detach and the
trigger both only restart them), so the core's registers and stacks are the
state each thread re-enters its system call with when the kernel unwinds it.
"""

from __future__ import annotations

import os
import tempfile
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

from ..bpf.bridge import RawFrame, TraceResult, get_unwinder
from ..bpf.libbpf import LibbpfUnavailable
from ..core.discovery import discover_modules
from ..core.elfcore import CoreFile
from ..core.process import Process
from ..formatting import format_trace
from ..interpreters.python.code import CodeReader
from ..record.gcore import coredump_filter, gcore
from ..replay import iter_threads, process_from
from .residency import PageSnapshot, ResidentReader
from .session import LiveResult, LiveSession, live_unavailable_reason
from .trigger import require_stoppable

# ELF headers only (bit 4 of /proc/PID/coredump_filter): no memory of the process.
MINIMAL_COREDUMP_FILTER = 0x10


def frame_key(frame: RawFrame) -> tuple[int, ...]:
    """What must be equal between the two runs: every field the C code wrote."""
    return (frame.kind, frame.file_id, frame.addr, frame.cfa, frame.flags, frame.error)


@dataclass
class ThreadComparison:
    tid: int
    live: list[str] | None        # None: the thread entered no system call
    replay: list[str] | None      # None: not compared (no -compare)
    live_status: str = ""
    replay_status: str = ""
    equal: bool | None = None     # None: not compared
    problem: str = ""


@dataclass
class LiveReport:
    pid: int
    threads: list[ThreadComparison]
    live: LiveResult
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def differences(self) -> list[ThreadComparison]:
        return [t for t in self.threads if t.equal is False]


def _compare(live: TraceResult | None, replay: TraceResult,
             silent: bool) -> tuple[bool | None, str]:
    if live is None and silent:
        return None, "not compared: the thread runs in user space (no system call to catch)"
    if live is None:
        return False, "no live trace: the thread was in a system call but sent none"
    if live.status_name != replay.status_name:
        return False, f"stop reason differs: live {live.status_name}, replay {replay.status_name}"
    live_keys = [frame_key(f) for f in live.frames]
    replay_keys = [frame_key(f) for f in replay.frames]
    if live_keys != replay_keys:
        pairs = enumerate(zip(live_keys, replay_keys, strict=False))
        at = next((i for i, (a, b) in pairs if a != b), min(len(live_keys), len(replay_keys)))
        fields = "kind, file_id, addr, cfa, flags, error"
        shown = [f"{side} ({fields}) = " + (", ".join(f"{v:#x}" for v in keys[at])
                                            if at < len(keys) else "none")
                 for side, keys in (("live", live_keys), ("replay", replay_keys))]
        return False, (f"frames differ from frame #{at} ({len(live_keys)} live, "
                       f"{len(replay_keys)} replayed): " + "; ".join(shown))
    return True, ""


def _core_process(pid: int, tmp: Path, *, minimal: bool) -> Process:
    """A gcore of `pid` opened with its module files. `minimal`: the ELF headers
    only (coredump_filter 0x10), which gdb reads without touching the process's
    memory, so the page tables stay as they were (see live/residency.py)."""
    tmp.mkdir()
    with coredump_filter(pid, MINIMAL_COREDUMP_FILTER, "the model's core must not touch "
                         "the process's memory") if minimal else nullcontext():
        core = CoreFile(gcore(pid, tmp))
    try:
        files = discover_modules(core)
    except BaseException:
        core.close()
        raise
    return process_from(core, files)


class _ProcessMemory:
    """A live process's memory, as a profiler's agent reads it: /proc/PID/mem. The
    agent reads only what the interpreter layouts need (type objects, _PyRuntime:
    pages the interpreter itself uses), so the page tables that live/residency.py
    snapshots stay as the program left them."""

    def __init__(self, pid: int) -> None:
        try:
            self._fd: int | None = os.open(f"/proc/{pid}/mem", os.O_RDONLY)
        except OSError:
            self._fd = None  # the agent then reads the files, as before

    def read(self, addr: int, size: int) -> bytes | None:
        if self._fd is None or size <= 0 or addr < 0 or addr + size > 1 << 63:
            return None
        try:
            data = os.pread(self._fd, size, addr)
        except OSError:
            return None
        return data if len(data) == size else None

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _open_memory(pid: int) -> _ProcessMemory:
    return _ProcessMemory(pid)


def run_live(pid: int, compare: bool = False, timeout: float = 2.0) -> LiveReport:
    """Capture one kernel trace per thread; with `compare`, replay a core of the
    process and compare thread by thread.

    The agent's model of the process (mappings, module files, threads) comes
    from a minimal gcore, which reads no memory of the process; then the live
    capture; then (compare) the page-table snapshot and the full gcore that is
    replayed. The threads sleep in the same system calls throughout (gdb's
    detach and the trigger only restart them), so both runs unwind one state."""
    seconds: dict[str, float] = {}
    reason = live_unavailable_reason()
    if reason:
        raise LibbpfUnavailable(f"coredump live cannot run here: {reason}")
    require_stoppable(pid)
    with tempfile.TemporaryDirectory(prefix="coredump-live-") as tmp:
        start = time.perf_counter()
        model = _core_process(pid, Path(tmp) / "model", minimal=True)
        seconds["gcore"] = time.perf_counter() - start
        mem = _open_memory(pid)
        model.live_memory = mem.read
        try:
            host = get_unwinder(model.arch)
            with LiveSession(model, host) as session:
                live = session.capture(timeout)
                layouts = dict(session.agent.python_layouts)
            seconds.update(load=live.timings.load, fill=live.timings.fill,
                           capture=live.timings.capture)
            replayed: dict[int, TraceResult] = {}
            if compare:
                start = time.perf_counter()
                snapshot = PageSnapshot(pid, model.core.page_size)
                process = _core_process(pid, Path(tmp) / "replay", minimal=False)
                seconds["gcore"] += time.perf_counter() - start
                start = time.perf_counter()
                try:
                    reader = ResidentReader(process, snapshot)
                    replayed = {r.lwp: r.trace
                                for r in iter_threads(process, reader=reader, unwinder=host)}
                finally:
                    process.close()
                seconds["replay"] = time.perf_counter() - start
            names = {m.file_id: m.name for m in model.all_modules()}
            # Python frames are named from the live process's code objects, as a
            # profiler's agent names them (the same names replay gives).
            python = {file_id: CodeReader(model, layout) for file_id, layout in layouts.items()}
            threads: list[ThreadComparison] = []
            for thread in model.threads:
                trace = live.traces.get(thread.lwp)
                row = ThreadComparison(thread.lwp,
                                       format_trace(trace, names, python) if trace else None,
                                       None,
                                       trace.status_name if trace else "")
                if compare:
                    theirs = replayed.get(thread.lwp)
                    if theirs is None:
                        row.equal, row.problem = False, "the thread is not in the second core"
                    else:
                        row.replay = format_trace(theirs, names, python)
                        row.replay_status = theirs.status_name
                        row.equal, row.problem = _compare(trace, theirs,
                                                          thread.lwp in live.silent)
                threads.append(row)
        finally:
            model.close()
            mem.close()
    return LiveReport(pid, threads, live, seconds)
