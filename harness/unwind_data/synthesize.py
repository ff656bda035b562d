"""Stack deltas for code that has no CFI, derived from its instructions.

musl is built without unwind tables, hand-written assembly often has none, and
qemu-user writes its signal trampoline to a page of anonymous memory. A
profiler's agent that stopped at such code would lose the rest of the stack;
like the reference tool's agent (which does this for the arm64 vDSO), we read
the machine code of every range that no FDE covers and work out, instruction
by instruction, where the caller's frame is.

Two things are recognised:

- **Signal trampolines** by their instruction pattern (x86-64 `mov $15,%eax;
  syscall`, arm64 `mov x8,#139; svc #0`): CFA_SIGNAL from the byte before the
  pattern (a return address minus one lands there) to its end.
- **x86-64 functions** by a data-flow walk from each entry point (function
  symbols, the targets of direct calls, the start of each gap, and code no
  walk reached that follows a `ret` or jump): the CFA is tracked through
  push/pop, `sub`/`add`/`lea` of %rsp, `mov %rsp,%rbp`, `leave`, branches
  and the saved %rbp slot. Where the walk loses track (a variable stack
  adjustment without a frame pointer), the old fallback, frame-pointer
  chaining, stays. `xor %ebp,%ebp` while %rbp is not saved is the psABI's
  outermost-frame marker (`_start`, a new thread's first frame): the walk
  stops there.

arm64 code without CFI keeps frame-record chaining, apart from trampolines.
The synthesized ranges are recorded (ModuleUnwindData.synthesized) so that
`analyze` can mark the frames they unwound and `validate-deltas` can check them
like any FDE.
"""

from __future__ import annotations

import logging
import mmap
import os
import re
from bisect import bisect_right
from collections.abc import Iterator
from dataclasses import replace
from functools import lru_cache
from typing import Any, NamedTuple

from ..arch import AMD64, sigreturn_offsets
from ..core import elf
from ..core.elf import PF_X, PT_LOAD, SHF_EXECINSTR, Ehdr, Shdr
from ..core.symbols import function_symbols
from .model import (
    _SIGNAL_RULE,
    _STOP_RULE,
    CFA_FP,
    CFA_SP,
    FRAME_POINTER_RULE,
    ModuleUnwindData,
    UnwindRule,
)

log = logging.getLogger(__name__)

# Code without CFI read per module at most (a larger gap is a binary of another
# kind, e.g. Go, whose tables come from elsewhere): bounds the time of a cold run.
MAX_SYNTHESIZED_BYTES = 32 << 20

_SHT_NOBITS = 8
_RA_OFFSET = -8  # amd64: the return address is the word below the CFA


class _State(NamedTuple):
    """What is known at one instruction: CFA - SP, CFA - FP (when %rbp is the
    frame pointer), where the caller's %rbp is saved (CFA-relative), and
    whether this is the outermost frame."""

    sp_off: int | None
    fp_off: int | None
    fp_saved: int | None
    stop: bool = False

    def rule(self) -> UnwindRule | None:
        if self.stop:
            return _STOP_RULE
        # SP first: where both are known, SP tracking is exact, while `mov %rsp,%rbp`
        # may just as well copy a pointer to a local buffer (musl does).
        saved = self.fp_saved or 0
        if self.sp_off is not None:
            return UnwindRule(CFA_SP, self.sp_off, fp_offset=saved, ra_offset=_RA_OFFSET)
        if self.fp_off is not None:
            return UnwindRule(CFA_FP, self.fp_off, fp_offset=saved, ra_offset=_RA_OFFSET)
        return None


_ENTRY = _State(8, None, None)  # right after `call`: the return address at SP
_LOST = _State(None, None, None)


class _Insn(NamedTuple):
    addr: int
    size: int
    mnemonic: str
    ops: str


# ------------------------------------------------------------------ code ranges


def _code_ranges(mm: mmap.mmap | bytes) -> list[tuple[int, int, int]]:
    """(vaddr, file offset, size) of the executable code: the
    SHF_EXECINSTR sections, else the file-backed part of executable PT_LOADs."""
    ehdr = Ehdr.parse(mm[:elf.EHDR_SIZE])
    ranges: list[tuple[int, int, int]] = []
    if ehdr.shoff and ehdr.shentsize == elf.SHDR_SIZE and ehdr.shnum:
        for i in range(ehdr.shnum):
            pos = ehdr.shoff + i * elf.SHDR_SIZE
            if pos + elf.SHDR_SIZE > len(mm):
                break
            sh = Shdr.parse(mm, pos)
            if sh.flags & SHF_EXECINSTR and sh.type != _SHT_NOBITS and sh.addr and sh.size \
                    and sh.offset + sh.size <= len(mm):
                ranges.append((sh.addr, sh.offset, sh.size))
    if not ranges:
        for ph in elf.program_headers(mm, ehdr):
            if ph.type == PT_LOAD and ph.flags & PF_X and ph.filesz \
                    and ph.offset + ph.filesz <= len(mm):
                ranges.append((ph.vaddr, ph.offset, ph.filesz))
    return sorted(ranges)


def _gaps(code: list[tuple[int, int, int]],
          covered: list[tuple[int, int]]) -> Iterator[tuple[int, int, int]]:
    """(vaddr, file offset, size) of the code that no FDE covers."""
    merged: list[list[int]] = []
    for start, end in sorted(covered):
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    for vaddr, offset, size in code:
        cursor, end = vaddr, vaddr + size
        for lo, hi in merged:
            if hi <= cursor or lo >= end:
                continue
            if lo > cursor:
                yield cursor, offset + cursor - vaddr, lo - cursor
            cursor = max(cursor, hi)
        if cursor < end:
            yield cursor, offset + cursor - vaddr, end - cursor


# ------------------------------------------------------------- x86-64 analysis

_BP_NAMES = frozenset({"rbp", "ebp", "bp", "bpl"})
_READ_ONLY = frozenset({"cmp", "test", "bt", "push", "call", "jmp"})
_ENDS_PATH = frozenset({"ret", "retf", "iretq", "hlt", "ud2", "ud1", "int3"})
_PADDING = frozenset({"nop", "int3"})  # between functions: never a function start
_ZEROS = ("add", "byte ptr [rax], al")  # 00 00: zero fill between sections, not code
_MEM = re.compile(r"\[(rsp|rbp)(?: ([+-]) (0x[0-9a-f]+|\d+))?\]$")


def _number(text: str) -> int | None:
    try:
        return int(text, 0)
    except ValueError:
        return None


def _lea_offset(ops: str) -> tuple[str, int] | None:
    """(base register, displacement) of `lea X, [rsp|rbp +- N]`."""
    found = _MEM.search(ops)
    if found is None:
        return None
    disp = int(found.group(3), 0) if found.group(3) else 0
    return found.group(1), -disp if found.group(2) == "-" else disp


def _step(insn: _Insn, st: _State) -> _State:
    """The state after one instruction that falls through."""
    m, ops = insn.mnemonic, insn.ops
    dest = ops.split(",", 1)[0].strip()
    sp, fp, saved = st.sp_off, st.fp_off, st.fp_saved
    if m in ("push", "pushfq"):
        sp = None if sp is None else sp + 8
        if ops == "rbp" and saved is None and sp is not None:
            saved = -sp
        return st._replace(sp_off=sp, fp_saved=saved)
    if m in ("pop", "popfq"):
        if ops == "rbp":
            if saved is not None and sp is not None and saved == -sp:
                saved = None
            fp = None
        return _State(None if sp is None else sp - 8, fp, saved, st.stop)
    if m == "leave":
        if fp is None:
            return _LOST._replace(stop=st.stop)
        return _State(fp - 8, None, None if saved == -fp else saved, st.stop)
    if dest == "rsp" and m not in _READ_ONLY:
        return st._replace(sp_off=_rsp_write(m, ops, sp, fp))
    if dest in _BP_NAMES and m not in _READ_ONLY:
        if m == "xor" and ops in ("ebp, ebp", "rbp, rbp") and saved is None and fp is None:
            return st._replace(stop=True)  # the psABI's outermost-frame marker
        if m == "mov" and ops == "rbp, rsp":
            return st._replace(fp_off=sp)
        if m == "lea" and ops.startswith("rbp, "):
            found = _lea_offset(ops)
            if found is not None and found[0] == "rsp" and sp is not None:
                return st._replace(fp_off=sp - found[1])
        return st._replace(fp_off=None)
    return st


def _rsp_write(m: str, ops: str, sp: int | None, fp: int | None) -> int | None:
    """CFA - SP after an instruction that writes %rsp (None: unknown)."""
    src = ops.split(",", 1)[1].strip() if "," in ops else ""
    value = _number(src)
    if m == "sub" and value is not None:
        return None if sp is None else sp + value
    if m == "add" and value is not None:
        return None if sp is None else sp - value
    if m == "mov" and src == "rbp":
        return fp
    if m == "lea":
        found = _lea_offset(ops)
        if found is not None:
            base, disp = found
            if base == "rsp":
                return None if sp is None else sp - disp
            return None if fp is None else fp - disp
    return None


def _branch(insn: _Insn) -> tuple[int | None, bool]:
    """(direct branch target, whether execution can fall through) of an instruction."""
    m = insn.mnemonic
    if m in _ENDS_PATH:
        return None, False
    if m == "jmp":
        return _number(insn.ops), False
    if m.startswith("j") or m.startswith("loop"):
        return _number(insn.ops), True
    return None, True


class _X86Walker:
    """The data-flow walk over one gap's instructions."""

    def __init__(self, insns: list[_Insn]) -> None:
        self.insns = insns
        self.index = {insn.addr: i for i, insn in enumerate(insns)}
        self.addrs = [insn.addr for insn in insns]
        self.states: dict[int, _State] = {}
        self._table_jumps: dict[tuple[int, int], _State | None] = {}

    def table_jump(self, lo: int, hi: int) -> _State | None:
        """The state at the first indirect jump walked in [lo, hi) (a jump table's),
        remembered per range."""
        key = (lo, hi)
        if key not in self._table_jumps:
            found = None
            first = bisect_right(self.addrs, lo - 1)
            for insn in self.insns[first:bisect_right(self.addrs, hi - 1)]:
                if insn.mnemonic == "jmp" and _number(insn.ops) is None \
                        and insn.addr in self.states:
                    found = self.states[insn.addr]
                    break
            self._table_jumps[key] = found
        return self._table_jumps[key]

    def _noreturn_call(self, i: int) -> bool:
        """A call followed by padding: the callee does not return (GCC puts nothing
        after such a call), and what follows the padding is another function."""
        nxt = i + 1
        return (self.insns[i].mnemonic == "call" and nxt < len(self.insns)
                and self.insns[nxt].mnemonic in _PADDING)

    def walk(self, entry: int, state: _State, lo: int, hi: int) -> int:
        """Visit what is reachable from entry within [lo, hi); the end of the
        last instruction visited."""
        last = entry
        work = [(entry, state)]
        while work:
            addr, st = work.pop()
            while lo <= addr < hi and addr not in self.states:
                i = self.index.get(addr)
                if i is None:
                    break  # inside an instruction, or bytes that do not decode
                insn = self.insns[i]
                self.states[addr] = st
                last = max(last, addr + insn.size)
                target, falls = _branch(insn)
                nxt = _step(insn, st)
                if target is not None and lo <= target < hi:
                    work.append((target, nxt))
                if not falls or self._noreturn_call(i):
                    break
                addr, st = addr + insn.size, nxt
        return last


@lru_cache(maxsize=1)
def _x86_disassembler() -> Any:
    import capstone

    return capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)


def _decode_x86(data: bytes, vaddr: int) -> list[_Insn]:
    md = _x86_disassembler()
    insns: list[_Insn] = []
    pos = 0
    while pos < len(data):
        before = len(insns)
        for addr, size, mnemonic, ops in md.disasm_lite(data[pos:], vaddr + pos):
            if (mnemonic, ops) == _ZEROS:
                mnemonic = "int3"  # padding, as far as the walk is concerned
            insns.append(_Insn(addr, size, mnemonic, ops))
        if len(insns) > before:
            last = insns[-1]
            pos = last.addr + last.size - vaddr
        pos += 1 if len(insns) == before or pos < len(data) else 0
    return insns


def _x86_pieces(data: bytes, vaddr: int, sized: dict[int, int],
                ) -> tuple[list[tuple[int, int, UnwindRule]], list[tuple[int, int]]]:
    """Rules of one gap's instructions and the ranges of the functions found.
    sized: the function symbols in the gap, {start: size (0 if unknown)}."""
    insns = _decode_x86(data, vaddr)
    end = vaddr + len(data)
    entries = {vaddr, *sized}
    for insn in insns:
        if insn.mnemonic == "call":
            target = _number(insn.ops)
            if target is not None and vaddr <= target < end:
                entries.add(target)
    walker = _X86Walker(insns)
    padding = {insn.addr for insn in insns if insn.mnemonic in _PADDING}
    starts = sorted(e for e in entries if e in walker.index and e not in padding)

    def bound(addr: int) -> int:
        """Where a walk from addr ends: the next entry point (or the gap's end)."""
        i = bisect_right(starts, addr)
        return starts[i] if i < len(starts) else end

    functions = []
    for entry in starts:
        if entry not in walker.states:
            hi = min(bound(entry), entry + sized[entry]) if sized.get(entry) else bound(entry)
            functions.append((entry, walker.walk(entry, _ENTRY, entry, hi)))
    # Code no walk reached. Inside a sized function symbol that jumps through a
    # table, it is a case of that table and inherits the indirect jump's state;
    # anything else starts a function of its own.
    symbol_starts = sorted(a for a, size in sized.items() if size)
    for insn in insns:
        if insn.addr in walker.states or insn.mnemonic in _PADDING:
            continue
        state, hi = _ENTRY, bound(insn.addr)
        i = bisect_right(symbol_starts, insn.addr) - 1
        if i >= 0 and insn.addr < symbol_starts[i] + sized[symbol_starts[i]]:
            owner = symbol_starts[i]
            jump = walker.table_jump(owner, owner + sized[owner])
            if jump is not None:
                state, hi = jump, min(hi, owner + sized[owner])
        functions.append((insn.addr, walker.walk(insn.addr, state, insn.addr, hi)))
    pieces: list[tuple[int, int, UnwindRule]] = []
    rule_of: dict[_State, UnwindRule | None] = {}  # one rule object per distinct state
    for insn in insns:
        known = walker.states.get(insn.addr)
        if known is None:
            continue
        if known in rule_of:
            rule = rule_of[known]
        else:
            rule = rule_of[known] = known.rule()
        if rule is None:
            continue
        if pieces and pieces[-1][1] == insn.addr and pieces[-1][2] is rule:
            pieces[-1] = (pieces[-1][0], insn.addr + insn.size, rule)
        else:
            pieces.append((insn.addr, insn.addr + insn.size, rule))
    return pieces, sorted(functions)


# ---------------------------------------------------------------- trampolines


def _trampolines(data: bytes, vaddr: int, arch: str) -> Iterator[tuple[int, int]]:
    """[start, end) of each trampoline, from the byte before it when that byte is
    in the same gap (a return address minus one points there)."""
    for start, end in sigreturn_offsets(data, arch):
        yield vaddr + max(start - 1, 0), vaddr + end


# -------------------------------------------------------------------- merging


def overlay(base: list[tuple[int, UnwindRule]],
            pieces: list[tuple[int, int, UnwindRule]]) -> list[tuple[int, UnwindRule]]:
    """Sorted deltas with pieces (sorted, disjoint) written over base; the rule of
    base resumes after each piece. Before base's first delta the rule is
    FRAME_POINTER_RULE, as the unwinder's tables have it."""
    addrs = [a for a, _ in base]
    out: list[tuple[int, UnwindRule]] = []

    def emit(addr: int, rule: UnwindRule) -> None:
        if out and out[-1][0] == addr:
            out.pop()
        if not out or out[-1][1] != rule:
            out.append((addr, rule))

    bi = 0
    for start, end, rule in pieces:
        while bi < len(base) and base[bi][0] < start:
            emit(*base[bi])
            bi += 1
        emit(start, rule)
        at = bisect_right(addrs, end) - 1
        after = base[at][1] if at >= 0 else FRAME_POINTER_RULE
        while bi < len(base) and base[bi][0] <= end:
            bi += 1
        emit(end, after)
    for item in base[bi:]:
        emit(*item)
    return out


def _by_priority(pieces: list[tuple[int, int, UnwindRule]],
                 over: list[tuple[int, int, UnwindRule]]) -> list[tuple[int, int, UnwindRule]]:
    """pieces with the (few) pieces of over cut out of them and added."""
    result = []
    for start, end, rule in pieces:
        cuts = sorted((lo, hi) for lo, hi, _ in over if lo < end and hi > start)
        cursor = start
        for lo, hi in cuts:
            if lo > cursor:
                result.append((cursor, lo, rule))
            cursor = max(cursor, hi)
        if cursor < end:
            result.append((cursor, end, rule))
    return sorted(result + over)


# ---------------------------------------------------------------------- entry


def synthesize(path: str | os.PathLike[str], data: ModuleUnwindData) -> ModuleUnwindData:
    """data with rules synthesized for the code that no FDE covers."""
    try:
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            if elf.ident_problem(mm[:elf.EHDR_SIZE]):
                return data
            code = _code_ranges(mm)
            gaps = list(_gaps(code, data.fde_ranges))
            if sum(size for _, _, size in gaps) > MAX_SYNTHESIZED_BYTES:
                log.info("%s: %d bytes of code without CFI: not synthesizing", path,
                         sum(size for _, _, size in gaps))
                return data
            symbols = (function_symbols(lambda o, n: mm[o:o + n] if o + n <= len(mm) else None)
                       if data.machine == AMD64 and gaps else {})
            pieces: list[tuple[int, int, UnwindRule]] = []
            trampolines: list[tuple[int, int, UnwindRule]] = []
            functions: list[tuple[int, int]] = []
            symbol_addrs = sorted(symbols)
            for vaddr, offset, size in gaps:
                chunk = bytes(mm[offset:offset + size])
                trampolines += [(lo, hi, _SIGNAL_RULE)
                                for lo, hi in _trampolines(chunk, vaddr, data.machine)]
                if data.machine == AMD64:
                    first = bisect_right(symbol_addrs, vaddr - 1)
                    last = bisect_right(symbol_addrs, vaddr + size - 1)
                    sized = {a: symbols[a][1] for a in symbol_addrs[first:last]}
                    found, ranges = _x86_pieces(chunk, vaddr, sized)
                    pieces += found
                    functions += ranges
    except (OSError, ValueError):
        return data
    if not pieces and not trampolines:
        return data
    merged = _by_priority(pieces, sorted(trampolines))
    functions += [(lo, hi) for lo, hi, _ in trampolines]
    return replace(data, deltas=overlay(data.deltas, merged),
                   synthesized=sorted(set(functions)))


__all__ = ["MAX_SYNTHESIZED_BYTES", "overlay", "synthesize"]
