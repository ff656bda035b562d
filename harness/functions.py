"""Function bounds of an ELF module, for the instruction-level tools.

Site classification and the stack-delta check both need to know where a
function starts and ends. The unwinder's rules come per FDE, so FDE ranges
(.eh_frame, then .debug_frame) are the primary bounds; function symbols
(.symtab, else .dynsym) give them names and cover code without CFI.

Only FDE *headers* are read here (pc_begin, pc_range). That is a few
milliseconds for libc, against ~0.6 s for pyelftools, which decodes every
instruction stream too; the per-case validation runs in the test suite and
must stay fast.
"""

from __future__ import annotations

import bisect
import os
import struct
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from .errors import HarnessError
from .process import Module

_EHDR = struct.Struct("<16sHHIQQQIHHHHHH")
_SHDR = struct.Struct("<IIQQQQIIQQ")
_SYM = struct.Struct("<IBBHQQ")
SHT_NOBITS = 8
SHT_SYMTAB = 2
SHT_DYNSYM = 11
STT_FUNC = 2
STT_GNU_IFUNC = 10
STB_GLOBAL, STB_WEAK = 1, 2
SHF_EXECINSTR = 4
EM_X86_64 = 62
EM_AARCH64 = 183

# DW_EH_PE_* pointer encodings (.eh_frame).
_PE_OMIT = 0xFF
_PE_FORMATS = {0x00: "<Q", 0x02: "<H", 0x03: "<I", 0x04: "<Q",
               0x0A: "<h", 0x0B: "<i", 0x0C: "<q"}
_PE_PCREL = 0x10


@dataclass(frozen=True)
class Section:
    name: str
    addr: int
    size: int
    entsize: int
    flags: int
    nobits: bool


@dataclass(frozen=True)
class Function:
    """[start, end) in ELF virtual addresses; source is "fde" or "symbol"."""

    start: int
    end: int
    name: str
    source: str

    def label(self, vaddr: int) -> str:
        return f"{self.name}+{vaddr - self.start:#x}"


class ElfCode:
    """Read-only view of a module's code: bytes by virtual address, sections,
    symbols and function bounds."""

    def __init__(self, path: str | os.PathLike[str], content_id: str | None = None) -> None:
        self.path = Path(path)
        self.module = Module(str(path), path, content_id)
        head = self._raw(0, _EHDR.size)
        assert head is not None  # Module checked the ELF header
        ehdr = _EHDR.unpack(head)
        machine = ehdr[2]
        if machine not in (EM_X86_64, EM_AARCH64):
            raise HarnessError(f"{path}: unsupported machine {machine} (only x86_64 and aarch64)")
        self.arch = "amd64" if machine == EM_X86_64 else "arm64"
        self._raw_sections: list[tuple[int, ...]] = []
        self.sections = self._sections(ehdr[6], ehdr[11], ehdr[12], ehdr[13])
        self.symbols = self._function_symbols()
        self.functions = self._functions()
        self._starts = [f.start for f in self.functions]

    # -------------------------------------------------------------- raw access

    def _raw(self, offset: int, size: int) -> bytes | None:
        return self.module.read(offset, size)

    def read(self, vaddr: int, size: int) -> bytes | None:
        """File-backed bytes at an ELF virtual address (None outside PT_LOADs)."""
        for seg in self.module.loads:
            if seg.vaddr <= vaddr and vaddr + size <= seg.vaddr + seg.filesz:
                return self._raw(seg.offset + vaddr - seg.vaddr, size)
        return None

    def code_bytes(self, start: int, end: int) -> bytes:
        """As many bytes of [start, end) as the file holds, from start on."""
        for seg in self.module.loads:
            if seg.vaddr <= start < seg.vaddr + seg.filesz:
                stop = min(end, seg.vaddr + seg.filesz)
                return self._raw(seg.offset + start - seg.vaddr, stop - start) or b""
        return b""

    def close(self) -> None:
        self.module.close()

    # ---------------------------------------------------------------- sections

    def _sections(self, shoff: int, shentsize: int, shnum: int, shstrndx: int) -> list[Section]:
        if not shoff or shentsize != _SHDR.size or not shnum:
            return []  # stripped of section headers: segments only
        raw = []
        for i in range(shnum):
            data = self._raw(shoff + i * _SHDR.size, _SHDR.size)
            if data is None:
                return []
            raw.append(_SHDR.unpack(data))
        strtab = raw[shstrndx] if shstrndx < len(raw) else None
        names = (self._raw(strtab[4], strtab[5]) or b"") if strtab else b""
        sections = []
        for name_off, sh_type, flags, addr, _offset, size, _link, _info, _align, entsize in raw:
            name = names[name_off:names.index(b"\0", name_off)].decode() if name_off < len(
                names) else ""
            sections.append(Section(name, addr, size, entsize, flags, sh_type == SHT_NOBITS))
        self._raw_sections = raw
        return sections

    def section(self, name: str) -> Section | None:
        for s in self.sections:
            if s.name == name:
                return s
        return None

    def section_at(self, vaddr: int) -> Section | None:
        for s in self.sections:
            if s.addr and s.addr <= vaddr < s.addr + s.size and s.flags & SHF_EXECINSTR:
                return s
        return None

    def _section_data(self, index: int) -> bytes | None:
        _, sh_type, _, _, offset, size, *_ = self._raw_sections[index]
        return None if sh_type == SHT_NOBITS else self._raw(offset, size)

    # ----------------------------------------------------------------- symbols

    def _function_symbols(self) -> dict[int, tuple[str, int]]:
        """{address: (name, size)}: one name per address, .symtab before .dynsym,
        global before weak before local, then the shortest name."""
        best: dict[int, tuple[tuple[int, int, int, str], str, int]] = {}
        for table_rank, wanted in enumerate((SHT_SYMTAB, SHT_DYNSYM)):
            for index, sec in enumerate(self._raw_sections):
                if sec[1] != wanted:
                    continue
                data = self._section_data(index)
                names = self._section_data(sec[6]) if sec[6] < len(self._raw_sections) else None
                if not data or names is None:
                    continue
                for pos in range(0, len(data) - _SYM.size + 1, _SYM.size):
                    name_off, info, _other, shndx, value, size = _SYM.unpack_from(data, pos)
                    if info & 0xF not in (STT_FUNC, STT_GNU_IFUNC) or not value or not shndx:
                        continue
                    end = names.find(b"\0", name_off)
                    name = names[name_off:end].decode("utf-8", "replace")
                    bind = info >> 4
                    bind_rank = {STB_GLOBAL: 0, STB_WEAK: 1}.get(bind, 2)
                    key = (table_rank, bind_rank, len(name), name)
                    if value not in best or key < best[value][0]:
                        best[value] = (key, name, size)
        return {addr: (name, size) for addr, (_, name, size) in best.items()}

    # ------------------------------------------------------------------- FDEs

    def _fde_ranges(self) -> list[tuple[int, int]]:
        ranges: list[tuple[int, int]] = []
        for name, eh in ((".eh_frame", True), (".debug_frame", False)):
            for index, sec in enumerate(self.sections):
                if sec.name == name and not sec.nobits:
                    data = self._section_data(index)
                    if data:
                        ranges.extend(_parse_fde_headers(data, sec.addr, eh))
        return ranges

    def _functions(self) -> list[Function]:
        code = [(s.vaddr, s.vaddr + s.memsz) for s in self.module.loads if s.flags & 1]
        claimed: list[tuple[int, int]] = []
        functions: list[Function] = []
        for start, end in self._fde_ranges():
            if end <= start or not start or not any(lo <= start and end <= hi for lo, hi in code):
                continue  # discarded-section tombstones and garbage
            if _overlaps(claimed, start, end):
                continue  # first FDE wins, as in unwind_data
            bisect.insort(claimed, (start, end))
            name = self.symbols.get(start, (f"fde@{start:#x}", 0))[0]
            functions.append(Function(start, end, name, "fde"))
        for start, (name, size) in self.symbols.items():
            if size and not _overlaps(claimed, start, start + size):
                bisect.insort(claimed, (start, start + size))
                functions.append(Function(start, start + size, name, "symbol"))
        functions.sort(key=lambda f: f.start)
        return functions

    def function_at(self, vaddr: int) -> Function | None:
        i = bisect.bisect_right(self._starts, vaddr) - 1
        if i >= 0 and vaddr < self.functions[i].end:
            return self.functions[i]
        return None

    def find_function(self, name_or_addr: str) -> Function:
        """A function by symbol name, fde@0x... label, or hex address inside it."""
        for f in self.functions:
            if f.name == name_or_addr:
                return f
        try:
            addr = int(name_or_addr, 16)
        except ValueError:
            addr = None
        if addr is not None:
            found = self.function_at(addr)
            if found is not None:
                return found
        raise HarnessError(f"{self.path}: no function named {name_or_addr!r} "
                           "(give a symbol name or a hex address)")


def _overlaps(claimed: list[tuple[int, int]], start: int, end: int) -> bool:
    i = bisect.bisect_left(claimed, (start, start))
    if i < len(claimed) and claimed[i][0] < end:
        return True
    return i > 0 and claimed[i - 1][1] > start


def _uleb(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return result, pos


def _cie_fde_encoding(data: bytes, pos: int, end: int) -> int:
    """The FDE pointer encoding a CIE declares (augmentation 'R'); absptr if none.
    pos is just after the CIE id."""
    version = data[pos]
    pos += 1
    aug_end = data.index(b"\0", pos)
    aug = data[pos:aug_end].decode("ascii", "replace")
    pos = aug_end + 1
    if "eh" in aug:
        pos += 8
    if version >= 4:
        pos += 2  # address_size, segment_size
    _, pos = _uleb(data, pos)  # code alignment
    _, pos = _uleb(data, pos)  # data alignment (SLEB; only skipped)
    if version == 1:
        pos += 1
    else:
        _, pos = _uleb(data, pos)
    if not aug.startswith("z"):
        return 0
    _, pos = _uleb(data, pos)  # augmentation data length
    for ch in aug[1:]:
        if ch == "R":
            return data[pos]
        if ch == "L":
            pos += 1
        elif ch == "P":
            enc = data[pos]
            pos += 1 + _encoded_size(enc, data, pos)
        elif ch not in "SBG":
            return 0  # unknown augmentation: cannot read further
    return 0


def _encoded_size(enc: int, data: bytes, pos: int) -> int:
    fmt = _PE_FORMATS.get(enc & 0x0F)
    if fmt is not None:
        return struct.calcsize(fmt)
    if enc & 0x0F in (0x01, 0x09):
        return _uleb(data, pos)[1] - pos
    raise ValueError(f"pointer encoding {enc:#x}")


def _read_encoded(enc: int, data: bytes, pos: int, field_addr: int) -> tuple[int, int]:
    fmt = _PE_FORMATS.get(enc & 0x0F)
    if fmt is None:
        raise ValueError(f"pointer encoding {enc:#x}")
    (value,) = struct.unpack_from(fmt, data, pos)
    if enc & 0x70 == _PE_PCREL:
        value += field_addr
    return value & 0xFFFF_FFFF_FFFF_FFFF, pos + struct.calcsize(fmt)


def _parse_fde_headers(data: bytes, section_addr: int, eh: bool) -> list[tuple[int, int]]:
    """(pc_begin, pc_end) of every FDE of an .eh_frame or .debug_frame section.
    A malformed entry ends the walk of that section (what follows is unreliable)."""
    ranges = []
    encodings: dict[int, int] = {}
    pos = 0
    while pos + 4 <= len(data):
        (length,) = struct.unpack_from("<I", data, pos)
        if length == 0:
            pos += 4
            continue
        id_size, header = 4, 4
        if length == 0xFFFFFFFF:
            (length,) = struct.unpack_from("<Q", data, pos + 4)
            id_size, header = 8, 12
        body = pos + header
        end = body + length
        if end > len(data):
            break
        (cie_id,) = struct.unpack_from("<I" if id_size == 4 else "<Q", data, body)
        is_cie = cie_id == 0 if eh else cie_id == (1 << (8 * id_size)) - 1
        try:
            if is_cie:
                encodings[pos] = _cie_fde_encoding(data, body + id_size, end) if eh else 0
            else:
                cie_pos = body - cie_id if eh else cie_id
                enc = encodings.get(cie_pos)
                if enc is None:
                    enc = _cie_fde_encoding(data, _cie_body(data, cie_pos), end) if eh else 0
                field = body + id_size
                start, field_end = _read_encoded(enc, data, field, section_addr + field)
                size, _ = _read_encoded(enc & 0x0F, data, field_end, 0)
                if enc != _PE_OMIT:
                    ranges.append((start, start + size))
        except (IndexError, ValueError, struct.error):
            break
        pos = end
    return ranges


def _cie_body(data: bytes, cie_pos: int) -> int:
    (length,) = struct.unpack_from("<I", data, cie_pos)
    return cie_pos + (16 if length == 0xFFFFFFFF else 8)


@lru_cache(maxsize=32)
def _elf_code(path: str, content_id: str | None) -> ElfCode:
    return ElfCode(path, content_id)


def elf_code(path: str | os.PathLike[str], content_id: str | None = None) -> ElfCode:
    """A cached ElfCode (modules are immutable content-addressed files)."""
    return _elf_code(os.fspath(path), content_id)


def elf_code_for(module: Module) -> ElfCode:
    return elf_code(module.local_path, module.content_id)
