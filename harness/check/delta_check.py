"""The module check (`coredump validate-deltas`): every stack delta of a module,
instruction by instruction, against what the CPU does.

Start every function of a module at its entry with a synthetic stack and
registers, single-step it along the path the emulator takes (calls are stepped
over, returning 0), and at every executed instruction compare the stack-delta
rule for that PC with the truth: the CFA is the SP at entry (+8 on amd64, where
`call` pushed the return address), the return address is a sentinel value, and
the caller's frame pointer is a marker value; the rule must find each of them.
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

from ..arch import AMD64, ARCHES, U64_MASK
from ..core.elf import PF_R, PF_W
from ..paths import cache_root
from ..unwind_data import (
    CFA_DEREF_FP,
    CFA_FP,
    CFA_GO_ASMCGOCALL,
    CFA_GO_SAVED_SP,
    CFA_GO_STACK_SWITCH,
    CFA_INVALID,
    CFA_PLT,
    CFA_SIGNAL,
    CFA_SP,
    CFA_STOP,
    FP_AT_FP,
    ModuleUnwindData,
    UnwindRule,
    module_unwind_data,
    plt_pushed_bytes,
)
from .code import ElfCode, Function, open_code
from .emulate import PAGE, Emulator, Page
from .rules import RuleTable, describe_rule, disassembly_around
from .sites import branch_target, disassembler, never_returns

# Synthetic process layout for one module loaded at its ELF addresses (bias 0).
STACK_BASE = 0x7FFE_F000_0000
STACK_SIZE = 0x10_0000
ENTRY_SP = STACK_BASE + STACK_SIZE - 0x1_0000  # 16-byte aligned
RA_SENTINEL = 0x5E5E_0000_1000  # never mapped: fetching it means "returned"
FP_MARKER = STACK_BASE + STACK_SIZE - 0x40  # the caller's frame pointer (in its frame)
SCRATCH = 0x1000_0000_0000  # argument registers point into zero-filled scratch memory
USER_LIMIT = 1 << 47
ENOSYS = 38
# Functions whose rules are meant to be exact: from an FDE or synthesized from the
# instructions (the rest run under the frame-pointer fallback).
_RULE_SOURCES = ("fde", "synthesized")


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
        self._sp_name, self._fp_name = ARCHES[self.arch].sp, ARCHES[self.arch].fp
        self._mask = spec.address_mask
        self._cfa_bias = -ARCHES[self.arch].entry_ra_offset  # the CFA above the entry SP
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
        if function.source not in _RULE_SOURCES or rule.cfa_op in (CFA_INVALID, CFA_SIGNAL):
            return None  # no CFI to judge by: start it; CFA_SIGNAL is counted per step
        if function.start in self.code.symbols and not function.name.startswith("fde@"):
            return None  # a named function: its first instruction is an entry
        if self._is_entry_rule(rule, addr):
            return None
        return f"starts with {describe_rule(rule, self.arch)}"

    def _is_entry_rule(self, rule: UnwindRule, addr: int) -> bool:
        if self.arch == AMD64:
            extra = plt_pushed_bytes(addr, rule.aux) if rule.cfa_op == CFA_PLT else 0
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
        if self.arch == AMD64:
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
            step = _Step(self.rules.rule_at(addr),
                         function is None or function.source not in _RULE_SOURCES,
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
        if op in (CFA_GO_STACK_SWITCH, CFA_GO_ASMCGOCALL, CFA_GO_SAVED_SP):
            # the caller is on another stack (goroutine vs system): a synthetic
            # single stack cannot show where; the replayed cgo cases do
            self.result.skipped_rules["go stack switch"] += 1
            return
        sp = uc.reg_read(self._sp)
        true_cfa = self._entry_sp + self._cfa_bias
        if op in (CFA_FP, CFA_DEREF_FP):
            base = uc.reg_read(self._fp)
        else:
            base = sp
        pushed = plt_pushed_bytes(addr, rule.aux) if op == CFA_PLT else 0
        cfa = (base + rule.cfa_param + pushed) & U64_MASK
        if op == CFA_DEREF_FP:  # realigned stack: the CFA is stored at FP + param
            stored = self._read_u64(cfa)
            if stored is None:
                self._mismatch(addr, step, "cfa", f"rule reads the CFA at {self._fp_name}"
                               f"{rule.cfa_param:+d} ({cfa:#x}), which is unreadable")
                return
            cfa = stored
        if cfa != true_cfa:
            reg = self._fp_name if op == CFA_FP else self._sp_name
            self._mismatch(addr, step, "cfa",
                           f"rule gives CFA {cfa:#x}, the caller's SP is {true_cfa:#x} "
                           f"(= {self._sp_name}{true_cfa - sp:+d}"
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
            return "in " + ("LR" if reg == self._lr else self._fp_name)
        data = self.emu.read(sp, max(cfa + 16 - sp, 0)) if sp <= cfa else None
        if data:
            for off in range(0, len(data) - 7, 8):
                if int.from_bytes(data[off:off + 8], "little") & self._mask == value:
                    return f"at CFA{sp + off - cfa:+d}"
        return "nowhere found"

    def _check_ra(self, uc: unicorn.Uc, addr: int, step: _Step, cfa: int, sp: int) -> None:
        rule = step.rule
        if rule.ra_offset == 0:
            # arm64: the link register; x86_64: rdi, the one register CFI keeps a return
            # address in (glibc's vfork), which the unwinder holds as its top frame's "LR"
            reg = self._lr if self._lr is not None else self.emu.spec.regs["rdi"]
            value = uc.reg_read(reg)
            where = "LR" if self._lr is not None else "rdi"
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
        if rule.cfa_op == CFA_DEREF_FP and rule.aux == FP_AT_FP:
            value = self._read_u64((uc.reg_read(self._fp) + rule.fp_offset) & U64_MASK)
            where = f"{self._fp_name}{rule.fp_offset:+d}"
        elif rule.fp_offset == 0:
            value = uc.reg_read(self._fp)
            where = f"{self._fp_name} (unchanged)"
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


def validate_module(path: str | Path, function: str | None = None,
                    unwind: ModuleUnwindData | None = None, max_instructions: int = 2000,
                    progress: Callable[[int, int, str], None] | None = None,
                    label: str | None = None) -> ModuleCheck:
    """Check a module's stack deltas instruction by instruction (see the module
    docstring); `function` restricts the run to one function (name or address)."""
    start = time.perf_counter()
    code = open_code(path)
    try:
        if unwind is None:  # the stack deltas the agent would load for this file
            unwind = module_unwind_data(path, code.module.content_id, cache_root())
        result = _check_functions(code, unwind, function, max_instructions, progress)
    finally:
        code.module.close()
    if label:
        result.path = label
    result.seconds = time.perf_counter() - start
    return result


def _check_functions(code: ElfCode, unwind: ModuleUnwindData, function: str | None,
                     max_instructions: int,
                     progress: Callable[[int, int, str], None] | None) -> ModuleCheck:
    checker = DeltaChecker(code, unwind, max_instructions)
    result = checker.result
    functions = [code.find_function(function)] if function else code.functions
    result.functions = len(code.functions)
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
    return result
