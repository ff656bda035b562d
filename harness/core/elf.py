"""ELF64 little-endian records, declared once (the System V gABI and the Linux
<elf.h> layouts) and parsed into named tuples.

The process model reads headers of cores and modules many times per run, so these
are plain `struct` records rather than pyelftools objects: parsing one is a single
unpack, and importing this module costs nothing. Tools that need the rest of ELF
(symbols by name, DWARF, CFI) use pyelftools on top.
"""

from __future__ import annotations

import mmap
import struct
from typing import NamedTuple, Self, TypeAlias

# What records are parsed from: file contents, mapped or read.
Buffer: TypeAlias = bytes | bytearray | memoryview | mmap.mmap

ELF_MAGIC = b"\x7fELF"
ELFCLASS32, ELFCLASS64 = 1, 2
ELFDATA2LSB, ELFDATA2MSB = 1, 2
EI_CLASS, EI_DATA = 4, 5

ET_NONE, ET_REL, ET_EXEC, ET_DYN, ET_CORE = 0, 1, 2, 3, 4
ET_NAMES = {
    ET_NONE: "an ELF file of type ET_NONE",
    ET_REL: "an ELF relocatable object",
    ET_EXEC: "an ELF executable",
    ET_DYN: "an ELF shared object (or PIE executable)",
}

PT_LOAD, PT_DYNAMIC, PT_INTERP, PT_NOTE = 1, 2, 3, 4
PT_GNU_EH_FRAME = 0x6474E550
PF_X, PF_W, PF_R = 1, 2, 4
PN_XNUM = 0xFFFF  # e_phnum overflow marker: the real count is in section 0's sh_info

SHT_PROGBITS, SHT_SYMTAB, SHT_STRTAB, SHT_NOBITS, SHT_DYNSYM = 1, 2, 3, 8, 11
SHF_ALLOC, SHF_EXECINSTR = 2, 4
STT_FUNC, STT_GNU_IFUNC = 2, 10
STB_LOCAL, STB_GLOBAL, STB_WEAK = 0, 1, 2

DT_NULL, DT_DEBUG = 0, 21


class Ehdr(NamedTuple):
    """Elf64_Ehdr."""

    ident: bytes
    type: int
    machine: int
    version: int
    entry: int
    phoff: int
    shoff: int
    flags: int
    ehsize: int
    phentsize: int
    phnum: int
    shentsize: int
    shnum: int
    shstrndx: int

    @classmethod
    def parse(cls, data: Buffer, offset: int = 0) -> Self:
        return cls._make(_EHDR.unpack_from(data, offset))


class Phdr(NamedTuple):
    """Elf64_Phdr."""

    type: int
    flags: int
    offset: int
    vaddr: int
    paddr: int
    filesz: int
    memsz: int
    align: int

    @classmethod
    def parse(cls, data: Buffer, offset: int = 0) -> Self:
        return cls._make(_PHDR.unpack_from(data, offset))


class Shdr(NamedTuple):
    """Elf64_Shdr."""

    name: int
    type: int
    flags: int
    addr: int
    offset: int
    size: int
    link: int
    info: int
    addralign: int
    entsize: int

    @classmethod
    def parse(cls, data: Buffer, offset: int = 0) -> Self:
        return cls._make(_SHDR.unpack_from(data, offset))

    def pack(self) -> bytes:
        return _SHDR.pack(*self)


class Sym(NamedTuple):
    """Elf64_Sym."""

    name: int
    info: int
    other: int
    shndx: int
    value: int
    size: int

    @property
    def bind(self) -> int:
        return self.info >> 4

    @property
    def kind(self) -> int:  # STT_*
        return self.info & 0xF

    @classmethod
    def parse(cls, data: Buffer, offset: int = 0) -> Self:
        return cls._make(_SYM.unpack_from(data, offset))


class Nhdr(NamedTuple):
    """Elf64_Nhdr: a note's header; name and descriptor follow, each padded to 4."""

    namesz: int
    descsz: int
    type: int

    @classmethod
    def parse(cls, data: Buffer, offset: int = 0) -> Self:
        return cls._make(_NHDR.unpack_from(data, offset))


class Dyn(NamedTuple):
    """Elf64_Dyn: one .dynamic entry."""

    tag: int
    value: int

    @classmethod
    def parse(cls, data: Buffer, offset: int = 0) -> Self:
        return cls._make(_DYN.unpack_from(data, offset))


_EHDR = struct.Struct("<16sHHIQQQIHHHHHH")
_PHDR = struct.Struct("<IIQQQQQQ")
_SHDR = struct.Struct("<IIQQQQIIQQ")
_SYM = struct.Struct("<IBBHQQ")
_NHDR = struct.Struct("<III")
_DYN = struct.Struct("<qQ")

EHDR_SIZE = _EHDR.size  # 64
PHDR_SIZE = _PHDR.size  # 56
SHDR_SIZE = _SHDR.size  # 64
SYM_SIZE = _SYM.size  # 24
NHDR_SIZE = _NHDR.size  # 12
DYN_SIZE = _DYN.size  # 16
# Offsets of the fields rewritten when section headers are appended to an image.
EHDR_SHOFF = 0x28
EHDR_SHENTSIZE = 0x3A  # e_shentsize, e_shnum, e_shstrndx: three u16
SHDR_INFO = 44  # sh_info of section header 0 holds the real e_phnum under PN_XNUM


def ident_problem(data: Buffer) -> str | None:
    """What makes data not the start of an ELF64 little-endian file, or None."""
    if bytes(data[:4]) != ELF_MAGIC:
        return f"not an ELF file (starts with {bytes(data[:4]).hex(' ')})"
    if len(data) < 16:
        return f"truncated: ELF identification needs 16 bytes, the file has {len(data)}"
    ei_class, ei_data = data[EI_CLASS], data[EI_DATA]
    if ei_class == ELFCLASS32:
        return "ELFCLASS32 is unsupported (only 64-bit ELF)"
    if ei_class != ELFCLASS64:
        return f"invalid ELF class {ei_class}"
    if ei_data == ELFDATA2MSB:
        return "big-endian ELF is unsupported (only little-endian)"
    if ei_data != ELFDATA2LSB:
        return f"invalid ELF data encoding {ei_data}"
    if len(data) < EHDR_SIZE:
        return f"truncated: the ELF header needs {EHDR_SIZE} bytes, the file has {len(data)}"
    return None


def program_headers(data: Buffer, ehdr: Ehdr) -> list[Phdr]:
    """Every program header of an image whose header is ehdr (ValueError if truncated)."""
    end = ehdr.phoff + ehdr.phnum * PHDR_SIZE
    if ehdr.phnum and ehdr.phentsize != PHDR_SIZE:
        raise ValueError(f"unexpected e_phentsize {ehdr.phentsize} (expected {PHDR_SIZE})")
    if end > len(data):
        raise ValueError(f"truncated: {ehdr.phnum} program headers need {end} bytes, "
                         f"the file has {len(data)}")
    return [Phdr.parse(data, ehdr.phoff + i * PHDR_SIZE) for i in range(ehdr.phnum)]


def cstring(raw: Buffer, offset: int = 0) -> str:
    """The NUL-terminated string at offset (to the end if there is no NUL); undecodable
    bytes are kept with surrogateescape, so a name round-trips."""
    data = bytes(raw[offset:])
    return data.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
