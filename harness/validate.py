"""Instruction-level validation of unwind rules against what the CPU does.

Two checks, both for amd64 and arm64:

- **Case validation** (`validate_case`): for every thread of a case, run the
  C unwinder, then let unicorn execute the thread's current function from
  the core's registers until it returns. The SP right after the return is
  the caller's CFA and the PC is the return address; both are compared with
  what the unwinder computed for frame 0 (its `cfa`) and frame 1 (its `addr`,
  the return address minus one). Runs that cannot reach the return (system
  call, endless loop, unsupported instruction) are *inconclusive* with the
  reason; they are never counted as a pass.

- **Module check** (`validate_module`): start every function of a module at
  its entry with a synthetic stack and registers, single-step it along the
  path the emulator takes (calls are stepped over, returning 0), and at every
  executed instruction compare the stack-delta rule for that PC with the
  truth: the CFA is the SP at entry (+8 on amd64, where `call` pushed the
  return address), the return address is a sentinel value, and the caller's
  frame pointer is a marker value; the rule must find each of them.
"""

from __future__ import annotations

import bisect
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import capstone
import unicorn
from unicorn import arm64_const as UA
from unicorn import x86_const as UX

from .bpf_abi import (
    CFA_FP,
    CFA_INVALID,
    CFA_PLT,
    CFA_SIGNAL,
    CFA_SP,
    CFA_STOP,
    FRAME_FLAG_SIGNAL,
    FRAME_NATIVE,
)
from .bridge import RawFrame, TraceResult
from .build import cache_root
from .elfcore import ThreadState
from .emulate import PAGE, PF_R, PF_W, PF_X, U64, Emulator, Page, ReturnRun, run_until_return
from .formatting import error_name
from .functions import ElfCode, Function, elf_code, elf_code_for
from .process import Process
from .replay import open_case, store_for, unwind_process
from .sites import Site, branch_target, disassembler, never_returns, top_frame_sites
from .store import sha256_file
from .testcase import TestCase, load_case
from .unwind_data import FRAME_POINTER_RULE, ModuleUnwindData, UnwindRule, load_unwind_data

MATCH = "match"
MISMATCH = "mismatch"
INCONCLUSIVE = "inconclusive"
SKIPPED = "skipped"

_REG_NAMES = {"amd64": ("rsp", "rbp"), "arm64": ("sp", "x29")}


def describe_rule(rule: UnwindRule, arch: str) -> str:
    """A stack-delta rule in words, e.g. 'CFA=rsp+16, RA at CFA-8, FP at CFA-16'."""
    sp, fp = _REG_NAMES[arch]
    op = rule.cfa_op
    if op == CFA_INVALID:
        return "no usable rule (CFA_INVALID)"
    if op == CFA_STOP:
        return "outermost frame (CFA_STOP: return address undefined)"
    if op == CFA_SIGNAL:
        return "signal trampoline (CFA_SIGNAL)"
    base = {CFA_SP: sp, CFA_FP: fp, CFA_PLT: sp}.get(op, f"op{op}")
    cfa = f"CFA={base}{rule.cfa_param:+d}"
    if op == CFA_PLT:
        cfa += f" (+8 if pc&15 >= {rule.aux})"
    ra = "RA in LR" if rule.ra_offset == 0 else f"RA at CFA{rule.ra_offset:+d}"
    fp_text = "FP unchanged" if rule.fp_offset == 0 else f"FP at CFA{rule.fp_offset:+d}"
    return f"{cfa}, {ra}, {fp_text}"


class RuleTable:
    """Rule lookup by ELF address over a module's stack deltas (as the agent
    loads them: FRAME_POINTER_RULE before the first delta and where no FDE is)."""

    def __init__(self, data: ModuleUnwindData) -> None:
        self.data = data
        self._addrs = [addr for addr, _ in data.deltas]
        self._rules = [rule for _, rule in data.deltas]

    def rule_at(self, vaddr: int) -> UnwindRule:
        i = bisect.bisect_right(self._addrs, vaddr) - 1
        return self._rules[i] if i >= 0 else FRAME_POINTER_RULE


def disassembly_around(code: ElfCode, vaddr: int, before: int = 6, after: int = 3,
                       label: str | None = None) -> list[str]:
    """Lines of disassembly around vaddr (from its function start), '=>' marking it."""
    function = code.function_at(vaddr)
    start = function.start if function is not None else max(vaddr - 48, 0)
    end = max(function.end if function is not None else vaddr + 64, vaddr + 16)
    md = disassembler(code.arch)
    md.detail = False
    insns = list(md.disasm(code.code_bytes(start, end), start))
    index = next((i for i, insn in enumerate(insns) if insn.address == vaddr), None)
    if index is None:  # linear sweep missed vaddr (data in code); decode from vaddr on
        insns = list(md.disasm(code.code_bytes(vaddr, end), vaddr))
        index = 0
    name = label or code.path.name
    lines = []
    for insn in insns[max(0, index - before):index + after + 1]:
        mark = "=>" if insn.address == vaddr else "  "
        where = function.label(insn.address) if function else f"{insn.address:#x}"
        lines.append(f"{mark} {name}+{insn.address:#x} <{where}>: "
                     f"{insn.mnemonic} {insn.op_str}".rstrip())
    return lines


# ============================================================== case validation


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
    if process.arch != "arm64":
        return U64
    return ~thread.pac_mask & U64 if thread.pac_mask else (1 << 48) - 1


def _location(process: Process, addr: int) -> str:
    mapping = process.mapping_at(addr)
    if mapping is None or mapping.module is None:
        return f"{addr:#x} (no module)"
    return f"{mapping.module.name}+{addr - mapping.bias:#x}"


def _frame_text(frame: RawFrame, names: dict[int, str]) -> str:
    if frame.kind != FRAME_NATIVE:
        return f"<error {error_name(frame.error)}>"
    return f"{names.get(frame.file_id, hex(frame.file_id))}+{frame.addr:#x}"


def check_thread(process: Process, thread: ThreadState, trace: TraceResult, site: Site,
                 max_instructions: int = 100_000) -> ThreadCheck:
    """Compare the unwinder's frame-0 CFA and frame-1 return address with execution."""
    frames = trace.frames
    names = {m.file_id: m.name for m in process.modules.values()}
    if not frames or frames[0].kind != FRAME_NATIVE:
        return ThreadCheck(thread.lwp, site, SKIPPED,
                           "the unwinder produced no native top frame"
                           + (f" ({_frame_text(frames[0], names)})" if frames else ""))
    top = frames[0]
    caller = frames[1] if len(frames) > 1 else None
    if caller is not None and caller.flags & FRAME_FLAG_SIGNAL:
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
    return _compare(process, thread, run, top, caller, site, names)


def _compare(process: Process, thread: ThreadState, run: ReturnRun, top: RawFrame,
             caller: RawFrame | None, site: Site, names: dict[int, str]) -> ThreadCheck:
    assert run.return_pc is not None and run.return_sp is not None
    return_pc = run.return_pc & _address_mask(process, thread)
    truth = f"CPU: caller's SP {run.return_sp:#x}, returns to {_location(process, return_pc)}"
    problems = []
    if caller is None or caller.kind != FRAME_NATIVE:
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
                            f"unwinder says {_frame_text(caller, names)} (+1)")
        elif caller.file_id != module.file_id or caller.addr != return_pc - 1 - mapping.bias:
            problems.append(f"return address: unwinder {_frame_text(caller, names)} (+1), "
                            f"CPU {module.name}+{return_pc - mapping.bias:#x}")
    steps = f"after {run.instructions} instructions"
    if not problems:
        reason = (f"CFA {top.cfa:#x} and return address {_location(process, return_pc)} "
                  f"match ({steps})")
        return ThreadCheck(thread.lwp, site, MATCH, reason, run, list(run.notes))
    details = problems + [truth, f"emulated {steps}; first blocks: "
                          + " ".join(_location(process, a) for a in run.path[:8])]
    details += run.notes + _site_context(process, top, thread)
    return ThreadCheck(thread.lwp, site, MISMATCH, "; ".join(problems), run, details)


def _site_context(process: Process, top: RawFrame, thread: ThreadState) -> list[str]:
    """The rule in force at the top PC and the disassembly around it."""
    pc = thread.regs.get("rip" if process.arch == "amd64" else "pc", 0)
    mapping = process.mapping_at(pc)
    if mapping is None or mapping.module is None:
        return []
    code = elf_code_for(mapping.module)
    vaddr = pc - mapping.bias
    lines = []
    try:
        data = load_unwind_data(mapping.module.local_path, mapping.module.content_id,
                                cache_root())
        lines.append("rule at the PC: "
                     + describe_rule(RuleTable(data).rule_at(vaddr), process.arch))
    except Exception as exc:  # noqa: BLE001 - context for a report, never fatal
        lines.append(f"rule at the PC: unavailable ({exc})")
    return lines + disassembly_around(code, vaddr, label=mapping.module.name)


def validate_process(process: Process, max_instructions: int = 100_000,
                     fault_addresses: frozenset[int] = frozenset()) -> list[ThreadCheck]:
    """Validate every thread's top frame of an open process."""
    result = unwind_process(process, fault_addresses)
    sites = top_frame_sites(process)
    checks = []
    for thread, unwound in zip(process.threads, result.threads, strict=True):
        checks.append(check_thread(process, thread, unwound.trace, sites[thread.lwp],
                                   max_instructions))
    return checks


def validate_case(case: TestCase | str | Path, max_instructions: int = 100_000) -> CaseCheck:
    """Validate one case (see the module docstring)."""
    if not isinstance(case, TestCase):
        case = load_case(case)
    start = time.perf_counter()
    if case.skip:
        return CaseCheck(case.name, [], 0.0, case.skip)
    process = open_case(case, store_for(case))
    try:
        threads = validate_process(process, max_instructions, frozenset(case.fault_addresses))
    finally:
        process.close()
    return CaseCheck(case.name, threads, time.perf_counter() - start)


# ============================================================ module delta check

# Synthetic process layout for one module loaded at its ELF addresses (bias 0).
STACK_BASE = 0x7FFE_F000_0000
STACK_SIZE = 0x10_0000
ENTRY_SP = STACK_BASE + STACK_SIZE - 0x1_0000  # 16-byte aligned
RA_SENTINEL = 0x5E5E_0000_1000  # never mapped: fetching it means "returned"
FP_MARKER = STACK_BASE + STACK_SIZE - 0x40  # the caller's frame pointer (in its frame)
SCRATCH = 0x1000_0000_0000  # argument registers point into zero-filled scratch memory
USER_LIMIT = 1 << 47
ENOSYS = 38


class ModuleMemory:
    """One module at its ELF addresses, as the loader maps it; every other user
    address reads as zeros (a bounded number of pages per run)."""

    def __init__(self, code: ElfCode) -> None:
        self.code = code
        self.segments = code.module.loads

    def is_module_page(self, page: int) -> bool:
        return any(_page_down(s.vaddr) <= page < s.vaddr + s.memsz for s in self.segments)

    def page(self, addr: int) -> Page | None:
        if addr >= USER_LIMIT:
            return None
        data = bytearray(PAGE)
        flags = 0
        module = self.code.module
        for seg in self.segments:
            if not _page_down(seg.vaddr) <= addr < seg.vaddr + seg.memsz:
                continue
            flags |= seg.flags
            if not seg.flags & PF_W:
                # Read-only: the loader maps whole file pages, tail included.
                file_at = seg.offset + addr - seg.vaddr
                if 0 <= file_at < module.size:
                    chunk = module.read(file_at, min(PAGE, module.size - file_at)) or b""
                    data[:len(chunk)] = chunk
                continue
            # Writable: the file part, then zeros (.bss).
            lo, hi = max(addr, seg.vaddr), min(addr + PAGE, seg.vaddr + seg.filesz)
            if lo < hi:
                chunk = module.read(seg.offset + lo - seg.vaddr, hi - lo) or b""
                data[lo - addr:lo - addr + len(chunk)] = chunk
        if flags:
            return Page(bytes(data), flags)
        return Page(bytes(PAGE), PF_R | PF_W)  # synthetic zero memory (stack, heap, args)


def _page_down(addr: int) -> int:
    return addr & ~(PAGE - 1)


@dataclass
class DeltaMismatch:
    vaddr: int
    function: str
    what: str  # "cfa", "ra" or "fp"
    message: str
    rule: UnwindRule
    fallback: bool  # no FDE covers the PC: the frame-pointer fallback rule
    count: int = 1
    disassembly: list[str] = field(default_factory=list)


@dataclass
class ModuleCheck:
    path: str
    arch: str
    functions: int = 0  # functions in the module (FDE ranges plus uncovered symbols)
    started: int = 0
    not_entries: list[str] = field(default_factory=list)  # FDEs that are not entry points
    outermost: list[str] = field(default_factory=list)  # entry rule CFA_STOP
    instructions: int = 0  # instruction executions checked
    distinct: dict[int, int] = field(default_factory=dict)  # executed address -> size
    covered_bytes: int = 0  # distinct executed bytes inside the functions checked
    code_bytes: int = 0
    mismatches: dict[tuple[int, str], DeltaMismatch] = field(default_factory=dict)
    no_rule: int = 0  # executions where the rule is CFA_INVALID
    no_rule_sites: set[int] = field(default_factory=set)
    skipped_rules: Counter[str] = field(default_factory=Counter)
    stops: Counter[str] = field(default_factory=Counter)
    stop_examples: dict[str, str] = field(default_factory=dict)  # kind -> first message
    seconds: float = 0.0

    @property
    def mismatch_count(self) -> int:
        return sum(m.count for m in self.mismatches.values())

    @property
    def ok(self) -> bool:
        """No stack delta from CFI disagrees with execution. Mismatches of the
        frame-pointer fallback (code no FDE covers) are reported, not failed:
        there the unwinder guesses by design."""
        return not any(not m.fallback for m in self.mismatches.values())

    def coverage(self) -> float:
        return self.covered_bytes / self.code_bytes if self.code_bytes else 0.0

    def report(self, show: int = 10) -> list[str]:
        cfi = [m for m in self.mismatches.values() if not m.fallback]
        fallback = [m for m in self.mismatches.values() if m.fallback]
        kinds = Counter(m.what for m in cfi)
        lines = [
            f"module: {self.path} ({self.arch})",
            f"functions: {self.functions}, started {self.started}; not started: "
            f"{len(self.not_entries)} not entry points (split-off parts), "
            f"{len(self.outermost)} outermost (return address undefined)",
            "runs ended: " + ", ".join(f"{k} {v}" for k, v in self.stops.most_common()),
            f"instructions checked: {self.instructions} executions, {len(self.distinct)} "
            f"distinct; coverage {100 * self.coverage():.1f}% of {self.code_bytes} code bytes",
            f"mismatches: {len(cfi)} sites with CFI ({kinds['cfa']} cfa, {kinds['ra']} ra, "
            f"{kinds['fp']} fp), {len(fallback)} sites without CFI (frame-pointer fallback); "
            f"{self.mismatch_count} executions",
            f"no usable rule (CFA_INVALID): {len(self.no_rule_sites)} sites, "
            f"{self.no_rule} executions"
            + "".join(f"; {k}: {v}" for k, v in sorted(self.skipped_rules.items())),
            f"time: {self.seconds:.1f} s",
        ]
        for m in sorted(self.mismatches.values(), key=lambda m: (m.fallback, m.vaddr))[:show]:
            tag = " [no FDE: frame-pointer fallback]" if m.fallback else ""
            lines.append(f"mismatch ({m.what}) at {m.function} ({m.vaddr:#x}), "
                         f"{m.count}x{tag}: {m.message}")
            lines.append(f"    rule: {describe_rule(m.rule, self.arch)}")
            lines.extend("    " + d for d in m.disassembly)
        return lines


@dataclass
class _Step:
    """What the code hook needs about one instruction, computed once per address."""

    rule: UnwindRule
    fallback: bool
    is_call: bool
    function: Function | None
    size: int
    noreturn: str | None = None  # the callee, if this is a call that never returns


class DeltaChecker:
    """Single-steps functions of one module and checks every executed PC's rule."""

    def __init__(self, code: ElfCode, unwind: ModuleUnwindData, max_instructions: int = 2000,
                 max_pages: int = 256) -> None:
        self.code = code
        self.arch = code.arch
        self.rules = RuleTable(unwind)
        self.max_instructions = max_instructions
        self.memory = ModuleMemory(code)
        self.emu = Emulator(code.arch, self.memory, max_pages=max_pages + 64)
        self.max_pages = max_pages
        spec = self.emu.spec
        self._sp, self._fp, self._lr = spec.sp, spec.fp, spec.lr
        self._mask = spec.address_mask
        self._cfa_bias = 8 if self.arch == "amd64" else 0
        self._steps: dict[int, _Step] = {}
        self._noreturn: dict[int, bool] = {}  # callee start -> never returns
        self._md = disassembler(code.arch)
        self.emu.on_fetch_unmapped = self._on_fetch_unmapped
        self.emu.on_syscall = self._on_syscall
        self.emu.uc.hook_add(unicorn.UC_HOOK_CODE, self._on_code)
        self.result = ModuleCheck(str(code.path), code.arch)
        self._entry_sp = ENTRY_SP
        self._count = 0
        self._pristine: list[tuple[int, bytes]] = []
        self._persistent: set[int] = set()
        self._premap()

    # ------------------------------------------------------------ entry points

    def entry_points(self, functions: list[Function]) -> list[tuple[int, Function]]:
        """(entry address, function) to start; records the ones not started."""
        entries = []
        for function in functions:
            section = self.code.section_at(function.start)
            if section is not None and section.name.startswith(".plt") \
                    and function.source == "fde":
                stride = section.entsize if section.entsize in (8, 16) else 16
                addrs = list(range(function.start, function.end, stride))
            else:
                addrs = [function.start]
            for addr in addrs:
                why = self._not_entry(addr, function)
                if why == "outermost":
                    self.result.outermost.append(function.label(addr))
                elif why and len(addrs) == 1:
                    self.result.not_entries.append(f"{function.label(addr)} ({why})")
                elif not why:
                    entries.append((addr, function))
        return entries

    def _not_entry(self, addr: int, function: Function) -> str | None:
        if ".cold" in function.name:
            return "a .cold part"
        rule = self.rules.rule_at(addr)
        if rule.cfa_op == CFA_STOP:
            return "outermost"
        if function.source != "fde" or rule.cfa_op in (CFA_INVALID, CFA_SIGNAL):
            return None  # no CFI to judge by: start it; CFA_SIGNAL is counted per step
        if function.start in self.code.symbols and not function.name.startswith("fde@"):
            return None  # a named function: its first instruction is an entry
        if self._is_entry_rule(rule, addr):
            return None
        return f"starts with {describe_rule(rule, self.arch)}"

    def _is_entry_rule(self, rule: UnwindRule, addr: int) -> bool:
        if self.arch == "amd64":
            extra = 8 if rule.cfa_op == CFA_PLT and (addr & 15) >= rule.aux else 0
            return (rule.cfa_op in (CFA_SP, CFA_PLT) and rule.cfa_param + extra == 8
                    and rule.ra_offset == -8)
        return rule.cfa_op == CFA_SP and rule.cfa_param == 0 and rule.ra_offset == 0

    # -------------------------------------------------------------- one run

    def _premap(self) -> None:
        """Map the module and the stack once; runs only restore their writable parts."""
        pages = sorted({page for seg in self.memory.segments
                        for page in range(_page_down(seg.vaddr), seg.vaddr + seg.memsz, PAGE)})
        runs: list[tuple[int, int, list[bytes]]] = []  # (start, flags, page data)
        for page in pages:
            got = self.memory.page(page)
            assert got is not None
            last = runs[-1] if runs else None
            if last is not None and last[1] == got.flags and \
                    last[0] + PAGE * len(last[2]) == page:
                last[2].append(got.data)
            else:
                runs.append((page, got.flags, [got.data]))
        for start, flags, datas in runs:
            data = b"".join(datas)
            self.emu.map_region(start, data, flags)
            if flags & PF_W:
                self._pristine.append((start, data))
        self.emu.map_region(STACK_BASE, bytes(STACK_SIZE), PF_R | PF_W)
        self._persistent = set(self.emu.mapped)
        self.emu.max_pages = len(self._persistent) + self.max_pages

    def _reset(self) -> None:
        emu = self.emu
        emu.unmap_pages([p for p in emu.mapped if p not in self._persistent])
        for start, data in self._pristine:
            emu.uc.mem_write(start, data)
        emu.uc.mem_write(STACK_BASE, bytes(STACK_SIZE))
        emu.stop = None
        self._count = 0
        spec = emu.spec
        for i, (name, reg) in enumerate(sorted(spec.regs.items())):
            if name not in ("rip", "pc", "rsp", "sp", "eflags"):
                emu.set_reg(reg, SCRATCH + i * 0x10_0000)
        emu.set_reg(self._fp, FP_MARKER)
        if self.arch == "amd64":
            emu.set_reg(UX.UC_X86_REG_EFLAGS, 0x202)
            for i in range(16):
                emu.uc.reg_write(getattr(UX, f"UC_X86_REG_XMM{i}"), 0)
            self._entry_sp = ENTRY_SP - 8
            emu.set_reg(self._sp, self._entry_sp)
            emu.uc.mem_write(self._entry_sp, RA_SENTINEL.to_bytes(8, "little"))
        else:
            emu.set_reg(UA.UC_ARM64_REG_NZCV, 0)
            emu.set_reg(UA.UC_ARM64_REG_TPIDR_EL0, SCRATCH - 0x10_0000)
            for i in range(32):
                emu.uc.reg_write(getattr(UA, f"UC_ARM64_REG_V{i}"), 0)
            assert self._lr is not None
            emu.set_reg(self._lr, RA_SENTINEL)
            self._entry_sp = ENTRY_SP
            emu.set_reg(self._sp, self._entry_sp)

    def check_function(self, entry: int, function: Function) -> str:
        """Run one function from its entry; returns why the run ended."""
        self._reset()
        self._function = function
        stop = self.emu.run(entry, self.max_instructions + 1, timeout_s=10.0)
        self.result.stops[stop.kind] += 1
        self.result.stop_examples.setdefault(stop.kind, f"{function.label(entry)}: {stop.message}")
        return stop.kind

    def _on_fetch_unmapped(self, addr: int) -> bool:
        if addr & self._mask == RA_SENTINEL:
            sp = self.emu.sp
            cfa = self._entry_sp + self._cfa_bias
            kind = "returned" if sp == cfa else "returned-bad-sp"
            self.emu._set_stop(kind, f"returned with SP {sp:#x} (expected {cfa:#x})", addr)
            return True
        return False

    def _on_syscall(self) -> bool:
        """System calls fail with -ENOSYS and the run goes on (more code covered)."""
        self.emu.set_reg(self.emu.spec.retval, -ENOSYS)
        return True

    # --------------------------------------------------------- per instruction

    def _step(self, addr: int, size: int) -> _Step:
        step = self._steps.get(addr)
        if step is None:
            function = self.code.function_at(addr)
            # unicorn reports a bogus huge size for an instruction it cannot
            # decode; no instruction is longer than 15 bytes.
            code = self.emu.read(addr, min(size, 15)) or b""
            insn = next(self._md.disasm(code, addr, 1), None)
            is_call = insn is not None and insn.group(capstone.CS_GRP_CALL)
            step = _Step(self.rules.rule_at(addr), function is None or function.source != "fde",
                         is_call, function, insn.size if insn is not None else 0)
            if is_call and insn is not None:
                step.noreturn = self._noreturn_callee(insn)
            self._steps[addr] = step
        return step

    def _noreturn_callee(self, insn: capstone.CsInsn) -> str | None:
        target = branch_target(insn)
        callee = self.code.function_at(target) if target is not None else None
        if callee is None:
            return None
        known = self._noreturn.get(callee.start)
        if known is None:
            known = self._noreturn[callee.start] = never_returns(self.code, callee)
        return callee.label(callee.start) if known else None

    def _on_code(self, uc: unicorn.Uc, addr: int, size: int, _: object) -> None:
        self._count += 1
        if self._count > self.max_instructions:
            self.emu._set_stop("limit", f"{self.max_instructions} instructions")
            uc.emu_stop()
            return
        step = self._step(addr, size)
        result = self.result
        result.instructions += 1
        result.distinct.setdefault(addr, step.size)
        self._check(uc, addr, step)
        if step.noreturn is not None:
            self.emu._set_stop("noreturn-call", f"call of {step.noreturn}, which never "
                               f"returns ({addr:#x})")
            uc.emu_stop()
        elif step.is_call:
            self._step_over_call(uc, addr, step)

    def _step_over_call(self, uc: unicorn.Uc, addr: int, step: _Step) -> None:
        after = addr + step.size
        if step.function is None or after >= step.function.end:
            # A call at the very end of a function does not return (abort,
            # __stack_chk_fail): what follows is another function.
            self.emu._set_stop("noreturn-call", f"call at the end of the function ({addr:#x})")
            uc.emu_stop()
            return
        uc.reg_write(self.emu.spec.retval, 0)
        if self._lr is not None:
            uc.reg_write(self._lr, after)  # what bl/blr leave in the link register
        uc.reg_write(self.emu.spec.pc, after)

    def _check(self, uc: unicorn.Uc, addr: int, step: _Step) -> None:
        rule = step.rule
        op = rule.cfa_op
        if op == CFA_INVALID:
            self.result.no_rule += 1
            self.result.no_rule_sites.add(addr)
            return
        if op in (CFA_STOP, CFA_SIGNAL):
            self.result.skipped_rules["outermost" if op == CFA_STOP else "signal"] += 1
            return
        sp = uc.reg_read(self._sp)
        true_cfa = self._entry_sp + self._cfa_bias
        if op == CFA_FP:
            base = uc.reg_read(self._fp)
        else:
            base = sp
        cfa = (base + rule.cfa_param + (8 if op == CFA_PLT and (addr & 15) >= rule.aux
                                        else 0)) & U64
        if cfa != true_cfa:
            reg = _REG_NAMES[self.arch][1 if op == CFA_FP else 0]
            self._mismatch(addr, step, "cfa",
                           f"rule gives CFA {cfa:#x}, the caller's SP is {true_cfa:#x} "
                           f"(= {_REG_NAMES[self.arch][0]}{true_cfa - sp:+d}"
                           + (f", {reg}{true_cfa - base:+d}" if op == CFA_FP else "") + ")")
            return
        self._check_ra(uc, addr, step, cfa, sp)
        self._check_fp(uc, addr, step, cfa, sp)

    def _read_u64(self, addr: int) -> int | None:
        data = self.emu.read(addr, 8)
        return int.from_bytes(data, "little") if data is not None else None

    def _where(self, uc: unicorn.Uc, value: int, cfa: int, sp: int, reg: int | None) -> str:
        """Where a value really is: a register, or a stack slot relative to the CFA."""
        if reg is not None and uc.reg_read(reg) & self._mask == value:
            return "in " + ("LR" if reg == self._lr else _REG_NAMES[self.arch][1])
        data = self.emu.read(sp, max(cfa + 16 - sp, 0)) if sp <= cfa else None
        if data:
            for off in range(0, len(data) - 7, 8):
                if int.from_bytes(data[off:off + 8], "little") & self._mask == value:
                    return f"at CFA{sp + off - cfa:+d}"
        return "nowhere found"

    def _check_ra(self, uc: unicorn.Uc, addr: int, step: _Step, cfa: int, sp: int) -> None:
        rule = step.rule
        if rule.ra_offset == 0:
            value = uc.reg_read(self._lr) if self._lr is not None else None
            where = "LR"
        else:
            value = self._read_u64(cfa + rule.ra_offset)
            where = f"CFA{rule.ra_offset:+d}"
        if value is not None and value & self._mask == RA_SENTINEL:
            return
        actual = self._where(uc, RA_SENTINEL, cfa, sp, self._lr)
        got = f"{value:#x}" if value is not None else "unreadable"
        self._mismatch(addr, step, "ra", f"rule reads the return address from {where} "
                       f"({got}); it is {actual}")

    def _check_fp(self, uc: unicorn.Uc, addr: int, step: _Step, cfa: int, sp: int) -> None:
        rule = step.rule
        if rule.fp_offset == 0:
            value = uc.reg_read(self._fp)
            where = f"{_REG_NAMES[self.arch][1]} (unchanged)"
        else:
            value = self._read_u64(cfa + rule.fp_offset)
            where = f"CFA{rule.fp_offset:+d}"
        if value == FP_MARKER:
            return
        actual = self._where(uc, FP_MARKER, cfa, sp, self._fp)
        got = f"{value:#x}" if value is not None else "unreadable"
        self._mismatch(addr, step, "fp", f"rule takes the caller's FP from {where} ({got}); "
                       f"it is {actual}")

    def _mismatch(self, addr: int, step: _Step, what: str, message: str) -> None:
        key = (addr, what)
        known = self.result.mismatches.get(key)
        if known is not None:
            known.count += 1
            return
        label = step.function.label(addr) if step.function else f"{addr:#x}"
        self.result.mismatches[key] = DeltaMismatch(
            addr, label, what, message, step.rule, step.fallback,
            disassembly=disassembly_around(self.code, addr))


def module_unwind_data(path: str | Path, content_id: str | None = None) -> ModuleUnwindData:
    """The stack deltas the agent would load for this file (cached per content)."""
    return load_unwind_data(path, content_id or sha256_file(path), cache_root())


def validate_module(path: str | Path, function: str | None = None,
                    unwind: ModuleUnwindData | None = None, max_instructions: int = 2000,
                    progress: Callable[[int, int, str], None] | None = None,
                    label: str | None = None) -> ModuleCheck:
    """Check a module's stack deltas instruction by instruction (see the module
    docstring); `function` restricts the run to one function (name or address)."""
    start = time.perf_counter()
    content_id = sha256_file(path)
    code = elf_code(path, content_id)
    if unwind is None:
        unwind = module_unwind_data(path, content_id)
    checker = DeltaChecker(code, unwind, max_instructions)
    result = checker.result
    functions = [code.find_function(function)] if function else code.functions
    result.functions = len(code.functions)
    if label:
        result.path = label
    result.code_bytes = sum(f.end - f.start for f in functions)
    entries = checker.entry_points(functions)
    for i, (entry, func) in enumerate(entries):
        if progress is not None:
            progress(i, len(entries), func.label(entry))
        checker.check_function(entry, func)
        result.started += 1
    if progress is not None:
        progress(len(entries), len(entries), "")
    ranges = sorted((f.start, f.end) for f in functions)
    starts = [start for start, _ in ranges]
    for addr, size in result.distinct.items():
        i = bisect.bisect_right(starts, addr) - 1
        if i >= 0 and addr < ranges[i][1]:
            result.covered_bytes += size
    result.seconds = time.perf_counter() - start
    return result


__all__ = [
    "CaseCheck", "DeltaChecker", "ModuleCheck", "ThreadCheck", "check_thread",
    "describe_rule", "disassembly_around", "validate_case", "validate_module",
    "validate_process", "PF_X", "PF_R",
]
