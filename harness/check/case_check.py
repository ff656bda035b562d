"""Case validation: the unwinder's top frame of every thread, checked against what the
CPU does when the thread's current function runs to its return.

For every thread of a case, run the C unwinder, then let unicorn execute the
thread's current function from the core's registers until it returns
(emulate.run_until_return). The SP right after the return is the caller's CFA and
the PC is the return address; both are compared with what the unwinder computed
for frame 0 (its `cfa`) and frame 1 (its `addr`, the return address minus one).
Runs that cannot reach the return (system call, endless loop, unsupported
instruction) are *inconclusive* with the reason; they are never counted as a pass.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from ..arch import ARCHES, U64_MASK
from ..bpf.bridge import RawFrame, TraceResult
from ..cases.case_file import TestCase, load_case
from ..cases.selection import case_label
from ..core.elfcore import ThreadState
from ..core.process import Process
from ..paths import cache_root
from ..replay import open_case, unwind_process
from ..unwind_data import module_unwind_data
from .code import CodeModels
from .emulate import ReturnRun, run_until_return
from .rules import RuleTable, describe_rule, disassembly_around
from .sites import Site, top_frame_sites

MATCH = "match"
MISMATCH = "mismatch"
INCONCLUSIVE = "inconclusive"
SKIPPED = "skipped"


@dataclass
class ThreadCheck:
    lwp: int
    site: Site
    verdict: str  # MATCH, MISMATCH, INCONCLUSIVE, SKIPPED
    reason: str
    run: ReturnRun | None = None
    details: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return f"{self.verdict}: {self.reason}"


@dataclass
class CaseCheck:
    name: str
    threads: list[ThreadCheck]
    seconds: float
    skip: str | None = None

    def count(self, verdict: str) -> int:
        return sum(t.verdict == verdict for t in self.threads)

    @property
    def ok(self) -> bool:
        return self.count(MISMATCH) == 0

    @property
    def compared(self) -> int:
        return self.count(MATCH) + self.count(MISMATCH)

    def report(self, verbose: bool = False) -> list[str]:
        lines = []
        for t in self.threads:
            lines.append(f"  {t.lwp:<8} {t.site.describe()}")
            lines.append(f"           {t.summary()}")
            if t.verdict == MISMATCH or verbose:
                lines.extend(f"             {d}" for d in t.details)
        return lines


def _address_mask(process: Process, thread: ThreadState) -> int:
    if thread.pac_mask:  # arm64 pointer authentication: the mask of the PAC bits
        return ~thread.pac_mask & U64_MASK
    return ARCHES[process.arch].address_mask


def _location(process: Process, addr: int) -> str:
    mapping = process.mapping_at(addr)
    if mapping is None or mapping.module is None:
        return f"{addr:#x} (no module)"
    return f"{mapping.module.name}+{addr - mapping.bias:#x}"


def _frame_text(frame: RawFrame, names: dict[int, str]) -> str:
    if frame.kind_name != "native":
        return f"<error {frame.error_name or frame.kind_name}>"
    return f"{names.get(frame.file_id, hex(frame.file_id))}+{frame.addr:#x}"


def check_thread(process: Process, thread: ThreadState, trace: TraceResult, site: Site,
                 max_instructions: int = 100_000,
                 models: CodeModels | None = None) -> ThreadCheck:
    """Compare the unwinder's frame-0 CFA and frame-1 return address with execution."""
    frames = trace.frames
    names = {m.file_id: m.name for m in process.all_modules()}
    if not frames or frames[0].kind_name != "native":
        return ThreadCheck(thread.lwp, site, SKIPPED,
                           "the unwinder produced no native top frame"
                           + (f" ({_frame_text(frames[0], names)})" if frames else ""))
    top = frames[0]
    # Interpreter frames come before the eval-loop frame that is the native caller.
    caller = next((f for f in frames[1:] if f.kind_name != "python"), None)
    if caller is not None and caller.signal:
        return ThreadCheck(thread.lwp, site, SKIPPED,
                           "the top frame is a signal trampoline: it does not return, the "
                           "kernel restores the interrupted context (rt_sigreturn)")
    run = run_until_return(process, thread, max_instructions)
    if not run.returned:
        why = run.stop.message
        if caller is None:
            why += "; the unwinder found no caller either (outermost frame)"
        return ThreadCheck(thread.lwp, site, INCONCLUSIVE, why, run, list(run.notes))
    assert run.return_pc is not None and run.return_sp is not None
    return _compare(process, thread, run, top, caller, site, names, models or CodeModels())


def _compare(process: Process, thread: ThreadState, run: ReturnRun, top: RawFrame,
             caller: RawFrame | None, site: Site, names: dict[int, str],
             models: CodeModels) -> ThreadCheck:
    assert run.return_pc is not None and run.return_sp is not None
    return_pc = run.return_pc & _address_mask(process, thread)
    # Return addresses are shown as the caller's frame: minus one, as in case files.
    truth = (f"CPU: caller's SP {run.return_sp:#x}, caller frame "
             f"{_location(process, return_pc - 1)} (return address - 1)")
    problems = []
    if caller is None or caller.kind_name != "native":
        what = "ended the stack at frame 0" if caller is None else (
            f"stopped after frame 0 with {_frame_text(caller, names)}")
        problems.append(f"the unwinder {what}, but the function returns")
    else:
        if top.cfa != run.return_sp:
            problems.append(f"frame 0 CFA: unwinder {top.cfa:#x}, CPU {run.return_sp:#x} "
                            f"(difference {top.cfa - run.return_sp:+d})")
        mapping = process.mapping_at(return_pc - 1)
        module = mapping.module if mapping is not None else None
        if mapping is None or module is None:
            problems.append(f"the CPU returns to {return_pc:#x}, outside any module; the "
                            f"unwinder's caller frame is {_frame_text(caller, names)}")
        elif caller.file_id != module.file_id or caller.addr != return_pc - 1 - mapping.bias:
            problems.append(f"caller frame: unwinder {_frame_text(caller, names)}, "
                            f"CPU {module.name}+{return_pc - 1 - mapping.bias:#x} "
                            "(return address - 1)")
    steps = f"after {run.instructions} instructions"
    if not problems:
        reason = (f"CFA {top.cfa:#x} and caller frame {_location(process, return_pc - 1)} "
                  f"match ({steps})")
        return ThreadCheck(thread.lwp, site, MATCH, reason, run, list(run.notes))
    details = problems + [truth, f"emulated {steps}; first blocks: "
                          + " ".join(_location(process, a) for a in run.path[:8])]
    details += run.notes + _site_context(process, thread, models)
    return ThreadCheck(thread.lwp, site, MISMATCH, "; ".join(problems), run, details)


def _site_context(process: Process, thread: ThreadState, models: CodeModels) -> list[str]:
    """The rule in force at the top PC and the disassembly around it."""
    pc = thread.regs.get(ARCHES[process.arch].pc, 0)
    found = process.module_at(pc)
    if found is None:
        return []
    module, vaddr = found
    lines = []
    try:
        data = module_unwind_data(module.local_path, module.content_id, cache_root())
        lines.append("rule at the PC: "
                     + describe_rule(RuleTable(data).rule_at(vaddr), process.arch))
    except Exception as exc:  # noqa: BLE001 - context for a report, never fatal
        lines.append(f"rule at the PC: unavailable ({exc})")
    return lines + disassembly_around(models.of(module), vaddr, label=module.name)


def validate_process(process: Process, max_instructions: int = 100_000,
                     fault_addresses: frozenset[int] = frozenset()) -> list[ThreadCheck]:
    """Validate every thread's top frame of an open process."""
    result = unwind_process(process, fault_addresses)
    models = CodeModels()
    sites = top_frame_sites(process, models)
    checks = []
    for thread, unwound in zip(process.threads, result.threads, strict=True):
        checks.append(check_thread(process, thread, unwound.trace, sites[thread.lwp],
                                   max_instructions, models))
    return checks


def validate_case(case: TestCase | str | Path, max_instructions: int = 100_000) -> CaseCheck:
    """Validate one case (see the module docstring)."""
    if not isinstance(case, TestCase):
        case = load_case(case)
    start = time.perf_counter()
    # arch/name: the same case name usually exists for both architectures.
    name = case_label(case.path) if case.path is not None else case.name
    if case.skip:
        return CaseCheck(name, [], 0.0, case.skip)
    process = open_case(case)
    try:
        threads = validate_process(process, max_instructions, frozenset(case.fault_addresses))
    finally:
        process.close()
    return CaseCheck(name, threads, time.perf_counter() - start)
