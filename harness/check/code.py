"""The code model of a module, for the instruction-level tools: bytes by virtual
address, sections, function symbols and function bounds.

Site classification and the stack-delta check both need to know where a
function starts and ends. The unwinder's rules come per FDE, so FDE ranges
(.eh_frame, then .debug_frame) are the primary bounds; function symbols
(.symtab, else .dynsym) give them names and cover code without CFI.

The FDE ranges come with the module's unwind data (harness/unwind_data/),
which is cached per content hash and shared with the agent that filled the
maps for the same module: the CFI is parsed in one place only. What the
content says (CodeIndex) is parsed once per content hash; the bytes come from
the open process's own Module, so a module is not mapped a second time.
"""

from __future__ import annotations

import bisect
import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..arch import arch_of_machine
from ..core import elf
from ..core.elf import SHF_EXECINSTR, SHT_NOBITS, Ehdr, Shdr
from ..core.module import Module
from ..core.symbols import function_symbols
from ..errors import HarnessError, UnwindDataError
from ..files import atomic_path, sha256_file
from ..paths import cache_root
from ..unwind_data import FORMAT_VERSION, module_unwind_data
from ..unwind_data.pclntab import read_pclntab


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
    """[start, end) in ELF virtual addresses; source is "fde", "synthesized" (rules
    derived from its instructions) or "symbol"."""

    start: int
    end: int
    name: str
    source: str

    def label(self, vaddr: int) -> str:
        return f"{self.name}+{vaddr - self.start:#x}"


@dataclass(frozen=True)
class CodeIndex:
    """What a module's content says about its code, parsed once per content hash:
    its sections, function symbols and function bounds."""

    arch: str
    sections: list[Section]
    symbols: dict[int, tuple[str, int]]  # {address: (name, size)}
    functions: list[Function]
    starts: list[int]  # functions' start addresses, for bisect


_INDEX_LIMIT = 32
_INDEXES: dict[str, CodeIndex] = {}  # by content id, oldest first


_INDEX_VERSION = 2  # 2: Go function names from .gopclntab


def code_index(module: Module) -> CodeIndex:
    """The module's CodeIndex, parsed on first use and kept for later processes,
    in memory and on disk (modules are immutable under their content id; parsing
    libc's symbols and FDEs costs tens of milliseconds a process otherwise)."""
    index = _INDEXES.get(module.content_id)
    if index is None:
        path = (cache_root() / "code"
                / f"{module.content_id}.v{_INDEX_VERSION}.{FORMAT_VERSION}.json")
        index = _read_index(path)
        if index is None:
            index = _IndexBuilder(module).build()
            with atomic_path(path) as tmp:
                tmp.write_text(json.dumps(_index_json(index)))
        if len(_INDEXES) >= _INDEX_LIMIT:
            del _INDEXES[next(iter(_INDEXES))]
        _INDEXES[module.content_id] = index
    return index


def _index_json(index: CodeIndex) -> dict[str, Any]:
    return {"arch": index.arch,
            "sections": [dataclasses.astuple(s) for s in index.sections],
            "symbols": [[addr, name, size] for addr, (name, size) in index.symbols.items()],
            "functions": [dataclasses.astuple(f) for f in index.functions]}


def _read_index(path: Path) -> CodeIndex | None:
    """A cached index; None if absent or not what _index_json wrote."""
    try:
        doc = json.loads(path.read_text())
        functions = [Function(*f) for f in doc["functions"]]
        return CodeIndex(doc["arch"], [Section(*s) for s in doc["sections"]],
                         {addr: (name, size) for addr, name, size in doc["symbols"]},
                         functions, [f.start for f in functions])
    except (OSError, ValueError, KeyError, TypeError):
        return None


class _IndexBuilder:
    """Parses sections, symbols and function bounds out of one module."""

    def __init__(self, module: Module) -> None:
        self.module = module
        self.path = module.local_path

    def build(self) -> CodeIndex:
        arch = arch_of_machine(self.module.machine)
        if arch is None:
            raise HarnessError(f"{self.path}: unsupported machine {self.module.machine} "
                               "(only x86_64 and aarch64)")
        head = self._raw(0, elf.EHDR_SIZE)
        assert head is not None  # Module checked the ELF header
        self._raw_sections = self._section_headers(Ehdr.parse(head))
        symbols = self._function_symbols()
        functions = self._functions(symbols)
        return CodeIndex(arch.name, self._sections(), symbols, functions,
                         [f.start for f in functions])

    def _raw(self, offset: int, size: int) -> bytes | None:
        return self.module.read(offset, size)

    # ---------------------------------------------------------------- sections

    def _section_headers(self, ehdr: Ehdr) -> list[Shdr]:
        self._shstrndx = ehdr.shstrndx
        if not ehdr.shoff or ehdr.shentsize != elf.SHDR_SIZE or not ehdr.shnum:
            return []  # stripped of section headers: segments only
        headers = []
        for i in range(ehdr.shnum):
            data = self._raw(ehdr.shoff + i * elf.SHDR_SIZE, elf.SHDR_SIZE)
            if data is None:
                return []
            headers.append(Shdr.parse(data))
        return headers

    def _sections(self) -> list[Section]:
        if not self._raw_sections:
            return []
        strtab = self._raw_sections[self._shstrndx] \
            if self._shstrndx < len(self._raw_sections) else None
        names = (self._raw(strtab.offset, strtab.size) or b"") if strtab else b""
        return [Section(elf.cstring(names, sh.name) if sh.name < len(names) else "", sh.addr,
                        sh.size, sh.entsize, sh.flags, sh.type == SHT_NOBITS)
                for sh in self._raw_sections]

    def _section_data(self, index: int) -> bytes | None:
        sh = self._raw_sections[index]
        return None if sh.type == SHT_NOBITS else self._raw(sh.offset, sh.size)

    # ----------------------------------------------------------------- symbols

    def _function_symbols(self) -> dict[int, tuple[str, int]]:
        """The module's own function symbols (core/symbols.py; no debug files, so the
        function bounds depend on the module's content only), and where a Go binary
        was stripped, its functions by their .gopclntab names."""
        symbols = function_symbols(self._raw)
        try:
            table = read_pclntab(self.module.local_path)
        except (OSError, UnwindDataError):
            table = None
        if table is not None:
            for func in table.functions:
                symbols.setdefault(func.entry, (table.name(func), func.end - func.entry))
        return symbols

    # ------------------------------------------------------------------- FDEs

    def _functions(self, symbols: dict[int, tuple[str, int]]) -> list[Function]:
        module = self.module
        data = module_unwind_data(module.local_path, module.content_id, cache_root())
        claimed: list[tuple[int, int]] = []
        functions: list[Function] = []
        for start, end in data.fde_ranges:  # over code only; tombstones are dropped
            if _overlaps(claimed, start, end):
                continue  # first FDE wins, as in unwind_data
            bisect.insort(claimed, (start, end))
            name = symbols.get(start, (f"fde@{start:#x}", 0))[0]
            functions.append(Function(start, end, name, "fde"))
        for start, end in data.synthesized:  # rules from the instructions: same checks
            if not _overlaps(claimed, start, end):
                bisect.insort(claimed, (start, end))
                name = symbols.get(start, (f"code@{start:#x}", 0))[0]
                functions.append(Function(start, end, name, "synthesized"))
        for start, (name, size) in symbols.items():
            if size and not _overlaps(claimed, start, start + size):
                bisect.insort(claimed, (start, start + size))
                functions.append(Function(start, start + size, name, "symbol"))
        functions.sort(key=lambda f: f.start)
        return functions


class ElfCode:
    """Read-only view of a module's code: bytes by virtual address, sections,
    symbols and function bounds. Wraps an open Module; does not close it."""

    def __init__(self, module: Module) -> None:
        self.module = module
        self.path = module.local_path
        index = code_index(module)
        self.arch = index.arch
        self.sections = index.sections
        self.symbols = index.symbols
        self.functions = index.functions
        self._starts = index.starts

    def read(self, vaddr: int, size: int) -> bytes | None:
        """File-backed bytes at an ELF virtual address (None outside PT_LOADs)."""
        return self.module.read_vaddr(vaddr, size)

    def code_bytes(self, start: int, end: int) -> bytes:
        """As many bytes of [start, end) as the file holds, from start on."""
        seg = self.module.segment_at(start)
        if seg is None:
            return b""
        stop = min(end, seg.vaddr + seg.filesz)
        return self.module.read(seg.offset + start - seg.vaddr, stop - start) or b""

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


class CodeModels:
    """The code model of each module of one open process, built on first use from
    the process's own Module objects (valid while the process is open)."""

    def __init__(self) -> None:
        self._by_content: dict[str, ElfCode] = {}

    def of(self, module: Module) -> ElfCode:
        code = self._by_content.get(module.content_id)
        if code is None:
            code = self._by_content[module.content_id] = ElfCode(module)
        return code


def open_code(path: str | os.PathLike[str], content_id: str | None = None) -> ElfCode:
    """The code model of an ELF file on its own (validate-deltas); close its module
    when done (`code.module.close()`)."""
    return ElfCode(Module(os.fspath(path), path, content_id or sha256_file(path)))
