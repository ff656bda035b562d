"""A direct decoder of .eh_frame and .debug_frame into stack deltas.

cfi.py decodes CFI through pyelftools, which builds an object per instruction
and per table row: 0.8 s for libc, 3 s for python3.11, which is most of a cold
run. This module reads the same sections with struct and byte indexing and
runs each FDE's CFA program on a small state, producing exactly what cfi.py
produces: the same rules (cfi.py's `_row_rule`), the same row semantics
(pyelftools' `_decode_CFI_table`, including remember/restore_state saving the
CFA and the last CIE row as the base), the same FDE selection and error counts
(tests/test_unwind_data.py compares the two on every module at hand).

Whatever it does not know (64-bit DWARF entries, compressed .debug_frame, an
augmentation or pointer encoding it does not read, big-endian or 32-bit ELF)
makes it return None, and cfi.py does the work: it may be slower, never
different.
"""

from __future__ import annotations

import mmap
import os
import struct
import zlib
from collections.abc import Iterator
from typing import Any

from ..core import elf
from ..core.elf import Ehdr, Shdr
from .deltas import (
    _ARCHES_BY_NUMBER,
    EXPRESSION,
    OFFSET,
    REGISTER,
    SAME_VALUE,
    UNDEFINED,
    VAL_EXPRESSION,
    VAL_OFFSET,
    RowOrderError,
    _build_deltas,
    _clip,
    _Coverage,
    _is_code,
    read_leb128,
    row_rule,
    table_pieces,
)
from .go_deltas import claim_go_functions
from .model import (
    _SIGNAL_RULE,
    FRAME_POINTER_RULE,
    MAX_CFI_ENTRIES,
    ModuleUnwindData,
    UnwindRule,
)

_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_ET_REL = 1
_PT_LOAD = 1
_PF_X = 1
_SHT_NOBITS = 8
_SHF_COMPRESSED = 0x800



class Unsupported(Exception):
    """Something this decoder does not read: let cfi.py decode the module."""


class BadEntry(Exception):
    """One CIE or FDE that cannot be decoded (counted in fde_errors, as cfi.py does)."""


def _leb(data: bytes, pos: int, signed: bool) -> tuple[int, int]:
    found = read_leb128(data, pos, signed)
    if found is None:
        raise BadEntry("LEB128 runs past the entry")
    return found


def _uleb(data: bytes, pos: int) -> tuple[int, int]:
    return _leb(data, pos, signed=False)


def _sleb(data: bytes, pos: int) -> tuple[int, int]:
    return _leb(data, pos, signed=True)


# DW_EH_PE pointer encodings: the value format (low nibble) and how it is applied.
_PE_FORMATS = {0x00: ("<Q", 8), 0x02: ("<H", 2), 0x03: ("<I", 4), 0x04: ("<Q", 8),
               0x0A: ("<h", 2), 0x0B: ("<i", 4), 0x0C: ("<q", 8)}
_PE_OMIT = 0xFF


def _encoded(data: bytes, pos: int, encoding: int, field_addr: int) -> tuple[int, int]:
    """A DW_EH_PE-encoded pointer at data[pos] (field_addr: its address, for pcrel)."""
    fmt = encoding & 0x0F
    if fmt == 0x01:
        value, end = _uleb(data, pos)
    elif fmt == 0x09:
        value, end = _sleb(data, pos)
    elif fmt in _PE_FORMATS:
        code, size = _PE_FORMATS[fmt]
        if pos + size > len(data):
            raise BadEntry("pointer runs past the entry")
        value, end = struct.unpack_from(code, data, pos)[0], pos + size
    else:
        raise Unsupported(f"pointer encoding {encoding:#x}")
    application = encoding & 0x70
    if application == 0x10:  # pcrel
        value += field_addr
    elif application != 0x00:
        raise Unsupported(f"pointer application {encoding:#x}")
    if encoding & 0x80:
        raise Unsupported("indirect pointer")
    return value & 0xFFFF_FFFF_FFFF_FFFF, end


class _Cie:
    __slots__ = ("code_align", "data_align", "ra_reg", "fde_encoding", "has_z", "signal",
                 "instructions", "base", "base_done")

    def __init__(self) -> None:
        self.code_align = 1
        self.data_align = 1
        self.ra_reg = 0
        self.fde_encoding = 0x00
        self.has_z = False
        self.signal = False
        self.instructions = b""
        self.base: dict[Any, Any] | None = None  # the CIE table's last row
        self.base_done = False


class _Section:
    """One CFI section's bytes, where it is, and which kind."""

    def __init__(self, data: bytes, addr: int, eh_frame: bool) -> None:
        self.data = data
        self.addr = addr
        self.eh_frame = eh_frame
        self.cies: dict[int, _Cie | None] = {}

    def cie_at(self, offset: int) -> _Cie:
        if offset not in self.cies:
            try:
                self.cies[offset] = self._parse_cie(offset)
            except BadEntry:
                self.cies[offset] = None
        cie = self.cies[offset]
        if cie is None:
            raise BadEntry(f"broken CIE at {offset:#x}")
        return cie

    def _parse_cie(self, offset: int) -> _Cie:
        data = self.data
        if offset + 8 > len(data):
            raise BadEntry("CIE past the section")
        (length,) = _U32.unpack_from(data, offset)
        if length == 0xFFFFFFFF:
            raise Unsupported("64-bit DWARF CIE")
        end = offset + 4 + length
        (cie_id,) = _U32.unpack_from(data, offset + 4)
        if cie_id != (0 if self.eh_frame else 0xFFFFFFFF) or end > len(data):
            raise BadEntry("not a CIE")
        pos = offset + 8
        cie = _Cie()
        version = data[pos]
        pos += 1
        nul = data.index(b"\0", pos, end)
        augmentation = data[pos:nul]
        pos = nul + 1
        if augmentation and not augmentation.startswith(b"z"):
            raise Unsupported(f"augmentation {augmentation!r}")
        if not self.eh_frame and version >= 4:
            pos += 2  # address_size, segment_selector_size
        cie.code_align, pos = _uleb(data, pos)
        cie.data_align, pos = _sleb(data, pos)
        if version == 1:
            cie.ra_reg, pos = data[pos], pos + 1
        else:
            cie.ra_reg, pos = _uleb(data, pos)
        if augmentation.startswith(b"z"):
            cie.has_z = True
            aug_len, pos = _uleb(data, pos)
            aug_end = pos + aug_len
            for char in augmentation[1:]:
                if char == ord("R"):
                    cie.fde_encoding, pos = data[pos], pos + 1
                elif char == ord("P"):
                    encoding, pos = data[pos], pos + 1
                    _, pos = _encoded(data, pos, encoding & 0x7F, self.addr + pos)
                elif char == ord("L"):
                    pos += 1
                elif char == ord("S"):
                    cie.signal = True
                elif char in (ord("B"), ord("G")):
                    pass  # BTI / MTE marks: nothing to read
                else:
                    raise Unsupported(f"augmentation {augmentation!r}")
            pos = aug_end
        cie.instructions = data[pos:end]
        return cie

    def fdes(self, errors: list[int]) -> Iterator[tuple[_Cie, int, int, bytes]]:
        """(CIE, start, end, instructions) per FDE; broken ones appended to errors."""
        data = self.data
        offset = entries = 0
        while offset + 4 <= len(data):
            entries += 1
            if entries > MAX_CFI_ENTRIES:
                raise Unsupported("too many entries: cfi.py says so, with the limit")
            (length,) = _U32.unpack_from(data, offset)
            if length == 0:
                offset += 4
                continue
            if length == 0xFFFFFFFF:
                raise Unsupported("64-bit DWARF entry")
            entry_end = offset + 4 + length
            if entry_end > len(data) or length < 4:
                errors.append(offset)
                return
            (cie_ref,) = _U32.unpack_from(data, offset + 4)
            if cie_ref == (0 if self.eh_frame else 0xFFFFFFFF):
                offset = entry_end  # a CIE: read when an FDE names it
                continue
            try:
                yield self._fde(offset, cie_ref, entry_end)
            except BadEntry:
                errors.append(offset)
            offset = entry_end

    def _fde(self, offset: int, cie_ref: int, end: int) -> tuple[_Cie, int, int, bytes]:
        data = self.data
        cie = self.cie_at(offset + 4 - cie_ref if self.eh_frame else cie_ref)
        pos = offset + 8
        if self.eh_frame:
            start, pos = _encoded(data, pos, cie.fde_encoding, self.addr + pos)
            size, pos = _encoded(data, pos, cie.fde_encoding & 0x0F, 0)
        else:
            if pos + 16 > end:
                raise BadEntry("FDE too short")
            start, size = _U64.unpack_from(data, pos)[0], _U64.unpack_from(data, pos + 8)[0]
            pos += 16
        if cie.has_z:
            aug_len, pos = _uleb(data, pos)
            pos += aug_len
        if pos > end:
            raise BadEntry("FDE header past its end")
        return cie, start, (start + size) & 0xFFFF_FFFF_FFFF_FFFF, data[pos:end]


# ----------------------------------------------------------------------- CFA programs


def _run(program: bytes, cie: _Cie, pc: int, line: dict[Any, Any],
         base: dict[Any, Any] | None, table: list[dict[Any, Any]]) -> dict[Any, Any]:
    """Run one CFA program from `line`; rows go to `table` at each advance (as
    pyelftools' _decode_CFI_table). Returns the line in force at the end."""
    code_align, data_align = cie.code_align, cie.data_align
    stack: list[dict[Any, Any]] = []
    pos, n = 0, len(program)
    line["pc"] = pc
    while pos < n:
        op = program[pos]
        pos += 1
        high = op & 0xC0
        if high == 0x40:  # advance_loc
            table.append(dict(line))
            line["pc"] += (op & 0x3F) * code_align
        elif high == 0x80:  # offset
            off, pos = _uleb(program, pos)
            line[op & 0x3F] = (OFFSET, off * data_align)
        elif high == 0xC0:  # restore
            _restore(line, base, op & 0x3F)
        elif op == 0x00:
            pass
        elif op == 0x01:
            raise Unsupported("DW_CFA_set_loc")
        elif op in (0x02, 0x03, 0x04):
            size = 1 << (op - 2)
            if pos + size > n:
                raise BadEntry("advance past the program")
            delta = int.from_bytes(program[pos:pos + size], "little")
            pos += size
            table.append(dict(line))
            line["pc"] += delta * code_align
        elif op in (0x05, 0x11, 0x14, 0x15):  # offset(_ext/_sf), val_offset(_sf)
            reg, pos = _uleb(program, pos)
            if op in (0x11, 0x15):
                off, pos = _sleb(program, pos)
            else:
                off, pos = _uleb(program, pos)
            line[reg] = (VAL_OFFSET if op in (0x14, 0x15) else OFFSET, off * data_align)
        elif op == 0x06:
            reg, pos = _uleb(program, pos)
            _restore(line, base, reg)
        elif op in (0x07, 0x08):
            reg, pos = _uleb(program, pos)
            line[reg] = (UNDEFINED if op == 0x07 else SAME_VALUE, 0)
        elif op == 0x09:
            reg, pos = _uleb(program, pos)
            other, pos = _uleb(program, pos)
            line[reg] = (REGISTER, other)
        elif op == 0x0A:
            stack.append(dict(line))
        elif op == 0x0B:
            if not stack:
                raise BadEntry("restore_state without remember_state")
            here = line["pc"]
            line = stack.pop()
            line["pc"] = here
        elif op == 0x0C:
            reg, pos = _uleb(program, pos)
            off, pos = _uleb(program, pos)
            line["cfa"] = (reg, off, None)
        elif op == 0x12:  # def_cfa_sf (data-aligned, as cfi.py normalises it)
            reg, pos = _uleb(program, pos)
            off, pos = _sleb(program, pos)
            line["cfa"] = (reg, off * data_align, None)
        elif op == 0x0D:
            reg, pos = _uleb(program, pos)
            line["cfa"] = (reg, line["cfa"][1], None)
        elif op == 0x0E:
            off, pos = _uleb(program, pos)
            line["cfa"] = (line["cfa"][0], off, None)
        elif op == 0x13:
            off, pos = _sleb(program, pos)
            line["cfa"] = (line["cfa"][0], off * data_align, None)
        elif op == 0x0F:
            size, pos = _uleb(program, pos)
            line["cfa"] = (None, 0, program[pos:pos + size])
            pos += size
        elif op in (0x10, 0x16):
            reg, pos = _uleb(program, pos)
            size, pos = _uleb(program, pos)
            line[reg] = (EXPRESSION if op == 0x10 else VAL_EXPRESSION, program[pos:pos + size])
            pos += size
        elif op == 0x2E:  # GNU_args_size: for landing pads only
            _, pos = _uleb(program, pos)
        elif op == 0x2D:  # AARCH64_negate_ra_state / GNU_window_save
            pass
        else:
            raise BadEntry(f"unknown CFA opcode {op:#x}")
    if pos > n:
        raise BadEntry("instruction past the program")
    return line


def _restore(line: dict[Any, Any], base: dict[Any, Any] | None, reg: int) -> None:
    if base is None:
        raise BadEntry("restore in a CIE")
    if reg in base:
        line[reg] = base[reg]
    else:
        line.pop(reg, None)


def _cie_base(cie: _Cie) -> dict[Any, Any] | None:
    """The last row of the CIE's own table (pyelftools' last_line_in_CIE); None when
    the CIE's table has none (an FDE then starts from an empty line, and a
    DW_CFA_restore in it is an error, as in pyelftools)."""
    if not cie.base_done:
        table: list[dict[Any, Any]] = []
        line = _run(cie.instructions, cie, 0, {"cfa": (None, 0, None)}, None, table)
        if line["cfa"][0] is not None or len(line) > 2:
            table.append(line)
        cie.base = table[-1] if table else None
        cie.base_done = True
    return cie.base


# ------------------------------------------------------------------------ the module


def extract(path: str | os.PathLike[str]) -> ModuleUnwindData | None:
    """The module's stack deltas, or None where this decoder does not apply (cfi.py
    then decodes it, and reports what is wrong with a broken file)."""
    try:
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            sections, code, machine = _elf_layout(mm)
            arch = _ARCHES_BY_NUMBER.get(machine)
            if arch is None:
                raise Unsupported(f"machine {machine}")
            stats = [0, 0]  # fde_count, fde_errors
            coverage = _Coverage()
            segments: list[tuple[int, int, UnwindRule]] = []
            sources: list[str] = []
            fde_ranges: list[tuple[int, int]] = []
            for name, eh in ((".eh_frame", True), (".gopclntab", False), (".debug_frame", False)):
                if name == ".gopclntab":  # Go code: no FDEs, but a pcsp table per function
                    stats[0] += claim_go_functions(path, arch.name, coverage, segments,
                                                   sources, fde_ranges)
                    continue
                found = sections.get(name)
                if found is None:
                    continue
                shdr = found
                if shdr.offset + shdr.size > len(mm):
                    raise Unsupported("section past the end of the file")
                raw = bytes(mm[shdr.offset:shdr.offset + shdr.size])
                if shdr.flags & _SHF_COMPRESSED:
                    raw = _decompress(raw)
                section = _Section(raw, shdr.addr, eh)
                sources.append(name)
                errors: list[int] = []
                for cie, start, end, program in section.fdes(errors):
                    if not _is_code(start, end, code):
                        continue
                    fde_ranges.append((start, end))
                    try:
                        pieces = _fde_pieces(cie, start, end, program, arch)
                    except BadEntry:
                        stats[1] += 1
                        continue
                    stats[0] += 1
                    segments.extend(_clip(pieces, coverage.claim(start, end)))
                stats[1] += len(errors)
    except (Unsupported, ValueError, IndexError, struct.error, OSError):
        return None
    return ModuleUnwindData(machine=arch.name, deltas=_build_deltas(segments),
                            fde_count=stats[0], fde_errors=stats[1], sources=sources,
                            fde_ranges=fde_ranges)


_CHDR = struct.Struct("<IIQQ")  # Elf64_Chdr: ch_type, reserved, ch_size, ch_addralign
_ELFCOMPRESS_ZLIB = 1
MAX_CFI_SECTION = 1 << 30  # a compressed section claiming more is not inflated


def _decompress(raw: bytes) -> bytes:
    """An SHF_COMPRESSED section's content (Go compresses its DWARF, .debug_frame
    included); other compression types go to the pyelftools decoder."""
    if len(raw) < _CHDR.size:
        raise Unsupported("truncated compressed section")
    kind, _, size, _ = _CHDR.unpack_from(raw)
    if kind != _ELFCOMPRESS_ZLIB or size > MAX_CFI_SECTION:
        raise Unsupported(f"compression type {kind}")
    try:
        inflated = zlib.decompressobj().decompress(raw[_CHDR.size:], size)
    except zlib.error as exc:
        raise Unsupported(f"corrupt compressed section: {exc}") from None
    if len(inflated) != size:
        raise Unsupported("compressed section shorter than it says")
    return inflated


def _elf_layout(mm: mmap.mmap) -> tuple[dict[str, Shdr], list[tuple[int, int]], int]:
    """The CFI sections by name, the executable PT_LOAD ranges and e_machine."""
    if elf.ident_problem(mm[:elf.EHDR_SIZE]):
        raise Unsupported("not a 64-bit little-endian ELF file")
    ehdr = Ehdr.parse(mm[:elf.EHDR_SIZE])
    if ehdr.type == _ET_REL or ehdr.shentsize != elf.SHDR_SIZE or not ehdr.shnum:
        raise Unsupported("no section headers, or a relocatable object")
    code = [(p.vaddr, p.vaddr + p.memsz) for p in elf.program_headers(mm, ehdr)
            if p.type == _PT_LOAD and p.flags & _PF_X]
    headers = [Shdr.parse(mm[ehdr.shoff + i * elf.SHDR_SIZE:
                             ehdr.shoff + (i + 1) * elf.SHDR_SIZE]) for i in range(ehdr.shnum)]
    if ehdr.shstrndx >= len(headers):
        raise Unsupported("no section names")
    names_hdr = headers[ehdr.shstrndx]
    names = mm[names_hdr.offset:names_hdr.offset + names_hdr.size]
    wanted: dict[str, Shdr] = {}
    for shdr in headers:
        name = elf.cstring(names, shdr.name) if shdr.name < len(names) else ""
        if name in (".eh_frame", ".debug_frame") and shdr.type != _SHT_NOBITS \
                and name not in wanted:
            wanted[name] = shdr
    return wanted, code, ehdr.machine


def _fde_pieces(cie: _Cie, start: int, end: int, program: bytes,
                arch: Any) -> list[tuple[int, int, UnwindRule]]:
    """(start, end, rule) pieces of one FDE, as cfi.py's _fde_segments."""
    if cie.signal:
        return [(start, end, _SIGNAL_RULE)]
    base = _cie_base(cie)
    table: list[dict[Any, Any]] = []
    first = dict(base) if base is not None else {"cfa": (None, 0, None)}
    line = _run(program, cie, start, first, base, table)
    if line["cfa"][0] is not None or len(line) > 2:
        table.append(line)
    if not table:
        raise BadEntry("no CFA rule")
    ra_reg = cie.ra_reg
    rows = [(row["pc"], row_rule(row["cfa"], row.get(ra_reg), row.get(arch.fp), arch))
            for row in table]
    try:
        return table_pieces(rows, start, end)
    except RowOrderError as e:
        raise BadEntry(str(e)) from None


__all__ = ["FRAME_POINTER_RULE", "extract"]
