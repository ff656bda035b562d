"""Go's pclntab (`.gopclntab`): the function table every Go binary carries.

Go code has no `.eh_frame`, and release builds strip the symbols and DWARF
(`-ldflags=-s -w`), but the runtime needs its own table of functions for
tracebacks and the garbage collector, so it survives every build. For each
function it holds the entry address, the name and varint-encoded per-PC tables:
`pcsp` (how far SP is below the frame's top: the stack delta), `pcfile` and
`pcln` (source position). A profiler's agent reads it to unwind and symbolize
Go code; so do we (go_deltas.py turns pcsp into stack deltas; formatting names
Go frames from it).

The layout changed with Go 1.2, 1.16, 1.18 and 1.20, each marked by the magic
number at the start of the table (the runtime's `runtime/symtab.go` and
`debug/gosym` read the same). Everything a file says is bounds-checked: a
truncated or foreign table is a `PclntabError`, never an IndexError.
"""

from __future__ import annotations

import bisect
import mmap
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property

from ..core import elf
from ..errors import UnwindDataError

__all__ = ["GoFunc", "Pclntab", "PclntabError", "read_pclntab", "MAGICS", "PCLNTAB_SECTIONS"]

# magic -> the first Go version with that layout
MAGICS = {0xFFFFFFFB: "1.2", 0xFFFFFFFA: "1.16", 0xFFFFFFF0: "1.18", 0xFFFFFFF1: "1.20"}
# Where linkers put the table: .gopclntab (internal and external linking), and
# .data.rel.ro.gopclntab in some position-independent builds.
PCLNTAB_SECTIONS = (".gopclntab", ".data.rel.ro.gopclntab")
# A pc-value table entry cannot cover more than its function; a function longer
# than this many entries is corrupt (the largest real ones have a few thousand).
MAX_PCVALUE_ENTRIES = 1 << 20


class PclntabError(UnwindDataError):
    """A .gopclntab that is truncated, of an unknown version or otherwise unusable."""


@dataclass(frozen=True)
class GoFunc:
    """One function of the table (offsets are as stored: see Pclntab)."""

    entry: int  # ELF virtual address of the first instruction
    end: int  # the next function's entry (the table's end address for the last)
    name_off: int
    pcsp: int
    pcfile: int
    pcln: int
    cu_offset: int  # Go 1.16+: the function's first entry in the compilation-unit file table
    func_id: int  # runtime's funcID (0 = normal); only Go 1.16+ records it in every version


def _uvarint(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(data):
            raise PclntabError("a pc-value table runs past the end of .gopclntab")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise PclntabError("an overlong varint in .gopclntab")


class Pclntab:
    """A parsed pclntab. `data` is the section's bytes, `text_start` the address of
    the text section (used where the table stores no text base, or stores 0 for
    a relocation the loader fills in)."""

    def __init__(self, data: bytes, text_start: int = 0) -> None:
        self.data = data
        if len(data) < 16:
            raise PclntabError(f".gopclntab is only {len(data)} bytes long")
        magic, pad1, pad2, quantum, ptr_size = struct.unpack_from("<IBBBB", data)
        self.version = MAGICS.get(magic, "")
        if not self.version:
            known = ", ".join(f"{m:#x} (Go {v})" for m, v in MAGICS.items())
            raise PclntabError(f".gopclntab has magic {magic:#x}, which is no known Go layout "
                               f"(known: {known}); the binary is from a Go version this "
                               "harness does not read")
        if pad1 or pad2 or quantum not in (1, 2, 4) or ptr_size not in (4, 8):
            raise PclntabError(f".gopclntab header is malformed (quantum {quantum}, "
                               f"pointer size {ptr_size})")
        self.quantum = quantum
        self.ptr_size = ptr_size
        self._ptr = "<Q" if ptr_size == 8 else "<I"
        words = 8 if self.version in ("1.18", "1.20") else 7 if self.version == "1.16" else 1
        header = [self._word(8 + i * ptr_size) for i in range(words)]
        self.nfunc = header[0]
        if self.version == "1.2":
            self.functab = 8 + ptr_size
            self.funcnametab = self.pctab = self.cutab = self.filetab = 0
            self.text_start = 0
            self._filetab_1_2 = self._u32(self.functab + (2 * self.nfunc + 1) * ptr_size)
        else:
            rest = header[2:]
            if self.version == "1.16":
                self.text_start = 0
            else:
                self.text_start, rest = rest[0] or text_start, rest[1:]
            self.funcnametab, self.cutab, self.filetab, self.pctab, self.functab = rest
        entry_size = 8 if self.version in ("1.18", "1.20") else 2 * ptr_size
        if self.nfunc <= 0 or self.functab + (self.nfunc + 1) * entry_size > len(data):
            raise PclntabError(f".gopclntab declares {self.nfunc} functions, more than its "
                               f"{len(data)} bytes hold")

    # ---- raw reads ----------------------------------------------------------

    def _u32(self, pos: int) -> int:
        if pos < 0 or pos + 4 > len(self.data):
            raise PclntabError(f"offset {pos:#x} is outside .gopclntab")
        return int.from_bytes(self.data[pos:pos + 4], "little")

    def _word(self, pos: int) -> int:
        if pos < 0 or pos + self.ptr_size > len(self.data):
            raise PclntabError(f"offset {pos:#x} is outside .gopclntab")
        return int(struct.unpack_from(self._ptr, self.data, pos)[0])

    def _cstring(self, pos: int) -> str:
        if not 0 <= pos < len(self.data):
            raise PclntabError(f"string offset {pos:#x} is outside .gopclntab")
        end = self.data.find(b"\0", pos)
        return self.data[pos:end if end >= 0 else len(self.data)].decode(errors="replace")

    # ---- the function table -------------------------------------------------

    def _functab_entry(self, i: int) -> tuple[int, int]:
        """(entry address, offset of the _func record) of function i; for i == nfunc the
        end address of the last function (and 0)."""
        if self.version in ("1.18", "1.20"):
            pos = self.functab + 8 * i
            entry = self.text_start + self._u32(pos)
            return entry, (self.functab + self._u32(pos + 4)) if i < self.nfunc else 0
        pos = self.functab + 2 * self.ptr_size * i
        entry = self._word(pos)
        if i == self.nfunc:
            return entry, 0
        base = 0 if self.version == "1.2" else self.functab
        return entry, base + self._word(pos + self.ptr_size)

    def _func(self, i: int, entry: int, end: int, off: int) -> GoFunc:
        """Decode one _func record (runtime/runtime2.go's `_func`, per version)."""
        # the fields after the entry: nameoff, args, deferreturn/frame, pcsp, pcfile,
        # pcln, npcdata, then (1.16+) cuOffset, (1.20) startLine, funcID
        fields = off + (4 if self.version in ("1.18", "1.20") else self.ptr_size)
        size = {"1.2": 32, "1.20": 40}.get(self.version, 36)
        if fields + size > len(self.data):
            raise PclntabError(f"function {i} of .gopclntab is outside it")
        name_off, _args, _deferreturn, pcsp, pcfile, pcln, _npcdata = struct.unpack_from(
            "<iiIIIII", self.data, fields)
        cu_offset = func_id = 0
        if self.version != "1.2":
            cu_offset = self._u32(fields + 28)
            func_id = self.data[fields + (36 if self.version == "1.20" else 32)]
        return GoFunc(entry, end, name_off, pcsp, pcfile, pcln, cu_offset, func_id)

    @cached_property
    def functions(self) -> list[GoFunc]:
        """Every function, in address order (the table is sorted)."""
        entries = [self._functab_entry(i) for i in range(self.nfunc + 1)]
        funcs = []
        for i in range(self.nfunc):
            (entry, off), (end, _) = entries[i], entries[i + 1]
            if end < entry:
                raise PclntabError(f"function {i} of .gopclntab ends before it starts")
            funcs.append(self._func(i, entry, end, off))
        return funcs

    @cached_property
    def _entries(self) -> list[int]:
        return [f.entry for f in self.functions]

    def function_at(self, pc: int) -> GoFunc | None:
        """The function whose code holds pc, if any."""
        i = bisect.bisect_right(self._entries, pc) - 1
        if i < 0:
            return None
        func = self.functions[i]
        return func if pc < func.end else None

    def name(self, func: GoFunc) -> str:
        return self._cstring(self.funcnametab + func.name_off)

    # ---- pc-value tables ----------------------------------------------------

    def pcvalues(self, func: GoFunc, table: int) -> Iterator[tuple[int, int, int]]:
        """(start, end, value) runs of one of a function's pc-value tables (an offset
        such as func.pcsp), in address order. The encoding (runtime/symtab.go
        `step`): pairs of a zig-zag value delta and a pc delta in instruction
        quanta, the value starting at -1, the table ending at a zero value delta."""
        if table == 0:
            return
        data, pos, pc, value = self.data, self.pctab + table, func.entry, -1
        for count in range(MAX_PCVALUE_ENTRIES):
            delta, pos = _uvarint(data, pos)
            if delta == 0 and count:
                return
            value += -((delta + 1) >> 1) if delta & 1 else delta >> 1
            step, pos = _uvarint(data, pos)
            end = pc + step * self.quantum
            if end > func.end:
                raise PclntabError(f"a pc-value table of {self.name(func)} runs past the "
                                   "function's end")
            yield pc, end, value
            pc = end
        raise PclntabError(f"a pc-value table of {self.name(func)} does not end")

    def value_at(self, func: GoFunc, table: int, pc: int) -> int | None:
        for start, end, value in self.pcvalues(func, table):
            if start <= pc < end:
                return value
        return None

    def file_name(self, func: GoFunc, index: int) -> str:
        """The source file numbered `index` in a function's pcfile table."""
        if index < 0:
            return "?"
        if self.version == "1.2":
            if index >= self._u32(self._filetab_1_2):
                return "?"
            return self._cstring(self._u32(self._filetab_1_2 + 4 * index))
        offset = self._u32(self.cutab + 4 * (func.cu_offset + index))
        return "?" if offset == 0xFFFFFFFF else self._cstring(self.filetab + offset)

    def source_line(self, pc: int) -> tuple[GoFunc, str, str, int] | None:
        """(function, its name, file, line) of the instruction at pc. For an inlined
        call the position is the inlined code's and the name the physical
        function's, as the Go runtime's FuncForPC(pc).FileLine(pc) reports it."""
        func = self.function_at(pc)
        if func is None:
            return None
        file_index = self.value_at(func, func.pcfile, pc)
        line = self.value_at(func, func.pcln, pc)
        file = self.file_name(func, file_index) if file_index is not None else "?"
        return func, self.name(func), file, line if line is not None else 0


def _section(mm: mmap.mmap) -> tuple[bytes, int] | None:
    """(bytes of the pclntab section, address of .text), or None if there is none."""
    head = mm[:elf.EHDR_SIZE]
    if elf.ident_problem(head):
        return None
    ehdr = elf.Ehdr.parse(head)
    if not ehdr.shoff or ehdr.shentsize != elf.SHDR_SIZE or not ehdr.shnum \
            or ehdr.shoff + ehdr.shnum * elf.SHDR_SIZE > len(mm):
        return None
    headers = [elf.Shdr.parse(mm, ehdr.shoff + i * elf.SHDR_SIZE) for i in range(ehdr.shnum)]
    if ehdr.shstrndx >= len(headers):
        return None
    names_hdr = headers[ehdr.shstrndx]
    names = mm[names_hdr.offset:names_hdr.offset + names_hdr.size]
    by_name: dict[str, elf.Shdr] = {}
    for shdr in headers:
        if shdr.name < len(names):
            by_name.setdefault(elf.cstring(names, shdr.name), shdr)
    text = by_name.get(".text")
    for name in PCLNTAB_SECTIONS:
        found = by_name.get(name)
        if found is not None and found.type != elf.SHT_NOBITS:
            if found.offset + found.size > len(mm):
                raise PclntabError(f"{name} runs past the end of the file")
            return bytes(mm[found.offset:found.offset + found.size]), text.addr if text else 0
    return None


def read_pclntab(path: str | os.PathLike[str]) -> Pclntab | None:
    """The Go function table of an ELF file, or None if it is not a Go binary."""
    with open(path, "rb") as f:
        if os.fstat(f.fileno()).st_size == 0:
            return None
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            found = _section(mm)
    return None if found is None else Pclntab(*found)
