"""`coredump live -pid PID [-compare]`: the kernel's traces of a live process,
and (with compare) the replay of a core of it beside them, thread by thread.

The order is: gcore first, then the live traces. The agent needs a model of the
process (its mappings and module files) and gets the one replay uses, from the
core; the threads sleep in the same system calls throughout (gdb's detach and
the trigger both only restart them), so the core's registers and stacks are the
state each thread re-enters its system call with when the kernel unwinds it.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass, field

from ..bpf.bridge import RawFrame, TraceResult, get_unwinder
from ..bpf.libbpf import LibbpfUnavailable
from ..core.discovery import discover_modules
from ..core.elfcore import CoreFile
from ..formatting import format_trace
from ..record.gcore import gcore
from ..replay import iter_threads, process_from
from .residency import ResidentReader
from .session import LiveResult, LiveSession, live_unavailable_reason
from .trigger import require_stoppable


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


def run_live(pid: int, compare: bool = False, timeout: float = 2.0) -> LiveReport:
    """gcore the process, load and fill the kernel unwinder, capture one trace per
    thread; with `compare`, replay the core and compare thread by thread."""
    seconds: dict[str, float] = {}
    reason = live_unavailable_reason()
    if reason:
        raise LibbpfUnavailable(f"coredump live cannot run here: {reason}")
    with tempfile.TemporaryDirectory(prefix="coredump-live-") as tmp:
        start = time.perf_counter()
        require_stoppable(pid)
        core_path = gcore(pid, tmp)
        core = CoreFile(core_path)
        try:
            files = discover_modules(core)
        except BaseException:
            core.close()
            raise
        process = process_from(core, files)
        seconds["gcore"] = time.perf_counter() - start
        try:
            host = get_unwinder(process.arch)
            with LiveSession(process, host) as session:
                live = session.capture(timeout)
            seconds.update(load=live.timings.load, fill=live.timings.fill,
                           capture=live.timings.capture)
            names = {m.file_id: m.name for m in process.all_modules()}
            threads: list[ThreadComparison] = []
            start = time.perf_counter()
            replayed: dict[int, TraceResult] = {}
            if compare:  # the process still sleeps: its page tables are the kernel's view
                reader = ResidentReader(process, pid)
                try:
                    replayed = {r.lwp: r.trace
                                for r in iter_threads(process, reader=reader, unwinder=host)}
                finally:
                    reader.close()
            seconds["replay"] = time.perf_counter() - start
            for thread in process.threads:
                trace = live.traces.get(thread.lwp)
                row = ThreadComparison(thread.lwp,
                                       format_trace(trace, names) if trace else None, None,
                                       trace.status_name if trace else "")
                if compare:
                    theirs = replayed[thread.lwp]
                    row.replay = format_trace(theirs, names)
                    row.replay_status = theirs.status_name
                    row.equal, row.problem = _compare(trace, theirs, thread.lwp in live.silent)
                threads.append(row)
        finally:
            process.close()
    return LiveReport(pid, threads, live, seconds)
