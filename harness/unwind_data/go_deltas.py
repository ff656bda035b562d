"""Stack deltas of Go code, from the pcsp tables of .gopclntab (pclntab.py).

Go functions have no CFI in `.eh_frame`; the pcsp table says, per PC range,
how many bytes the function has pushed below its frame's top. That is all an
SP-based rule needs:

- amd64: CFA = SP + delta + 8, the return address at CFA - 8 (the CALL's
  push). A function with a frame saves the caller's BP at CFA - 16 with the
  instruction right after its `SUBQ $n, SP`; from there on (while the delta is
  at least the frame's size) the rule says so.
- arm64: CFA = SP + delta. A function with a frame stores the return address
  (LR) at its new SP with the same instruction that allocates the frame
  (`MOVD.W R30, -n(RSP)`), so at CFA - delta; the caller's FP goes below it at
  CFA - delta - 8 with the next instruction. Where the delta is 0 (leaf
  functions, the entry of every function) the return address is still in LR.

Where Go's stack switches make a return address lead to another stack, the
function gets a rule of its own (see `_SPECIAL`): the roots of goroutine and
thread stacks stop the walk, the kernel's return into Go's signal trampoline
is a signal frame, `asmcgocall` (Go calling C on the system stack) is followed
back to the goroutine stack on amd64, the vDSO calls (`nanotime1`, `walltime`,
`time.now`) are followed from the top frame through the register that holds
their SP while SP is on g0, and `systemstack` on the g0 stack (or a vDSO call
below the vDSO's own frame) ends the walk with an error frame (following it
needs the goroutine pointer from thread-local storage).
"""

from __future__ import annotations

import mmap
import os
from itertools import pairwise

from ..arch import AMD64, ARM64
from ..core import elf
from .deltas import _clip, _Coverage, _make_rule
from .model import (
    _SIGNAL_RULE,
    _STOP_RULE,
    CFA_GO_ASMCGOCALL,
    CFA_GO_SAVED_SP,
    CFA_GO_STACK_SWITCH,
    CFA_SP,
    UnwindRule,
)
from .pclntab import GoFunc, Pclntab, PclntabError, read_pclntab

__all__ = ["GO_STOP_FUNCTIONS", "claim_go_functions", "go_pieces"]

Piece = tuple[int, int, UnwindRule]

# The outermost frames of Go stacks: every goroutine returns into goexit, every
# thread starts in mstart (the main thread's g0 in rt0_go), and mcall/morestack
# run their callee on g0 for a goroutine that is not resumed from there (Go's
# own traceback stops at these too: runtime/traceback.go, topofstack).
GO_STOP_FUNCTIONS = frozenset({"runtime.goexit", "runtime.mstart", "runtime.rt0_go",
                               "runtime.mcall", "runtime.morestack",
                               "runtime.morestack_noctxt"})
# The return address the kernel leaves for Go's signal handler (sa_restorer).
GO_SIGNAL_RETURN = frozenset({"runtime.sigreturn", "runtime.sigreturn__sigaction"})
GO_SYSTEM_STACK = "runtime.systemstack"
# Calls into the vDSO move SP to the g0 stack and keep the old SP in R12, which
# the unwinder does not carry (runtime/sys_linux_amd64.s, nanotime1): a caller
# frame here ends the walk with the error frame, as systemstack does.
GO_VDSO_CALLS = frozenset({"runtime.nanotime1", "runtime.walltime", "runtime.walltime1",
                           "time.now"})
# The scheduler's jump onto a goroutine's stack (JMP, never a caller): past its SP
# switch nothing relates SP to a frame.
GO_GOGO = frozenset({"gogo", "runtime.gogo"})
GO_ASMCGOCALL = "runtime.asmcgocall"
GO_SYSTEM_STACK_SWITCH = "runtime.systemstack_switch"
_INT3 = b"\xcc"

_AMD64_PUSH_RBP = b"\x55"
_AMD64_STORE_BP0 = bytes.fromhex("48892c24")  # mov %rbp, (%rsp)
_AMD64_STORE_BP8 = bytes.fromhex("48896c24")  # mov %rbp, disp8(%rsp)
_AMD64_STORE_BP32 = bytes.fromhex("4889ac24")  # mov %rbp, disp32(%rsp)
_ARM64_STORE_FP = bytes.fromhex("fd831ff8")  # stur x29, [sp, #-8]
_ARM64_STP_X20 = bytes.fromhex("9dfa3fa9")  # stp x29, x30, [x20, #-8]
_ARM64_MOV_SP_X20 = bytes.fromhex("9f020091")  # mov sp, x20


def _rule(cfa_op: int, cfa_param: int, fp_offset: int, ra_offset: int) -> UnwindRule:
    return _make_rule(cfa_op, cfa_param, fp_offset, ra_offset, 0)  # interned: few distinct


class _Code:
    """Instruction bytes of the file by virtual address (its PT_LOAD segments)."""

    def __init__(self, mm: mmap.mmap) -> None:
        self.mm = mm
        ehdr = elf.Ehdr.parse(mm[:elf.EHDR_SIZE])
        self.loads = [p for p in elf.program_headers(mm, ehdr) if p.type == 1]

    def read(self, vaddr: int, size: int) -> bytes:
        for p in self.loads:
            if p.vaddr <= vaddr and vaddr + size <= p.vaddr + p.filesz:
                start = p.offset + vaddr - p.vaddr
                return bytes(self.mm[start:start + size])
        return b""


def _saves_fp(code: _Code, machine: str, at: int, delta: int) -> int:
    """Length of the instruction at `at` if it saves the caller's frame pointer
    into a frame of `delta` bytes (the instruction after the frame's allocation),
    -1 if it was saved before (amd64: the allocation was `PUSHQ BP` itself, in
    assembly such as asyncPreempt; arm64: a large frame, built in x20 by
    `stp x29, x30, [x20, #-8]; mov sp, x20`), else 0."""
    insn = code.read(at, 8)
    if machine == AMD64 and delta == 8 and code.read(at - 1, 1) == _AMD64_PUSH_RBP:
        return -1  # PUSHQ BP was the allocation itself: saved from `at` on
    if machine == AMD64:
        if insn[:4] == _AMD64_STORE_BP0 and delta == 8:
            return 4
        if insn[:4] == _AMD64_STORE_BP8 and len(insn) >= 5 and insn[4] == delta - 8:
            return 5
        if insn[:4] == _AMD64_STORE_BP32 and int.from_bytes(insn[4:8], "little") == delta - 8:
            return 8
        return 0
    if insn[:4] == _ARM64_STORE_FP:
        return 4
    # a large frame is built in x20 and stored before SP moves: saved from `at` on
    return -1 if code.read(at - 8, 8) == _ARM64_STP_X20 + _ARM64_MOV_SP_X20 else 0


def _function_pieces(table: Pclntab, func_index: int, code: _Code, machine: str) -> list[Piece]:
    func = table.functions[func_index]
    runs = list(table.pcvalues(func, func.pcsp))
    frame = next((value for _, _, value in runs if value > 0), 0)
    fp_from = None  # where the caller's FP is saved in the frame from on
    if frame:
        start = next(s for s, _, value in runs if value == frame)
        size = _saves_fp(code, machine, start, frame)
        if size:
            fp_from = start + max(size, 0)
    pieces: list[Piece] = []
    for start, end, delta in runs:
        if delta < 0:
            raise PclntabError(f"{table.name(func)} has a negative stack delta")
        saved = fp_from is not None and delta >= frame
        at = fp_from if fp_from is not None else start
        if machine == AMD64:
            rule = _rule(CFA_SP, delta + 8, -16 if saved else 0, -8)
        else:
            rule = (_rule(CFA_SP, delta, -delta - 8 if saved else 0, -delta) if delta
                    else _rule(CFA_SP, 0, 0, 0))
        if saved and start < at < end:  # the frame's first instruction: not yet
            unsaved = _rule(rule.cfa_op, rule.cfa_param, 0, rule.ra_offset)
            pieces += [(start, at, unsaved), (at, end, rule)]
        else:
            pieces.append((start, end, rule))
    return pieces


def _special_rule(name: str, machine: str, code: _Code, func: GoFunc) -> UnwindRule | None:
    if name in GO_STOP_FUNCTIONS:
        return _STOP_RULE
    if name in GO_SIGNAL_RETURN:
        return _SIGNAL_RULE
    if name == GO_SYSTEM_STACK or name in GO_GOGO:
        return _rule(CFA_GO_STACK_SWITCH, 0, 0, 0)
    if name == GO_ASMCGOCALL:
        slots = _asmcgocall_slots(code, func) if machine == AMD64 else None
        if slots is None:
            return _rule(CFA_GO_STACK_SWITCH, 0, 0, 0)
        g_slot, depth_slot = slots
        return UnwindRule(CFA_GO_ASMCGOCALL, depth_slot, ra_offset=-8, aux=g_slot)
    return None


_AMD64_ALIGN_SP = bytes.fromhex("4883e4f0")  # and $-16, %rsp
_AMD64_STORE_RDI = bytes.fromhex("48897c24")  # mov %rdi, disp8(%rsp)
_AMD64_STORE_RDI_0 = bytes.fromhex("48893c24")  # mov %rdi, (%rsp)


def _asmcgocall_slots(code: _Code, func: GoFunc) -> tuple[int, int] | None:
    """Where asmcgocall keeps the goroutine's g and its stack depth on the system
    stack, from its code: the first two stores of rdi to the stack after it
    aligns SP for C (`MOVQ DI, n(SP)`: 48(SP) and 40(SP) in Go 1.19, 8(SP) and
    0(SP) in later versions). None if the code has another shape."""
    body = code.read(func.entry, func.end - func.entry)
    at = body.find(_AMD64_ALIGN_SP)
    if at < 0:
        return None
    slots: list[int] = []
    pos = at + len(_AMD64_ALIGN_SP)
    while len(slots) < 2 and pos < len(body):
        if body[pos:pos + 4] == _AMD64_STORE_RDI_0:
            slots.append(0)
            pos += 4
        elif body[pos:pos + 4] == _AMD64_STORE_RDI and pos + 4 < len(body) \
                and body[pos + 4] < 0x80:
            slots.append(body[pos + 4])
            pos += 5
        else:
            pos += 1
    return (slots[0], slots[1]) if len(slots) == 2 else None


# Go's vDSO calls save SP in a callee-saved register, move SP to g0 (or align it),
# call the vDSO and move it back: `MOVQ SP, R12` ... `MOVQ R12, SP` on amd64,
# `MOVD RSP, R20` ... `MOVD R20, RSP` on arm64 (runtime/sys_linux_*.s).
_SAVE_SP = {AMD64: bytes.fromhex("4989e4"), ARM64: bytes.fromhex("f4030091")}
_RESTORE_SP = {AMD64: bytes.fromhex("4c89e4"), ARM64: _ARM64_MOV_SP_X20}


_RET = {AMD64: b"\xc3", ARM64: bytes.fromhex("c0035fd6")}


def _vdso_call_pieces(pieces: list[Piece], code: _Code, func: GoFunc,
                      machine: str) -> list[Piece]:
    """A vDSO call's pieces with CFA_GO_SAVED_SP where the register holds the frame's
    SP and SP itself may be on g0: from after the SP save through the SP restore,
    and again after the return that follows it (the fallback system call is
    placed there, and jumps back). If the code has another shape, the whole
    function ends the walk (CFA_GO_STACK_SWITCH)."""
    body = code.read(func.entry, func.end - func.entry)
    save = body.find(_SAVE_SP[machine])
    restore = body.find(_RESTORE_SP[machine], max(save, 0))
    ret = body.find(_RET[machine], max(restore, 0))
    step = 1 if machine == AMD64 else 4
    while ret >= 0 and ret % step:  # arm64: only an aligned instruction
        ret = body.find(_RET[machine], ret + 1)
    if save < 0 or restore < 0 or ret < 0:
        return [(func.entry, func.end, _rule(CFA_GO_STACK_SWITCH, 0, 0, 0))]
    switched = [(func.entry + save + len(_SAVE_SP[machine]), func.entry + restore + 1),
                (func.entry + ret + len(_RET[machine]), func.end)]
    out: list[Piece] = []
    for lo, hi, rule in pieces:
        cuts = sorted({lo, hi, *(b for r in switched for b in r if lo < b < hi)})
        for a, b in pairwise(cuts):
            inside = any(s0 <= a and b <= s1 for s0, s1 in switched)
            out.append((a, b, UnwindRule(CFA_GO_SAVED_SP, rule.cfa_param,
                                         fp_offset=rule.fp_offset, ra_offset=rule.ra_offset)
                        if inside else rule))
    return out


def _is_assembly(table: Pclntab, func: GoFunc) -> bool:
    """Whether a function is written in assembly (runtime/*.s). The stack-switching
    functions are; Go 1.17+ adds an ABI wrapper of the same name for some of them
    (file `<autogenerated>`), an ordinary function with an ordinary frame."""
    try:
        index = table.value_at(func, func.pcfile, func.entry)
        return index is not None and table.file_name(func, index).endswith(".s")
    except PclntabError:
        return False


def go_pieces(path: str | os.PathLike[str],
              machine: str) -> list[tuple[int, int, list[Piece]]] | None:
    """(entry, end, its (start, end, rule) pieces) of every Go function of an ELF
    file; None if the file has no .gopclntab. A function whose table is broken gets
    no pieces (it is then walked by frame pointers), as a bad FDE is skipped."""
    if machine not in (AMD64, ARM64):
        return None
    table = read_pclntab(path)
    if table is None:
        return None
    functions: list[tuple[int, int, list[Piece]]] = []
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        code = _Code(mm)
        for i, func in enumerate(table.functions):
            if func.end <= func.entry or func.pcsp == 0:
                # no pcsp table: C code an internal cgo link lists too; no deltas and
                # no bounds from here (frame pointers, as for code without CFI)
                continue
            special = (_special_rule(table.name(func), machine, code, func)
                       if _is_assembly(table, func) else None)
            if special is not None:
                functions.append((func.entry, func.end, [(func.entry, func.end, special)]))
                continue
            try:
                pieces = _function_pieces(table, i, code, machine)
                if table.name(func) in GO_VDSO_CALLS and _is_assembly(table, func):
                    pieces = _vdso_call_pieces(pieces, code, func, machine)
                functions.append((func.entry, func.end, pieces))
            except PclntabError:
                functions.append((func.entry, func.end, []))
            if table.name(func) == GO_SYSTEM_STACK_SWITCH and i > 0 and len(functions) > 1:
                prev = table.functions[i - 1]
                _lead_into(functions, code, list(table.pcvalues(prev, prev.pcsp)))
    return functions


def _lead_into(functions: list[tuple[int, int, list[Piece]]], code: _Code,
               prev_code: list[tuple[int, int, int]]) -> None:
    """Give the last function the padding byte before it as well.

    Go 1.19's amd64 runtime.systemstack_switch is a lone RET, and the goroutine's
    saved PC (g.sched.pc, which cgocallback pushes as its return address) is its
    entry, not an address after a call; the unwinder looks a return address up
    at minus one, which is the previous function's int3 padding (past the end of
    its pcsp table, `prev_code`). Later versions point after an instruction of
    systemstack_switch, and then nothing changes."""
    entry, end, pieces = functions[-1]
    prev_entry, prev_end, prev_pieces = functions[-2]
    if prev_end != entry or code.read(entry - 1, 1) != _INT3 \
            or any(start < entry - 1 < stop for start, stop, _ in prev_code):
        return
    functions[-2] = (prev_entry, entry - 1,
                     [(start, min(stop, entry - 1), rule) for start, stop, rule in prev_pieces
                      if start < entry - 1])
    first = pieces[0][2] if pieces else _rule(CFA_SP, 8, 0, -8)
    functions[-1] = (entry - 1, end, [(entry - 1, entry, first), *pieces])


def claim_go_functions(path: str | os.PathLike[str], machine: str, coverage: _Coverage,
                       segments: list[Piece], sources: list[str],
                       fde_ranges: list[tuple[int, int]]) -> int:
    """Add the Go functions' pieces to a decoder's (both decoders call this between
    .eh_frame and .debug_frame): where an FDE already covers code (the C parts of a
    cgo binary) it wins; Go's own .debug_frame comes after, so a stripped build
    and its unstripped twin get the same deltas. Returns the functions added."""
    found = go_pieces(path, machine)
    if found is None:
        return 0
    sources.append(".gopclntab")
    for start, end, pieces in found:
        fde_ranges.append((start, end))
        free = coverage.claim(start, end)
        if free:
            segments.extend(_clip(pieces, free))
    return len(found)
