"""Decoding a module's DWARF call frame information into stack deltas (pyelftools).

The slow part of unwind_data, on its own so that only a cold run imports the
decoder: everything warm reads the cache in harness/unwind_data/__init__.py.
"""

from __future__ import annotations

import io
import logging
import os
import struct
from collections.abc import Iterator
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

from ..errors import UnwindDataError
from .deltas import (
    _ARCHES,
    EXPRESSION,
    OFFSET,
    REGISTER,
    SAME_VALUE,
    UNDEFINED,
    VAL_EXPRESSION,
    VAL_OFFSET,
    RowOrderError,
    _Arch,
    _build_deltas,
    _clip,
    _Coverage,
    _is_code,
    row_rule,
    table_pieces,
)
from .go_deltas import claim_go_functions
from .model import (
    _SIGNAL_RULE,
    MAX_CFI_ENTRIES,
    ModuleUnwindData,
    UnwindRule,
)

log = logging.getLogger("harness.unwind_data")


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
    for name, for_eh_frame in ((".eh_frame", True), (".gopclntab", False), (".debug_frame", False)):
        if name == ".gopclntab":  # Go code: after .eh_frame, before Go's .debug_frame
            stats.fde_count += claim_go_functions(path, arch.name, coverage, segments,
                                                  sources, fde_ranges)
            continue
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
    rows = [(row["pc"], _row_rule(row, arch, ra_reg)) for row in table]
    try:
        return table_pieces(rows, start, end)
    except RowOrderError as e:
        raise _MalformedFDE(str(e)) from None


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


# pyelftools' RegisterRule types as deltas.py's kinds.
_KINDS = {RegisterRule.UNDEFINED: UNDEFINED, RegisterRule.SAME_VALUE: SAME_VALUE,
          RegisterRule.OFFSET: OFFSET, RegisterRule.VAL_OFFSET: VAL_OFFSET,
          RegisterRule.REGISTER: REGISTER, RegisterRule.EXPRESSION: EXPRESSION,
          RegisterRule.VAL_EXPRESSION: VAL_EXPRESSION}


def _reg_rule(rule: RegisterRule | None) -> tuple[int, object] | None:
    return None if rule is None else (_KINDS.get(rule.type, -1), rule.arg)


def _row_rule(row: dict[Any, Any], arch: _Arch, ra_reg: int) -> UnwindRule:
    """Translate one decoded CFI row into the unwinder's restricted rule set."""
    cfa = row["cfa"]
    return row_rule((cfa.reg, cfa.offset, cfa.expr), _reg_rule(row.get(ra_reg)),
                    _reg_rule(row.get(arch.fp)), arch)


# ------------------------------------------------------------------- merging the table


# ------------------------------------------------------------------------------ caching
