"""Function bounds of an ELF module, for the instruction-level tools.

Site classification and the stack-delta check both need to know where a
function starts and ends. The unwinder's rules come per FDE, so FDE ranges
(.eh_frame, then .debug_frame) are the primary bounds; function symbols
(.symtab, else .dynsym) give them names and cover code without CFI.

The FDE ranges come with the module's unwind data (harness/unwind_data.py),
which is cached per content hash and already loaded by any replay of the
module: the CFI is parsed in one place only.
"""

from __future__ import annotations

import bisect
import os
import struct
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from .build import cache_root
from .errors import HarnessError
from .process import Module
from .store import sha256_file
from .unwind_data import load_unwind_data

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
        content_id = self.module.content_id or sha256_file(self.path)
        return load_unwind_data(self.path, content_id, cache_root()).fde_ranges

    def _functions(self) -> list[Function]:
        claimed: list[tuple[int, int]] = []
        functions: list[Function] = []
        for start, end in self._fde_ranges():  # over code only; tombstones are dropped
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


@lru_cache(maxsize=32)
def _elf_code(path: str, content_id: str | None) -> ElfCode:
    return ElfCode(path, content_id)


def elf_code(path: str | os.PathLike[str], content_id: str | None = None) -> ElfCode:
    """A cached ElfCode (modules are immutable content-addressed files)."""
    return _elf_code(os.fspath(path), content_id)


def elf_code_for(module: Module) -> ElfCode:
    return elf_code(module.local_path, module.content_id)
