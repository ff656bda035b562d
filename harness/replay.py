"""Replay: run the unwinder over every thread of a core and compare with a case.

This is the library the CLI and the tests call; nothing here prints.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from .bpf.agent import Agent
from .bpf.bridge import TraceResult, Unwinder, get_unwinder
from .cases.case_file import TestCase, ThreadFrames, load_case
from .cases.selection import case_label
from .cases.store import BlobStore, store_for
from .core.elfcore import CoreFile
from .core.memory_modules import module_files
from .core.module import Module
from .core.process import Process
from .diffing import Annotate, frame_annotator, frame_diff
from .formatting import format_trace
from .helpers.bpf_helpers import MemoryReader
from .interpreters.python import CodeReader
from .paths import TESTDATA
from .unwind_data.gosym import go_tables


@dataclass
class ThreadResult:
    lwp: int
    frames: list[str]
    trace: TraceResult


@dataclass
class ProcessResult:
    threads: list[ThreadResult]
    touched_file_ids: set[int]
    faults_hit: set[int] = field(default_factory=set)


def process_from(core: CoreFile,
                 files: Mapping[str, tuple[str | Path, str | None]]) -> Process:
    """A Process from an open core and {original path: (local file, content id or None)}.
    The process owns the core from then on (Process.close closes it)."""
    modules: dict[str, Module] = {}
    try:
        for path, (local, content_id) in files.items():
            modules[path] = Module(path, local, content_id)
    except BaseException:
        for module in modules.values():
            module.close()
        core.close()
        raise
    return Process(core, modules)


def open_process(core_path: str | Path,
                 files: Mapping[str, tuple[str | Path, str | None]]) -> Process:
    """A Process from a core file and its module files."""
    return process_from(CoreFile(core_path), files)


def open_case(case: TestCase, store: BlobStore | None = None) -> Process:
    """The case's core with its modules: the bundled ones, and for a case recorded
    with -no-module-bundling those rebuilt from the core's memory (bundled ones win)."""
    store = store or store_for(case)
    files: dict[str, tuple[str | Path, str | None]] = {
        m.local_path: (store.local_path(m.ref), m.ref) for m in case.modules
    }
    return process_with_modules(CoreFile(store.local_path(case.coredump_ref)), files,
                                case.no_module_bundling)


def process_with_modules(core: CoreFile, files: Mapping[str, tuple[str | Path, str | None]],
                         rebuild_modules: bool) -> Process:
    """process_from, with (rebuild_modules) the modules the core's memory holds
    added under the given ones: a case recorded with -no-module-bundling."""
    if rebuild_modules:
        try:
            files = {**module_files(core), **files}
        except BaseException:
            core.close()
            raise
    return process_from(core, files)


def iter_threads(process: Process, fault_addresses: frozenset[int] = frozenset(),
                 reader: MemoryReader | None = None, unwinder: Unwinder | None = None,
                 lwp: int | None = None, agent: Agent | None = None) -> Iterator[ThreadResult]:
    """Unwind the threads one at a time: a core with thousands of threads is
    printed as it goes, and no trace outlives its thread unless the caller keeps it."""
    unwinder = unwinder or get_unwinder(process.arch)
    if agent is None:
        agent = Agent(unwinder, process)
        agent.attach()
    read = reader or process.read
    names = {m.file_id: m.name for m in process.all_modules()}
    python = {file_id: CodeReader(process, layout, fault_addresses)
              for file_id, layout in agent.python_layouts.items()}
    go = go_tables(process.all_modules())
    for thread in process.threads:
        if lwp is not None and thread.lwp != lwp:
            continue
        trace = unwinder.unwind(thread.regs, process.pid, thread.lwp, read, fault_addresses,
                                thread.tls)
        frames = format_trace(trace, names, python, go=go)
        for code_reader in python.values():
            trace.faults_hit |= code_reader.faults_hit
        yield ThreadResult(thread.lwp, frames, trace)


def unwind_process(process: Process, fault_addresses: frozenset[int] = frozenset(),
                   reader: MemoryReader | None = None, unwinder: Unwinder | None = None,
                   lwp: int | None = None) -> ProcessResult:
    """Unwind every thread of the process (or only thread `lwp`) with the C unwinder.

    `reader` replaces process.read as the unwinder's memory (recording wraps it
    to learn which module files served reads); `unwinder` replaces the default
    build (coredump debug runs the unoptimised one)."""
    unwinder = unwinder or get_unwinder(process.arch)
    agent = Agent(unwinder, process)
    agent.attach()
    results: list[ThreadResult] = []
    touched: set[int] = set()
    faults: set[int] = set()
    for result in iter_threads(process, fault_addresses, reader, unwinder, lwp, agent):
        touched.update(f.file_id for f in result.trace.frames if f.file_id)
        faults |= result.trace.faults_hit
        results.append(result)
    touched |= agent.loaded_file_ids
    return ProcessResult(results, touched, faults)


@dataclass
class CaseResult:
    case: TestCase
    actual: list[ThreadFrames]
    seconds: float
    problems: list[str]
    unwound: ProcessResult | None = None

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def frame_count(self) -> int:
        return sum(len(t.frames) for t in self.actual)


def thread_frames(result: ProcessResult) -> list[ThreadFrames]:
    """The threads of an unwound process in the case file's shape."""
    return [ThreadFrames(t.lwp, t.frames) for t in result.threads]


def compare_threads(expected: list[ThreadFrames], actual: list[ThreadFrames],
                    annotate: Annotate | None = None) -> list[str]:
    """Human-readable differences, thread by thread (empty if equal): aligned diffs
    of the frames, with symbols beside them where `annotate` finds them."""
    problems = []
    exp_by_lwp = {t.lwp: t for t in expected}
    act_by_lwp = {t.lwp: t for t in actual}
    for lwp in exp_by_lwp.keys() - act_by_lwp.keys():
        problems.append(f"thread {lwp} is in the case but not in the core")
    for lwp in act_by_lwp.keys() - exp_by_lwp.keys():
        problems.append(f"thread {lwp} is in the core but not in the case")
    for t in expected:
        got = act_by_lwp.get(t.lwp)
        if got is not None and got.frames != t.frames:
            problems.append(f"thread {t.lwp} frames differ:\n"
                            + frame_diff(t.frames, got.frames, expected_name="case file",
                                         actual_name="unwinder", annotate=annotate))
    return problems


def dropped_reads_problem(process: Process) -> str | None:
    """What to say when replaying a skinny core read memory it left out (the read
    faulted, so the trace may differ for that reason alone)."""
    reads = process.core.dropped_reads
    if not reads:
        return None
    shown = ", ".join(f"{size} bytes at {addr:#x}" for addr, size in reads[:3])
    more = f" and {len(reads) - 3} more" if len(reads) > 3 else ""
    return (f"the unwinder read memory that this skinny core left out ({shown}{more}): the "
            "reads faulted. The unwinder now reads more than when the case was recorded: "
            "rebuild the skinny core from the full one with `coredump reskinny CASE`, or "
            "record the case again")


def replay_process(case: TestCase, process: Process) -> CaseResult:
    """Unwind an open process of a case and compare it with the case's frames."""
    start = time.perf_counter()
    result = unwind_process(process, frozenset(case.fault_addresses))
    actual = thread_frames(result)
    problems = compare_threads(case.threads, actual,
                               frame_annotator(process.all_modules()))
    dropped = dropped_reads_problem(process)
    if dropped:
        problems.append(dropped)
    unused = set(case.fault_addresses) - result.faults_hit
    if unused:
        problems.append("fault-addresses never read (stale entries?): "
                        + ", ".join(f"{a:#x}" for a in sorted(unused)))
    return CaseResult(case, actual, time.perf_counter() - start, problems, result)


def replay_case(case: TestCase | str | Path, store: BlobStore | None = None) -> CaseResult:
    """Replay one case and compare it with its expected frames."""
    if not isinstance(case, TestCase):
        case = load_case(case)
    start = time.perf_counter()
    process = open_case(case, store)
    try:
        result = replay_process(case, process)
    finally:
        process.close()
    result.seconds = time.perf_counter() - start
    return result


def reproduce_command(case: TestCase) -> str:
    """The one command that replays this case and prints its diff."""
    path = case.path
    if path is None:
        return ".venv/bin/coredump replay CASE"
    inside = path.resolve().parent.parent == TESTDATA.resolve()
    return f".venv/bin/coredump replay {case_label(path) if inside else path}"


def failure_report(result: CaseResult) -> str:
    """A failing case as a person should read it: what failed, the aligned frame
    diffs, and last the command that reproduces it (pytest prints this as is)."""
    where = result.case.path or result.case.name
    return (f"{where}: {len(result.problems)} problem(s)\n" + "\n".join(result.problems)
            + f"\nreproduce: {reproduce_command(result.case)}")
