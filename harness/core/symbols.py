"""Function names for addresses of a module, for the people reading frames.

Case files keep the reference format (`libc.so.6+0xcf545`); the frames a person
reads (analyze, diffs, rebase and oracle reports) get the function beside them
(`clock_nanosleep+0x65`). The names come from wherever a distribution leaves
them, in this order of preference:

1. the module's own `.symtab`, else its `.dynsym`;
2. `.gnu_debugdata`: an xz-compressed ELF holding a `.symtab` of the functions
   (Fedora's "MiniDebugInfo"), for modules whose `.symtab` was stripped;
3. a separate debug file found by build id
   (`<debug dir>/.build-id/ab/cdef....debug`, as gdb looks for it).

A name is only given for an address inside the symbol's size, or for a
zero-size symbol up to the next one, so a stripped function is never named after
its neighbour. Everything here reads through a `read(offset, size)` function over
the file, so a mapped Module and a decompressed buffer are parsed alike.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import lzma
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from ..files import atomic_path
from ..paths import cache_root
from . import elf
from .elf import SHT_DYNSYM, SHT_NOBITS, SHT_SYMTAB, Ehdr, Shdr, Sym
from .module import Module

__all__ = ["SymbolTable", "function_symbols", "named_symbols", "build_id",
           "module_symbols", "DEBUG_DIRS"]

Reader = Callable[[int, int], bytes | None]
# Where separate debug files live (Debian's -dbgsym packages, gdb's default).
DEBUG_DIRS = ("/usr/lib/debug",)
# A compressed .gnu_debugdata larger than this is not decompressed (a hostile file).
MAX_DEBUGDATA = 64 << 20

_FUNCTION_KINDS = (elf.STT_FUNC, elf.STT_GNU_IFUNC)
_BIND_RANK = {elf.STB_GLOBAL: 0, elf.STB_WEAK: 1}  # then local
NT_GNU_BUILD_ID = 3


def _reader(data: bytes) -> Reader:
    def read(offset: int, size: int) -> bytes | None:
        if offset < 0 or size < 0 or offset + size > len(data):
            return None
        return data[offset:offset + size]
    return read


def _sections(read: Reader) -> tuple[list[Shdr], bytes]:
    """Section headers and the section-name string table ([] if there are none)."""
    head = read(0, elf.EHDR_SIZE)
    if head is None or elf.ident_problem(head):
        return [], b""
    ehdr = Ehdr.parse(head)
    if not ehdr.shoff or ehdr.shentsize != elf.SHDR_SIZE or not ehdr.shnum:
        return [], b""
    table = read(ehdr.shoff, ehdr.shnum * elf.SHDR_SIZE)
    if table is None:
        return [], b""
    headers = [Shdr.parse(table, i * elf.SHDR_SIZE) for i in range(ehdr.shnum)]
    names = b""
    if ehdr.shstrndx < len(headers):
        strtab = headers[ehdr.shstrndx]
        names = read(strtab.offset, strtab.size) or b""
    return headers, names


def _section_data(read: Reader, sh: Shdr) -> bytes | None:
    return None if sh.type == SHT_NOBITS else read(sh.offset, sh.size)


def _named(headers: list[Shdr], names: bytes, wanted: str) -> Shdr | None:
    for sh in headers:
        if sh.name < len(names) and elf.cstring(names, sh.name) == wanted:
            return sh
    return None


def _symbol_tables(read: Reader) -> Iterator[tuple[int, Sym, bytes]]:
    """(table rank, symbol, string table) of every defined symbol: .symtab's
    (rank 0) before .dynsym's (rank 1)."""
    headers, _ = _sections(read)
    for table_rank, wanted in enumerate((SHT_SYMTAB, SHT_DYNSYM)):
        for sec in headers:
            if sec.type != wanted or sec.link >= len(headers):
                continue
            data = _section_data(read, sec)
            names = _section_data(read, headers[sec.link])
            if not data or names is None:
                continue
            for pos in range(0, len(data) - elf.SYM_SIZE + 1, elf.SYM_SIZE):
                sym = Sym.parse(data, pos)
                if sym.value and sym.shndx and sym.name < len(names):
                    yield table_rank, sym, names


def function_symbols(read: Reader) -> dict[int, tuple[str, int]]:
    """{address: (name, size)} of an ELF file's function symbols: one name per
    address, .symtab before .dynsym, global before weak before local, then the
    shortest name."""
    best: dict[int, tuple[tuple[int, int, int, str], str, int]] = {}
    for table_rank, sym, names in _symbol_tables(read):
        if sym.kind not in _FUNCTION_KINDS:
            continue
        name = elf.cstring(names, sym.name)
        key = (table_rank, _BIND_RANK.get(sym.bind, 2), len(name), name)
        if sym.value not in best or key < best[sym.value][0]:
            best[sym.value] = (key, name, sym.size)
    return {addr: (name, size) for addr, (_, name, size) in best.items()}


def named_symbols(read: Reader, wanted: Iterable[str]) -> dict[str, tuple[int, int]]:
    """{name: (address, size)} of the wanted symbols of any kind (data too) that the
    file defines, .symtab before .dynsym: how a runtime's agent finds the
    variables and functions it reads (CPython's _PyRuntime, PyCode_Type)."""
    wanted_bytes = {name.encode() for name in wanted}
    found: dict[str, tuple[int, int]] = {}
    for _, sym, names in _symbol_tables(read):
        end = names.find(b"\0", sym.name)
        name = names[sym.name:end if end >= 0 else len(names)]
        if name in wanted_bytes and name.decode() not in found:
            found[name.decode()] = (sym.value, sym.size)
    return found


def build_id(read: Reader) -> str | None:
    """The GNU build id (hex) from the .note.gnu.build-id section, if any."""
    headers, names = _sections(read)
    sh = _named(headers, names, ".note.gnu.build-id")
    data = _section_data(read, sh) if sh else None
    pos = 0
    while data and pos + elf.NHDR_SIZE <= len(data):
        note = elf.Nhdr.parse(data, pos)
        name_at = pos + elf.NHDR_SIZE
        desc_at = name_at + (note.namesz + 3) // 4 * 4
        if note.type == NT_GNU_BUILD_ID and data[name_at:name_at + 3] == b"GNU":
            desc = data[desc_at:desc_at + note.descsz]
            return desc.hex() if len(desc) == note.descsz and desc else None
        pos = desc_at + (note.descsz + 3) // 4 * 4
    return None


def _debugdata(read: Reader) -> bytes | None:
    """The decompressed .gnu_debugdata ELF, or None (absent or not valid xz)."""
    headers, names = _sections(read)
    sh = _named(headers, names, ".gnu_debugdata")
    if sh is None or sh.size > MAX_DEBUGDATA:
        return None
    packed = _section_data(read, sh)
    if not packed:
        return None
    try:
        return lzma.decompress(packed, format=lzma.FORMAT_XZ, memlimit=MAX_DEBUGDATA * 4)
    except lzma.LZMAError:
        return None


def debug_file(build: str, debug_dirs: Iterable[str | os.PathLike[str]]) -> Path | None:
    """<dir>/.build-id/<first byte>/<rest>.debug in the first directory holding it."""
    if len(build) < 4:
        return None
    for base in debug_dirs:
        path = Path(base) / ".build-id" / build[:2] / f"{build[2:]}.debug"
        if path.is_file():
            return path
    return None


@dataclass(frozen=True)
class SymbolTable:
    """Function symbols sorted by address; `sources` says where they came from."""

    starts: list[int]
    names: list[str]
    ends: list[int]
    sources: tuple[str, ...]

    @classmethod
    def of(cls, symbols: dict[int, tuple[str, int]], sources: tuple[str, ...]) -> SymbolTable:
        starts = sorted(symbols)
        ends = []
        for i, start in enumerate(starts):
            size = symbols[start][1]
            following = starts[i + 1] if i + 1 < len(starts) else start + max(size, 1)
            ends.append(start + size if size else following)
        return cls(starts, [symbols[s][0] for s in starts], ends, sources)

    def __len__(self) -> int:
        return len(self.starts)

    def lookup(self, vaddr: int) -> str | None:
        """`name+0xoff` for an ELF virtual address, or None outside every function."""
        i = bisect.bisect_right(self.starts, vaddr) - 1
        if i < 0 or vaddr >= self.ends[i]:
            return None
        return f"{self.names[i]}+{vaddr - self.starts[i]:#x}"


def symbols_of(read: Reader,
               debug_dirs: Iterable[str | os.PathLike[str]] = DEBUG_DIRS) -> SymbolTable:
    """All function names of one ELF file, from its own tables, its .gnu_debugdata
    and its separate debug file (which win over .dynsym, having local functions)."""
    tables: list[tuple[str, dict[int, tuple[str, int]]]] = [("own", function_symbols(read))]
    build = build_id(read)
    found = debug_file(build, debug_dirs) if build else None
    if found is not None:
        try:
            tables.append((str(found), function_symbols(_reader(found.read_bytes()))))
        except OSError:
            pass  # unreadable: the names it would give are missing, nothing else
    mini = _debugdata(read)
    if mini is not None:
        tables.append((".gnu_debugdata", function_symbols(_reader(mini))))
    # Per address, the first table that names it wins.
    merged: dict[int, tuple[str, int]] = {}
    for _, symbols in reversed(tables):
        merged.update(symbols)
    sources = tuple(label for label, symbols in tables if symbols)
    return SymbolTable.of(merged, sources)


# By content id (a module's names never change) and debug directories.
_TABLES: dict[tuple[str, tuple[str, ...]], SymbolTable] = {}
_TABLE_LIMIT = 64


def module_symbols(module: Module,
                   debug_dirs: Iterable[str | os.PathLike[str]] = DEBUG_DIRS) -> SymbolTable:
    """The module's SymbolTable, parsed once per content id and cached on disk
    (libc's tables take a Python process 0.1-0.2 s to parse). The cache key covers
    the debug file found for the module, so installing one is seen at once."""
    dirs = tuple(str(d) for d in debug_dirs)
    key = (module.content_id, dirs)
    table = _TABLES.get(key)
    if table is None:
        table = _cached(module, dirs)
        if len(_TABLES) >= _TABLE_LIMIT:
            del _TABLES[next(iter(_TABLES))]
        _TABLES[key] = table
    return table


_CACHE_VERSION = 1


def _cached(module: Module, dirs: tuple[str, ...]) -> SymbolTable:
    build = build_id(module.read)
    found = debug_file(build, dirs) if build else None
    try:
        stamp = f"{found}:{found.stat().st_mtime_ns}" if found is not None else "-"
    except OSError:
        stamp = "-"
    digest = hashlib.sha256(f"{_CACHE_VERSION}\0{dirs}\0{stamp}".encode()).hexdigest()[:16]
    path = cache_root() / "symbols" / f"{module.content_id}-{digest}.json"
    try:
        doc = json.loads(path.read_text())
        return SymbolTable(doc["starts"], doc["names"], doc["ends"], tuple(doc["sources"]))
    except (OSError, ValueError, KeyError, TypeError):
        pass  # absent or not ours: parse again
    table = symbols_of(module.read, dirs)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps({"starts": table.starts, "names": table.names,
                                   "ends": table.ends, "sources": list(table.sources)}))
    return table
