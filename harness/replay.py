"""Replay: run the unwinder over every thread of a core and compare with a case.

This is the library the CLI and the tests call; nothing here prints.
"""

from __future__ import annotations

import ctypes
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from . import bpf_abi, memory_modules
from .agent import Agent
from .bpf_abi import ARCH_AMD64
from .bridge import TraceResult, get_unwinder
from .elfcore import CoreFile, ThreadState
from .formatting import format_trace, frame_diff
from .process import Module, Process
from .store import BlobStore
from .testcase import TestCase, ThreadFrames, load_case

# NT_PRSTATUS names -> struct pt_regs field names (x86_64).
_AMD64_FIELDS = {
    "r15": "r15", "r14": "r14", "r13": "r13", "r12": "r12", "rbp": "bp", "rbx": "bx",
    "r11": "r11", "r10": "r10", "r9": "r9", "r8": "r8", "rax": "ax", "rcx": "cx",
    "rdx": "dx", "rsi": "si", "rdi": "di", "orig_rax": "orig_ax", "rip": "ip", "cs": "cs",
    "eflags": "flags", "rsp": "sp", "ss": "ss",
}


def regs_struct(arch: str, thread: ThreadState) -> ctypes.Structure:
    """The perf-event register context the kernel would hand the program."""
    regs = bpf_abi.regs_type(arch)()
    if arch == ARCH_AMD64:
        for name, field_name in _AMD64_FIELDS.items():
            setattr(regs, field_name, thread.regs.get(name, 0))
    else:
        for i in range(31):
            regs.regs[i] = thread.regs.get(f"x{i}", 0)  # type: ignore[attr-defined]
        for name in ("sp", "pc", "pstate"):
            setattr(regs, name, thread.regs.get(name, 0))
    return regs


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


def open_process(core_path: str | Path,
                 module_files: Mapping[str, tuple[str | Path, str | None]]) -> Process:
    """A Process from a core and {original path: (local file, content id or None)}."""
    core = CoreFile(core_path)
    modules = {path: Module(path, local, cid) for path, (local, cid) in module_files.items()}
    return Process(core, modules)


def open_case(case: TestCase, store: BlobStore) -> Process:
    files: dict[str, tuple[str | Path, str | None]] = {
        m.local_path: (store.local_path(m.ref), m.ref) for m in case.modules
    }
    core_path = store.local_path(case.coredump_ref)
    if memory_modules.enabled(case):  # modules rebuilt from the core; bundled ones win
        with CoreFile(core_path) as core:
            files = {**memory_modules.module_files(core), **files}
    return open_process(core_path, files)


def store_for(case: TestCase) -> BlobStore:
    """The store beside the case's testdata directory (testdata/<arch>/x.json -> testdata/blobs)."""
    if case.path is not None:
        return BlobStore(case.path.resolve().parent.parent / "blobs")
    return BlobStore()


def unwind_process(process: Process, fault_addresses: frozenset[int] = frozenset()
                   ) -> ProcessResult:
    """Unwind every thread of the process with the C unwinder."""
    unwinder = get_unwinder(process.arch)
    agent = Agent(unwinder, process)
    agent.attach()
    names = {m.file_id: m.name for m in process.modules.values()}
    results: list[ThreadResult] = []
    touched: set[int] = set()
    faults: set[int] = set()
    for thread in process.threads:
        trace = unwinder.unwind(regs_struct(process.arch, thread), process.pid, thread.lwp,
                                process.read, fault_addresses)
        touched.update(f.file_id for f in trace.frames if f.file_id)
        faults |= trace.faults_hit
        results.append(ThreadResult(thread.lwp, format_trace(trace, names), trace))
    touched |= agent.loaded_file_ids
    return ProcessResult(results, touched, faults)


@dataclass
class CaseResult:
    case: TestCase
    actual: list[ThreadFrames]
    seconds: float
    problems: list[str]

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def frame_count(self) -> int:
        return sum(len(t.frames) for t in self.actual)


def compare_threads(expected: list[ThreadFrames], actual: list[ThreadFrames]) -> list[str]:
    """Human-readable differences, thread by thread (empty if equal)."""
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
            problems.append(f"thread {t.lwp} frames differ:\n" + frame_diff(t.frames, got.frames))
    return problems


def replay_case(case: TestCase | str | Path, store: BlobStore | None = None) -> CaseResult:
    """Replay one case and compare it with its expected frames."""
    if not isinstance(case, TestCase):
        case = load_case(case)
    store = store or store_for(case)
    start = time.perf_counter()
    process = open_case(case, store)
    try:
        result = unwind_process(process, frozenset(case.fault_addresses))
    finally:
        process.close()
    actual = [ThreadFrames(t.lwp, t.frames) for t in result.threads]
    problems = compare_threads(case.threads, actual)
    unused = set(case.fault_addresses) - result.faults_hit
    if unused:
        problems.append("fault-addresses never read (stale entries?): "
                        + ", ".join(f"{a:#x}" for a in sorted(unused)))
    return CaseResult(case, actual, time.perf_counter() - start, problems)
