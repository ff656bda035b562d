"""Find a process's modules without NT_FILE: from the aux vector and the
dynamic linker's link_map in the core's memory.

qemu-user guest cores hold registers, the aux vector and writable memory,
but no file list and no read-only file pages. The executable's path is the
AT_EXECFN string (on the stack), its load bias follows from AT_ENTRY, and its
.dynamic section (relocated, so written, so in the core) leads through
DT_DEBUG to r_debug and the list of loaded objects with their load biases.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass

from ..errors import CoreError
from . import elf
from .elf import DT_DEBUG, DT_NULL, Dyn
from .elfcore import AT_EXECFN, CoreFile, FileMapping

MAX_DYNAMIC_ENTRIES = 1024
MAX_LINK_MAP_ENTRIES = 1024
MAX_PATH = 4096
# struct link_map's public head (<link.h>): l_addr, l_name, l_ld, l_next (then l_prev)
_LINK_MAP_HEAD = struct.Struct("<QQQQ")
_R_MAP_OFFSET = 8  # struct r_debug: int r_version (padded to 8), then r_map

Reader = Callable[[int, int], bytes | None]


@dataclass(frozen=True)
class LoadedObject:
    """One entry of the dynamic linker's list: a path and its load bias."""

    path: str
    bias: int


def read_cstring(read: Reader, addr: int, limit: int = MAX_PATH) -> str | None:
    """A NUL-terminated string, read in small pieces (it may end near a page end)."""
    out = bytearray()
    while len(out) < limit:
        chunk = read(addr + len(out), 1)
        if chunk is None:
            return None
        if chunk == b"\0":
            return out.decode(errors="replace")
        out += chunk
    return None


def executable_path(core: CoreFile) -> str | None:
    addr = core.auxv.get(AT_EXECFN)
    return read_cstring(core.read, addr) if addr else None


def _u64(read: Reader, addr: int) -> int | None:
    data = read(addr, 8)
    return None if data is None else int.from_bytes(data, "little")


def r_debug_address(read: Reader, dynamic_addr: int) -> int | None:
    """DT_DEBUG's value from the executable's in-memory .dynamic, if set."""
    for i in range(MAX_DYNAMIC_ENTRIES):
        entry = read(dynamic_addr + elf.DYN_SIZE * i, elf.DYN_SIZE)
        if entry is None:
            return None
        tag, value = Dyn.parse(entry)
        if tag == DT_NULL:
            return None
        if tag == DT_DEBUG:
            return value or None
    return None


def link_map_objects(read: Reader, r_debug: int) -> list[LoadedObject]:
    """Walk r_debug.r_map: struct link_map {l_addr, l_name, l_ld, l_next, l_prev}."""
    objects: list[LoadedObject] = []
    node = _u64(read, r_debug + _R_MAP_OFFSET)
    seen: set[int] = set()
    while node and node not in seen:
        if len(seen) == MAX_LINK_MAP_ENTRIES:
            raise CoreError(f"the dynamic linker's link_map has more than "
                            f"{MAX_LINK_MAP_ENTRIES} entries (the limit); corrupt memory?")
        seen.add(node)
        fields = read(node, _LINK_MAP_HEAD.size)
        if fields is None:
            break
        l_addr, l_name, _l_ld, l_next = _LINK_MAP_HEAD.unpack(fields)
        name = read_cstring(read, l_name) if l_name else ""
        if name:  # the executable's own entry has an empty name
            objects.append(LoadedObject(name, l_addr))
        node = l_next
    return objects


def synthesize_mappings(path: str, bias: int, loads: list[tuple[int, int, int]],
                        page_size: int) -> list[FileMapping]:
    """File mappings as the loader made them: one per PT_LOAD (offset, vaddr, memsz)."""
    mask = page_size - 1
    mappings = []
    for offset, vaddr, memsz in loads:
        start = bias + (vaddr & ~mask)
        end = bias + ((vaddr + memsz + mask) & ~mask)
        mappings.append(FileMapping(start, end, offset & ~mask, path))
    return mappings
