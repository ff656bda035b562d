"""What both CFI decoders share: per-machine conventions, the translation of a
row into the unwinder's rule set, and merging FDE pieces into sorted deltas.
No decoder library here: eh_frame.py (direct) and cfi.py (pyelftools) use it."""

from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass
from functools import lru_cache

from ..arch import AMD64, ARCHES, Arch
from .model import (
    _INVALID_RULE,
    _STOP_RULE,
    CFA_DEREF_FP,
    CFA_FP,
    CFA_PLT,
    CFA_SP,
    FP_AT_FP,
    FRAME_POINTER_RULE,
    UnwindRule,
)

# Register rule kinds of a CFI row (DWARF 6.4.1), as both decoders hand them over.
UNDEFINED, SAME_VALUE, OFFSET, VAL_OFFSET, REGISTER, EXPRESSION, VAL_EXPRESSION = range(7)
RegRule = tuple[int, object]  # (kind, offset, register or expression bytes)

_DWARF_RDI = 5  # x86_64 DWARF register numbers (System V psABI)
_DWARF_X30 = 30  # AArch64 DWARF register numbers (the link register)


@dataclass(frozen=True)
class _Arch:
    """DWARF register numbering and conventions of one machine."""

    name: str
    sp: int
    fp: int
    default_ra_offset: int  # RA location when the RA column has no rule
    plt_expressions: bool  # whether to recognise the x86_64 PLT CFA expression
    # The register the unwinder has as its top frame's "link register": where
    # DW_CFA_register may put the return address (arm64 x30; x86_64 rdi, which
    # glibc's vfork pops the return address into across the system call).
    ra_register: int

    @classmethod
    def of(cls, arch: Arch) -> _Arch:
        # binutils describes x86_64 .plt entries with one CFA expression (see below)
        return cls(arch.name, arch.dwarf_sp, arch.dwarf_fp, arch.entry_ra_offset,
                   plt_expressions=arch.name == AMD64,
                   ra_register=_DWARF_RDI if arch.name == AMD64 else _DWARF_X30)


_ARCHES = {a.elf_machine_name: _Arch.of(a) for a in ARCHES.values()}
_ARCHES_BY_NUMBER = {a.elf_machine: _Arch.of(a) for a in ARCHES.values()}


def _is_code(start: int, end: int, code: list[tuple[int, int]]) -> bool:
    """Whether an FDE range is plausible: non-empty and, if we know where the code is,
    inside it. Linkers leave FDEs of discarded sections in .debug_frame with a
    tombstone address (0 for GNU ld, -1 for lld); they must not shadow real code."""
    if end <= start or start == 0:
        return False
    return not code or any(lo <= start and end <= hi for lo, hi in code)


@lru_cache(maxsize=4096)
def _make_rule(cfa_op: int, cfa_param: int, fp_offset: int, ra_offset: int, aux: int) -> UnwindRule:
    """Interned rules: a module has only a few hundred distinct ones, and sharing them
    makes the per-row work and the later merging cheap."""
    return UnwindRule(cfa_op, cfa_param, fp_offset=fp_offset, ra_offset=ra_offset, aux=aux)


# DW_OP_breg7 <off>; DW_OP_breg16 0; DW_OP_lit15; DW_OP_and; DW_OP_lit<N>; DW_OP_ge;
# DW_OP_lit3; DW_OP_shl; DW_OP_plus  -- what binutils emits for x86_64 .plt entries.
_DW_OP_BREG7 = 0x77
_PLT_MIDDLE = bytes([0x80, 0x00, 0x3F, 0x1A])
_PLT_TAIL = bytes([0x2A, 0x33, 0x24, 0x22])
_DW_OP_LIT0, _DW_OP_LIT31 = 0x30, 0x4F


def _match_plt_expression(expr: list[int]) -> tuple[int, int] | None:
    """(cfa_param, threshold) if expr is the x86_64 PLT CFA expression, else None."""
    code = bytes(expr)
    # breg7's operand is an SLEB128; accept the one-byte, non-negative forms (0..63).
    if len(code) != 11 or code[0] != _DW_OP_BREG7 or code[1] > 0x3F:
        return None
    if code[2:6] != _PLT_MIDDLE or code[7:] != _PLT_TAIL:
        return None
    if not _DW_OP_LIT0 <= code[6] <= _DW_OP_LIT31:
        return None
    return code[1], code[6] - _DW_OP_LIT0


class _Coverage:
    """Disjoint, sorted half-open address intervals already claimed by earlier FDEs;
    implements "first FDE wins" for overlaps in any order."""

    def __init__(self) -> None:
        self._starts: list[int] = []
        self._ends: list[int] = []

    def claim(self, start: int, end: int) -> list[tuple[int, int]]:
        """Claim [start, end) and return the parts of it that were still free."""
        first = bisect_right(self._ends, start)  # first interval ending after start
        free = []
        cursor = start
        last = first
        while last < len(self._starts) and self._starts[last] < end:
            if self._starts[last] > cursor:
                free.append((cursor, self._starts[last]))
            cursor = max(cursor, self._ends[last])
            last += 1
        if cursor < end:
            free.append((cursor, end))
        if last > first:
            start = min(start, self._starts[first])
            end = max(end, self._ends[last - 1])
        self._starts[first:last] = [start]
        self._ends[first:last] = [end]
        return free


def _clip(
    pieces: list[tuple[int, int, UnwindRule]], free: list[tuple[int, int]]
) -> list[tuple[int, int, UnwindRule]]:
    """Restrict an FDE's pieces to the free parts of its range."""
    if len(free) == 1 and pieces and free[0] == (pieces[0][0], pieces[-1][1]):
        return pieces  # common case: no overlap
    clipped = []
    for lo, hi in free:
        for start, end, rule in pieces:
            start, end = max(start, lo), min(end, hi)
            if start < end:
                clipped.append((start, end, rule))
    return clipped


def _build_deltas(segments: list[tuple[int, int, UnwindRule]]) -> list[tuple[int, UnwindRule]]:
    """Turn disjoint (start, end, rule) pieces into the sorted delta list, filling gaps
    with FRAME_POINTER_RULE and merging runs of equal rules."""
    segments.sort(key=lambda seg: seg[0])
    deltas: list[tuple[int, UnwindRule]] = []

    def emit(addr: int, rule: UnwindRule) -> None:
        if not deltas or deltas[-1][1] != rule:
            deltas.append((addr, rule))

    prev_end: int | None = None
    for start, end, rule in segments:
        if prev_end is not None and start != prev_end:
            emit(prev_end, FRAME_POINTER_RULE)
        emit(start, rule)
        prev_end = end
    if prev_end is not None:
        emit(prev_end, FRAME_POINTER_RULE)
    return deltas


_DW_OP_BREG0 = 0x70
_DW_OP_DEREF = 0x06


def read_leb128(data: bytes, pos: int, signed: bool) -> tuple[int, int] | None:
    """(value, position after it) of the (U|S)LEB128 at data[pos]; None if it runs
    past the end."""
    result = shift = 0
    while pos < len(data):
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            if signed and byte & 0x40:
                result -= 1 << shift
            return result, pos
    return None


def _match_breg(expr: list[int] | bytes, reg: int) -> int | None:
    """N if expr is exactly `DW_OP_breg<reg> N` (an address FP-relative), else None."""
    code = bytes(expr)
    if not code or code[0] != _DW_OP_BREG0 + reg or reg > 31:
        return None
    found = read_leb128(code, 1, signed=True)
    return found[0] if found is not None and found[1] == len(code) else None


def _match_deref_fp(expr: list[int] | bytes, fp: int) -> int | None:
    """N if expr is `DW_OP_breg<fp> N; DW_OP_deref`: GCC's CFA for a function that
    realigned its stack through a DRAP register (CFA = *(FP + N))."""
    code = bytes(expr)
    if len(code) < 3 or code[-1] != _DW_OP_DEREF:
        return None
    return _match_breg(code[:-1], fp)


def row_rule(cfa: tuple[int | None, int, bytes | list[int] | None], ra: RegRule | None,
             fp: RegRule | None, arch: _Arch) -> UnwindRule:
    """One CFI row in the unwinder's restricted rule set: the CFA as (register,
    offset, expression or None), the return-address and frame-pointer columns as
    (kind, argument) or None. What the unwinder cannot follow is CFA_INVALID."""
    if ra is not None and ra[0] == UNDEFINED:
        return _STOP_RULE
    reg, offset, expr = cfa
    aux = 0
    if expr is not None:
        plt = _match_plt_expression(list(expr)) if arch.plt_expressions else None
        deref = _match_deref_fp(expr, arch.fp) if plt is None else None
        if plt is not None:
            cfa_op, (cfa_param, aux) = CFA_PLT, plt
        elif deref is not None:
            cfa_op, cfa_param = CFA_DEREF_FP, deref
        else:
            return _INVALID_RULE
    elif reg == arch.sp:
        cfa_op, cfa_param = CFA_SP, offset
    elif reg == arch.fp:
        cfa_op, cfa_param = CFA_FP, offset
    else:
        return _INVALID_RULE

    if ra is None or ra[0] == SAME_VALUE:
        ra_offset = arch.default_ra_offset
    elif ra[0] == OFFSET and ra[1] != 0:
        ra_offset = int(ra[1])  # type: ignore[call-overload]  # 0: "in the link register"
    elif ra[0] == REGISTER and ra[1] == arch.ra_register:
        ra_offset = 0  # in the register the unwinder holds as the top frame's LR
    else:
        return _INVALID_RULE

    fp_offset = 0
    if fp is not None and fp[0] == OFFSET:
        if fp[1] == 0:
            return _INVALID_RULE  # would read as "not saved"
        fp_offset = int(fp[1])  # type: ignore[call-overload]
    elif fp is not None and fp[0] == EXPRESSION and cfa_op == CFA_DEREF_FP:
        at = _match_breg(fp[1], arch.fp)  # type: ignore[arg-type]  # DRAP: FP + N
        if at is None:
            return _INVALID_RULE
        fp_offset, aux = at, FP_AT_FP
    return _make_rule(cfa_op, cfa_param, fp_offset, ra_offset, aux)


class RowOrderError(ValueError):
    """An FDE whose rows go backwards or start before it (the decoders count it)."""


def table_pieces(rows: list[tuple[int, UnwindRule]], start: int,
                 end: int) -> list[tuple[int, int, UnwindRule]]:
    """An FDE's (start, end, rule) pieces from its table rows (pc, rule), each row
    applying up to the next one's pc and the last up to the FDE's end."""
    pieces = []
    for i, (pc, rule) in enumerate(rows):
        next_pc = rows[i + 1][0] if i + 1 < len(rows) else end
        if pc < start or next_pc < pc:
            raise RowOrderError(f"row address {pc:#x} out of order")
        next_pc = min(next_pc, end)
        if pc < next_pc:
            pieces.append((pc, next_pc, rule))
    return pieces

