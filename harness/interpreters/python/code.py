"""Names for the (code object, instruction offset) pairs the unwinder records.

A Python frame prints as `<function>+<line offset> in <file>:<line>`, the line
offset being the line minus the code object's first line (the reference tool's
spelling). The function is co_qualname where the version has one (3.11+), else
co_name. The line of an instruction comes from the code object's line table:
co_lnotab (<= 3.9), co_linetable (3.10) or the location table (3.11+). Code objects
are read from the process once each (CodeReader caches them).
"""

from __future__ import annotations

from dataclasses import dataclass

from ...core.process import Process
from .layout import PythonLayout

__all__ = ["CodeInfo", "CodeReader", "line_for", "lnotab_line", "linetable310_line",
           "location_line"]

# PyUnicodeObject (Include/cpython/unicodeobject.h): length at 16, state at 32;
# state bits: interned 2, kind 3, compact 1, ascii 1 (the same in 3.6 to 3.13).
_STR_LENGTH, _STR_STATE = 16, 32
# PyBytesObject (Include/cpython/bytesobject.h): ob_size at 16, ob_sval at 32.
_BYTES_SIZE, _BYTES_DATA = 16, 32
_MAX_TEXT = 4096      # longer names or files are not read (a hostile core)
_MAX_TABLE = 1 << 20


@dataclass(frozen=True)
class CodeInfo:
    name: str
    filename: str
    firstlineno: int
    linetable: bytes


def lnotab_line(table: bytes, first: int, offset: int) -> int:
    """co_lnotab (3.6-3.9, Objects/lnotab_notes.txt): (bytecode delta, signed line
    delta) pairs; the line of the last pair that starts at or before offset."""
    line, addr = first, 0
    for i in range(0, len(table) - 1, 2):
        addr += table[i]
        if addr > offset:
            break
        delta = table[i + 1]
        line += delta - 256 if delta >= 128 else delta
    return line


def linetable310_line(table: bytes, first: int, offset: int) -> int | None:
    """co_linetable of 3.10: (bytecode length, signed line delta) pairs, -128 for
    instructions with no line."""
    line, addr = first, 0
    for i in range(0, len(table) - 1, 2):
        end = addr + table[i]
        delta = table[i + 1]
        if delta != 0x80:
            line += delta - 256 if delta >= 128 else delta
        if addr <= offset < end:
            return None if delta == 0x80 else line
        addr = end
    return None


def _varint(table: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while pos < len(table):
        b = table[pos]
        pos += 1
        value |= (b & 63) << shift
        shift += 6
        if not b & 64:
            break
    return value, pos


def _svarint(table: bytes, pos: int) -> tuple[int, int]:
    value, pos = _varint(table, pos)
    return (-(value >> 1) if value & 1 else value >> 1), pos


def location_line(table: bytes, first: int, offset: int) -> int | None:
    """The 3.11+ location table (Objects/locations.md): entries of a header byte
    (1, code: 4 bits, code units - 1: 3 bits) and a code-dependent tail; codes 0-9
    keep the line, 10-12 add code-10, 13 and 14 add a signed varint, 15 has no line."""
    line, unit, pos, target = first, 0, 0, offset // 2
    while pos < len(table):
        head = table[pos]
        pos += 1
        code, length = (head >> 3) & 15, (head & 7) + 1
        here: int | None = line
        if code == 15:
            here = None
        elif code == 14:
            delta, pos = _svarint(table, pos)
            line += delta
            here = line
            for _ in range(3):
                _, pos = _varint(table, pos)
        elif code == 13:
            delta, pos = _svarint(table, pos)
            line += delta
            here = line
        elif code >= 10:
            line += code - 10
            here = line
            pos += 2
        else:
            pos += 1
        if unit <= target < unit + length:
            return here
        unit += length
    return None


def line_for(version: tuple[int, int], info: CodeInfo, offset: int) -> int | None:
    if version >= (3, 11):
        return location_line(info.linetable, info.firstlineno, offset)
    if version == (3, 10):
        return linetable310_line(info.linetable, info.firstlineno, offset)
    return lnotab_line(info.linetable, info.firstlineno, offset)


class CodeReader:
    """Reads code objects of one interpreter build from a process, once each."""

    def __init__(self, process: Process, layout: PythonLayout,
                 fault_addresses: frozenset[int] = frozenset()) -> None:
        self.process = process
        self.layout = layout
        # Reads covering one of these fail, as the unwinder's do (a case's
        # fault-addresses): a code object that cannot be read.
        self.fault_addresses = fault_addresses
        self.faults_hit: set[int] = set()
        self._cache: dict[int, CodeInfo | None] = {}

    def _read(self, addr: int, size: int) -> bytes | None:
        hit = {a for a in self.fault_addresses if addr <= a < addr + size}
        if hit:
            self.faults_hit |= hit
            return None
        return self.process.read(addr, size)

    def _u64(self, addr: int) -> int | None:
        data = self._read(addr, 8)
        return int.from_bytes(data, "little") if data is not None else None

    def _str(self, addr: int | None) -> str | None:
        if not addr:
            return None
        head = self._read(addr, _STR_STATE + 4)
        if head is None:
            return None
        length = int.from_bytes(head[_STR_LENGTH:_STR_LENGTH + 8], "little")
        state = int.from_bytes(head[_STR_STATE:_STR_STATE + 4], "little")
        kind, compact, ascii_ = (state >> 2) & 7, (state >> 5) & 1, (state >> 6) & 1
        if not compact or kind not in (1, 2, 4) or length > _MAX_TEXT:
            return None
        facts = self.layout.facts
        start = addr + (facts.ascii_size if ascii_ else facts.compact_size)
        data = self._read(start, length * kind)
        if data is None:
            return None
        codec = {1: "latin-1", 2: "utf-16-le", 4: "utf-32-le"}[kind]
        return data.decode(codec, errors="replace")

    def _bytes(self, addr: int | None) -> bytes | None:
        if not addr:
            return None
        size = self._u64(addr + _BYTES_SIZE)
        if size is None or size > _MAX_TABLE:
            return None
        return self._read(addr + _BYTES_DATA, size)

    def code(self, addr: int) -> CodeInfo | None:
        """The code object at addr, or None if it cannot be read."""
        if addr in self._cache:
            return self._cache[addr]
        fields = self.layout.code
        name_field = fields.qualname if fields.qualname is not None else fields.name
        name = self._str(self._u64(addr + name_field))
        filename = self._str(self._u64(addr + fields.filename))
        first = self._read(addr + fields.firstlineno, 4)
        table = self._bytes(self._u64(addr + fields.linetable))
        info = None
        if name is not None and filename is not None and first is not None \
                and table is not None:
            info = CodeInfo(name, filename, int.from_bytes(first, "little", signed=True),
                            table)
        self._cache[addr] = info
        return info

    def frame(self, code_addr: int, offset: int) -> str:
        """The frame's spelling in case files."""
        info = self.code(code_addr)
        if info is None:
            return "<error python_code_unreadable>"
        line = line_for(self.layout.version, info, offset)
        if line is None:
            line = info.firstlineno
        return f"{info.name}+{line - info.firstlineno} in {info.filename}:{line}"
