"""Per-module unwind tables ("stack deltas") derived from DWARF call frame information.

The eBPF unwinder cannot interpret DWARF CFI at sample time, so - like a profiler's
user-space agent - we pre-digest each module's .eh_frame/.debug_frame into a flat,
sorted list of (address, rule) pairs. Each rule says how to find the caller's frame
(CFA, saved frame pointer, return address) for every PC up to the next entry; the C
side binary-searches this list. The CFA_* constants below are the rule vocabulary
shared with the C code (`enum cfa_op` in bpf_src/types.h; tests/test_abi_constants.py
checks that the two agree).

Extraction is slow (pure-Python DWARF decoding, ~1 s for libc), so results are
cached per module content hash in a compact, checksummed binary file.
"""

from __future__ import annotations

import io
import logging
import os
import re
import struct
import sys
import zlib
from array import array
from bisect import bisect_right
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from elftools.common.exceptions import ELFError
from elftools.construct.core import ConstructError
from elftools.dwarf.callframe import (
    CIE,
    FDE,
    CallFrameInfo,
    CallFrameInstruction,
    CFIEntry,
    RegisterRule,
)
from elftools.dwarf.constants import DW_CFA
from elftools.dwarf.structs import DWARFStructs
from elftools.elf.elffile import ELFFile
from elftools.elf.sections import Section

from .arch import AMD64, ARCHES, ARM64, Arch
from .errors import HarnessError, UnwindDataError
from .files import atomic_file

log = logging.getLogger(__name__)

CFA_INVALID = 0  # no usable rule at this PC: the unwinder reports an error
CFA_STOP = 1  # outermost frame: the return-address column is DW_CFA_undefined here
CFA_SP = 2  # CFA = SP + cfa_param
CFA_FP = 3  # CFA = FP + cfa_param  (FP = rbp on x86_64, x29 on aarch64)
CFA_PLT = 4  # x86_64 PLT: CFA = RSP + cfa_param + plt_pushed_bytes(PC, aux)
CFA_SIGNAL = 5  # signal trampoline: registers are restored from the signal frame

_CFA_OPS = frozenset({CFA_INVALID, CFA_STOP, CFA_SP, CFA_FP, CFA_PLT, CFA_SIGNAL})

PLT_ENTRY_SIZE = 16  # bytes of an x86_64 .plt entry (enum plt_layout in types.h)


def plt_pushed_bytes(pc: int, aux: int) -> int:
    """CFA_PLT: the word a PLT entry has pushed once the PC is past its push (aux)."""
    return 8 if pc % PLT_ENTRY_SIZE >= aux else 0

# Bump whenever extraction semantics or the cache layout change: old files are then
# simply never looked at again (the version is part of the file name).
FORMAT_VERSION = 2
# CIEs, FDEs and terminators walked in one section: a real libc has ~3,000, the
# largest binaries some 10^6; a section of zero terminators must not spin for minutes.
MAX_CFI_ENTRIES = 1 << 22


@dataclass(frozen=True)
class UnwindRule:
    """How to recover the caller's frame at a PC (see the CFA_* constants)."""

    cfa_op: int
    cfa_param: int = 0
    fp_offset: int = 0  # caller's FP saved at CFA + fp_offset; 0: not saved (FP unchanged)
    ra_offset: int = 0  # RA saved at CFA + ra_offset; 0: still in the link register (arm64)
    aux: int = 0  # CFA_PLT only: offset in a PLT entry from which one more word is pushed


# Used for PCs that no FDE covers (both arches): the standard frame-pointer frame.
FRAME_POINTER_RULE = UnwindRule(CFA_FP, 16, fp_offset=-16, ra_offset=-8)

_INVALID_RULE = UnwindRule(CFA_INVALID)
_STOP_RULE = UnwindRule(CFA_STOP)
_SIGNAL_RULE = UnwindRule(CFA_SIGNAL)


@dataclass
class ModuleUnwindData:
    """Stack deltas of one ELF module.

    ``deltas`` is sorted by ELF virtual address; entry i applies to
    [vaddr_i, vaddr_{i+1}) and the last one to the end of the module. An empty list
    means the module has no CFI at all and the unwinder should use frame pointers.
    """

    machine: str  # "amd64" or "arm64"
    deltas: list[tuple[int, UnwindRule]]
    fde_count: int  # FDEs decoded successfully
    fde_errors: int  # FDEs skipped because pyelftools raised or the FDE was malformed
    sources: list[str]  # CFI sections used, e.g. [".eh_frame", ".debug_frame"]
    # [start, end) of every FDE over code, in section order (.eh_frame first): the
    # function bounds of the instruction-level tools (harness/check/code.py)
    fde_ranges: list[tuple[int, int]] = field(default_factory=list)


@dataclass(frozen=True)
class _Arch:
    """DWARF register numbering and conventions of one machine."""

    name: str
    sp: int
    fp: int
    default_ra_offset: int  # RA location when the RA column has no rule
    plt_expressions: bool  # whether to recognise the x86_64 PLT CFA expression

    @classmethod
    def of(cls, arch: Arch) -> _Arch:
        # binutils describes x86_64 .plt entries with one CFA expression (see below)
        return cls(arch.name, arch.dwarf_sp, arch.dwarf_fp, arch.entry_ra_offset,
                   plt_expressions=arch.name == AMD64)


_ARCHES = {a.elf_machine_name: _Arch.of(a) for a in ARCHES.values()}


class _MalformedFDE(Exception):
    """An FDE decoded without error but describes something impossible."""


# --------------------------------------------------------------------------- extraction


def extract_unwind_data(path: str | os.PathLike[str]) -> ModuleUnwindData:
    """Decode all CFI of an ELF file into stack deltas (no caching).

    .eh_frame has priority over .debug_frame; within a section the first FDE covering
    a PC wins. FDEs that fail to decode are counted in ``fde_errors`` and their range
    falls back to FRAME_POINTER_RULE (unless .debug_frame covers it).
    """
    try:
        with open(path, "rb") as stream:
            elf = ELFFile(stream)
            arch = _ARCHES.get(elf["e_machine"])
            if arch is None:
                raise UnwindDataError(
                    f"{path}: unsupported machine {elf['e_machine']} (only x86_64 and aarch64)"
                )
            if elf["e_type"] == "ET_REL":
                raise UnwindDataError(
                    f"{path}: relocatable object; its addresses are not final, link it first"
                )
            return _extract(elf, arch, str(path))
    except OSError as exc:
        raise UnwindDataError(f"cannot read {path}: {exc.strerror or exc}") from exc
    except _ELF_FORMAT_ERRORS as exc:
        # Per-FDE problems are handled inside; this is the file itself being broken.
        raise UnwindDataError(f"{path}: not a valid ELF file ({exc})") from exc


_ELF_FORMAT_ERRORS = (ELFError, ConstructError, struct.error, ValueError)


class _Stats:
    """Counters shared by the section walker and the FDE decoder."""

    def __init__(self) -> None:
        self.fde_count = 0
        self.fde_errors = 0


def _extract(elf: ELFFile, arch: _Arch, path: str) -> ModuleUnwindData:
    stats = _Stats()
    code = _executable_ranges(elf)
    coverage = _Coverage()
    segments: list[tuple[int, int, UnwindRule]] = []
    sources: list[str] = []
    fde_ranges: list[tuple[int, int]] = []
    for name, for_eh_frame in ((".eh_frame", True), (".debug_frame", False)):
        opened = _open_cfi(elf, name, for_eh_frame, path)
        if opened is None:
            continue
        sources.append(name)
        for fde in _iter_fdes(*opened, stats):
            start = fde["initial_location"]
            end = start + fde["address_range"]
            if not _is_code(start, end, code):
                continue  # e.g. FDEs of discarded functions "relocated" to 0 or -1
            fde_ranges.append((start, end))
            try:
                fde_segments = _fde_segments(fde, start, end, arch)
            except Exception as exc:  # pyelftools raises assorted types on odd CFI
                stats.fde_errors += 1
                log.debug("%s: %s FDE at %#x: %s", path, name, start, exc)
                continue
            stats.fde_count += 1
            segments.extend(_clip(fde_segments, coverage.claim(start, end)))
    return ModuleUnwindData(
        machine=arch.name,
        deltas=_build_deltas(segments),
        fde_count=stats.fde_count,
        fde_errors=stats.fde_errors,
        sources=sources,
        fde_ranges=fde_ranges,
    )


def _executable_ranges(elf: ELFFile) -> list[tuple[int, int]]:
    """Address ranges of executable PT_LOAD segments (empty: no program headers)."""
    ranges = []
    for seg in elf.iter_segments():
        if seg["p_type"] == "PT_LOAD" and seg["p_flags"] & 1:  # PF_X
            ranges.append((seg["p_vaddr"], seg["p_vaddr"] + seg["p_memsz"]))
    return ranges


def _is_code(start: int, end: int, code: list[tuple[int, int]]) -> bool:
    """Whether an FDE range is plausible: non-empty and, if we know where the code is,
    inside it. Linkers leave FDEs of discarded sections in .debug_frame with a
    tombstone address (0 for GNU ld, -1 for lld); they must not shadow real code."""
    if end <= start or start == 0:
        return False
    return not code or any(lo <= start and end <= hi for lo, hi in code)


def _open_cfi(
    elf: ELFFile, name: str, for_eh_frame: bool, path: str
) -> tuple[CallFrameInfo, bytes] | None:
    """A pyelftools CFI parser for one section and the section's bytes, or None if the
    section is absent or unreadable.

    We build it from the section alone rather than via get_dwarf_info(), which would
    also read (and copy) every other debug section.
    """
    section = elf.get_section_by_name(name)
    if not isinstance(section, Section) or section["sh_type"] == "SHT_NOBITS":
        return None
    try:
        data = section.data()  # decompresses SHF_COMPRESSED .debug_frame
    except Exception as exc:
        log.warning("%s: cannot read %s, ignoring it: %s", path, name, exc)
        return None
    structs = DWARFStructs(
        little_endian=elf.little_endian, dwarf_format=32, address_size=elf.elfclass // 8
    )
    cfi = CallFrameInfo(
        stream=io.BytesIO(data),
        size=len(data),
        address=section["sh_addr"],
        base_structs=structs,
        for_eh_frame=for_eh_frame,
    )
    return cfi, data


def _iter_fdes(cfi: CallFrameInfo, data: bytes, stats: _Stats) -> Iterator[FDE]:
    """Yield the FDEs of a section, isolating parse errors to single entries.

    pyelftools' get_entries() parses every entry's instructions up front and aborts
    the whole section on the first one it cannot parse (e.g. an unknown opcode), so
    we walk the entry lengths ourselves and let it parse one entry at a time.
    """
    order = "<" if cfi.base_structs.little_endian else ">"
    offset = 0
    entries = 0
    while offset + 4 <= len(data):
        entries += 1
        if entries > MAX_CFI_ENTRIES:
            raise UnwindDataError(f"more than {MAX_CFI_ENTRIES} CFI entries in one section "
                                  "(the limit); corrupt or hostile module")
        (length,) = struct.unpack_from(order + "I", data, offset)
        if length == 0:  # .eh_frame terminator (pyelftools' ZERO); keep scanning
            offset += 4
            continue
        header_size, id_size = 4, 4
        if length == 0xFFFFFFFF:  # 64-bit DWARF entry
            if offset + 12 > len(data):
                break
            (length,) = struct.unpack_from(order + "Q", data, offset + 4)
            header_size, id_size = 12, 8
        entry_end = offset + header_size + length
        if entry_end > len(data) or length < id_size:
            stats.fde_errors += 1  # truncated entry: nothing after it can be trusted
            break
        try:
            entry = cfi._parse_entry_at(offset)
        except Exception:
            if not _is_cie_id(data, offset + header_size, id_size, order, cfi.for_eh_frame):
                stats.fde_errors += 1  # a broken CIE is counted via its FDEs
            entry = None
        if isinstance(entry, FDE):
            yield entry
        offset = entry_end


def _is_cie_id(data: bytes, pos: int, size: int, order: str, for_eh_frame: bool) -> bool:
    """Whether the entry whose CIE_id/CIE_pointer field is at ``pos`` is a CIE."""
    (cie_id,) = struct.unpack_from(order + ("I" if size == 4 else "Q"), data, pos)
    if for_eh_frame:
        return bool(cie_id == 0)
    return bool(cie_id == (1 << (8 * size)) - 1)


# ------------------------------------------------------------------------- FDE decoding


def _fde_segments(fde: FDE, start: int, end: int, arch: _Arch) -> list[tuple[int, int, UnwindRule]]:
    """The (start, end, rule) pieces of one FDE, in address order."""
    cie = fde.cie
    assert cie is not None
    if _is_signal_frame(cie):
        return [(start, end, _SIGNAL_RULE)]
    _normalize_instructions(cie)
    _normalize_instructions(fde)
    table = fde.get_decoded().table
    if not table:
        raise _MalformedFDE("no CFA rule")
    ra_reg = cie["return_address_register"]
    pieces = []
    for i, row in enumerate(table):
        pc = row["pc"]
        next_pc = table[i + 1]["pc"] if i + 1 < len(table) else end
        if pc < start or next_pc < pc:
            raise _MalformedFDE(f"row address {pc:#x} out of order")
        next_pc = min(next_pc, end)
        if pc < next_pc:
            pieces.append((pc, next_pc, _row_rule(row, arch, ra_reg)))
    return pieces


def _is_signal_frame(cie: CIE) -> bool:
    """CIE augmentation 'S' (GCC/glibc) marks signal trampolines such as __restore_rt."""
    augmentation = cie.header.get("augmentation") or b""
    return augmentation.startswith(b"z") and b"S" in augmentation


def _normalize_instructions(entry: CFIEntry) -> None:
    """Work around two pyelftools 0.33 decoder gaps before get_decoded() runs.

    - DW_CFA_GNU_args_size (GCC emits it where call arguments are pushed in code that
      may throw; one FDE in Debian's libc) is parsed but rejected by the decoder. It
      only tells landing pads how much to pop, so dropping it is exact for us.
    - DW_CFA_def_cfa_sf's offset is scaled by the code (not data) alignment factor;
      rewrite it as an equivalent, unfactored DW_CFA_def_cfa.
    """
    if not any(i.opcode in (DW_CFA.GNU_args_size, DW_CFA.def_cfa_sf) for i in entry.instructions):
        return
    cie = entry if isinstance(entry, CIE) else entry.cie
    assert cie is not None
    data_alignment = cie["data_alignment_factor"]
    fixed = []
    for instr in entry.instructions:
        if instr.opcode == DW_CFA.GNU_args_size:
            continue
        if instr.opcode == DW_CFA.def_cfa_sf:
            reg, factored = instr.args
            instr = CallFrameInstruction(DW_CFA.def_cfa, [reg, factored * data_alignment])
        fixed.append(instr)
    entry.instructions = fixed


def _row_rule(row: dict[Any, Any], arch: _Arch, ra_reg: int) -> UnwindRule:
    """Translate one decoded CFI row into the unwinder's restricted rule set."""
    ra = row.get(ra_reg)
    if ra is not None and ra.type == RegisterRule.UNDEFINED:
        return _STOP_RULE
    cfa = row["cfa"]
    aux = 0
    if cfa.expr is not None:
        plt = _match_plt_expression(cfa.expr) if arch.plt_expressions else None
        if plt is None:
            return _INVALID_RULE
        cfa_op, (cfa_param, aux) = CFA_PLT, plt
    elif cfa.reg == arch.sp:
        cfa_op, cfa_param = CFA_SP, cfa.offset
    elif cfa.reg == arch.fp:
        cfa_op, cfa_param = CFA_FP, cfa.offset
    else:
        return _INVALID_RULE

    if ra is None or ra.type == RegisterRule.SAME_VALUE:
        ra_offset = arch.default_ra_offset
    elif ra.type == RegisterRule.OFFSET and ra.arg != 0:
        ra_offset = ra.arg  # 0 would collide with "still in the link register"
    else:
        return _INVALID_RULE

    fp = row.get(arch.fp)
    fp_offset = 0
    if fp is not None and fp.type == RegisterRule.OFFSET:
        if fp.arg == 0:
            return _INVALID_RULE  # would read as "not saved"
        fp_offset = fp.arg
    return _make_rule(cfa_op, cfa_param, fp_offset, ra_offset, aux)


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


# ------------------------------------------------------------------- merging the table


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


# ------------------------------------------------------------------------------ caching

# Layout (little-endian): header, meta (content id and source names, "\n"-separated),
# n_rules x 5 int32 (cfa_op, cfa_param, fp_offset, ra_offset, aux), n_deltas uint64
# vaddrs, n_deltas uint32 rule indices, n_fdes x 2 uint64 FDE ranges, then a CRC32
# of everything before it.
_MAGIC = b"UNWDELTA"
_HEADER = struct.Struct("<8sHHIIIIII")  # magic, version, machine, fde_count, fde_errors,
#                                          n_rules, n_deltas, n_fdes, meta_len
_RULE = struct.Struct("<5i")
_CRC = struct.Struct("<I")
_MACHINES = [AMD64, ARM64]  # the header stores the index: append only
_CONTENT_ID = re.compile(r"[A-Za-z0-9_.-]+")


def load_unwind_data(
    path: str | os.PathLike[str], content_id: str, cache_dir: str | os.PathLike[str]
) -> ModuleUnwindData:
    """Stack deltas for ``path``, from ``<cache_dir>/unwind/`` when possible.

    ``content_id`` must identify the file's content (e.g. a hash); it names the cache
    file, so a changed module is never served stale data. An invalid cache file is
    ignored and replaced. Writing is atomic, so concurrent workers are safe.
    """
    if not _CONTENT_ID.fullmatch(content_id) or content_id.startswith("."):
        raise ValueError(f"content_id {content_id!r} is not usable as a file name")
    cache_file = Path(cache_dir) / "unwind" / f"{content_id}.v{FORMAT_VERSION}.bin"
    try:
        blob = cache_file.read_bytes()
    except OSError:
        blob = None
    if blob is not None:
        cached = _decode_cache(blob, content_id)
        if cached is not None:
            return cached
        log.info("ignoring invalid unwind cache %s", cache_file)
    data = extract_unwind_data(path)
    _write_atomically(cache_file, _encode_cache(data, content_id))
    return data


@lru_cache(maxsize=64)
def _loaded(path: str, content_id: str, cache_dir: str) -> ModuleUnwindData:
    return load_unwind_data(path, content_id, cache_dir)


def module_unwind_data(path: str | os.PathLike[str], content_id: str,
                       cache_dir: str | os.PathLike[str]) -> ModuleUnwindData:
    """load_unwind_data, remembered for the life of the process.

    A module's content never changes under its content id, so everything in one
    process that needs its unwind data (the agent filling the maps, the site
    classifier, the validators) shares one decoded copy. Callers must not modify it.
    """
    return _loaded(os.fspath(path), content_id, os.fspath(cache_dir))


def _encode_cache(data: ModuleUnwindData, content_id: str) -> bytes:
    rule_index: dict[UnwindRule, int] = {}
    indices = array("I", (rule_index.setdefault(r, len(rule_index)) for _, r in data.deltas))
    vaddrs = array("Q", (addr for addr, _ in data.deltas))
    ranges = array("Q", (bound for fde in data.fde_ranges for bound in fde))
    if sys.byteorder == "big":
        indices.byteswap()
        vaddrs.byteswap()
        ranges.byteswap()
    meta = "\n".join([content_id, *data.sources]).encode()
    parts = [
        _HEADER.pack(
            _MAGIC,
            FORMAT_VERSION,
            _MACHINES.index(data.machine),
            data.fde_count,
            data.fde_errors,
            len(rule_index),
            len(data.deltas),
            len(data.fde_ranges),
            len(meta),
        ),
        meta,
        b"".join(
            _RULE.pack(r.cfa_op, r.cfa_param, r.fp_offset, r.ra_offset, r.aux) for r in rule_index
        ),
        vaddrs.tobytes(),
        indices.tobytes(),
        ranges.tobytes(),
    ]
    body = b"".join(parts)
    return body + _CRC.pack(zlib.crc32(body))


def _decode_cache(blob: bytes, content_id: str) -> ModuleUnwindData | None:
    """Parse a cache file; None if it is in any way not what we wrote."""
    if len(blob) < _HEADER.size + _CRC.size:
        return None
    magic, version, machine, fde_count, fde_errors, n_rules, n_deltas, n_fdes, meta_len = (
        _HEADER.unpack_from(blob)
    )
    expected = (_HEADER.size + meta_len + n_rules * _RULE.size + n_deltas * 12 + n_fdes * 16
                + _CRC.size)
    if magic != _MAGIC or version != FORMAT_VERSION or len(blob) != expected:
        return None
    body = memoryview(blob)[: -_CRC.size]
    if _CRC.unpack_from(blob, len(body))[0] != zlib.crc32(body) or machine >= len(_MACHINES):
        return None
    pos = _HEADER.size
    try:
        stored_id, *sources = bytes(body[pos : pos + meta_len]).decode().split("\n")
    except UnicodeDecodeError:
        return None
    if stored_id != content_id:
        return None
    pos += meta_len
    rules_end = pos + n_rules * _RULE.size
    rules = [UnwindRule(*fields) for fields in _RULE.iter_unpack(body[pos:rules_end])]
    vaddrs, indices, ranges = array("Q"), array("I"), array("Q")
    indices_start = rules_end + n_deltas * 8
    ranges_start = indices_start + n_deltas * 4
    vaddrs.frombytes(body[rules_end:indices_start])
    indices.frombytes(body[indices_start:ranges_start])
    ranges.frombytes(body[ranges_start:])
    if sys.byteorder == "big":
        vaddrs.byteswap()
        indices.byteswap()
        ranges.byteswap()
    if any(r.cfa_op not in _CFA_OPS for r in rules) or (indices and max(indices) >= n_rules):
        return None
    return ModuleUnwindData(
        machine=_MACHINES[machine],
        deltas=list(zip(vaddrs, (rules[i] for i in indices), strict=True)),
        fde_count=fde_count,
        fde_errors=fde_errors,
        sources=sources,
        fde_ranges=list(zip(ranges[::2], ranges[1::2], strict=True)),
    )


def _write_atomically(target: Path, payload: bytes) -> None:
    """Readers never see a partial file (files.atomic_file). Failure to cache is
    not fatal: the caller already has the data."""
    try:
        with atomic_file(target) as out:
            out.write(payload)
    except (OSError, HarnessError) as exc:
        log.warning("cannot write unwind cache %s: %s", target, exc)
