"""The process model: a core's threads and memory plus the module files it mapped.

Memory reads come from the core where it holds the bytes and otherwise from
the file behind the mapping (cores normally leave out unmodified file pages,
such as code and read-only data). Module files are mapped, not read.
"""

from __future__ import annotations

import bisect
import hashlib
import mmap
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path

from . import linkmap
from .elfcore import CoreFile, FileMapping, ThreadState
from .errors import HarnessError

_EHDR = struct.Struct("<16sHHIQQQIHHHHHH")
_PHDR = struct.Struct("<IIQQQQQQ")
PT_LOAD = 1
PT_DYNAMIC = 2
PT_INTERP = 3


@dataclass(frozen=True)
class LoadSegment:
    offset: int
    vaddr: int
    filesz: int
    memsz: int
    flags: int


def file_id_for(content_id: str) -> int:
    """64-bit module id for the maps: the first 8 bytes of the content hash."""
    return int.from_bytes(bytes.fromhex(content_id)[:8], "little") or 1


class Module:
    """An ELF file that was mapped into the process, available locally."""

    def __init__(self, path: str, local_path: str | os.PathLike[str],
                 content_id: str | None = None) -> None:
        self.path = path
        self.local_path = Path(local_path)
        self.name = os.path.basename(path)
        try:
            with open(self.local_path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if size else b""
        except OSError as e:
            raise HarnessError(f"cannot open module {path} ({self.local_path}): "
                               f"{e.strerror}") from e
        if content_id is None:
            content_id = hashlib.sha256(self._map).hexdigest()
        self.content_id = content_id
        self.file_id = file_id_for(content_id)
        self.entry = 0
        self.dynamic_vaddr: int | None = None
        self.loads, self.interp = self._parse_headers()

    def _parse_headers(self) -> tuple[list[LoadSegment], str | None]:
        data = self._map
        if len(data) < _EHDR.size or data[:4] != b"\x7fELF":
            raise HarnessError(f"module {self.path} ({self.local_path}) is not an ELF file")
        if data[4] != 2 or data[5] != 1:
            raise HarnessError(f"module {self.path}: only 64-bit little-endian ELF is supported")
        ehdr = _EHDR.unpack_from(data, 0)
        self.entry = ehdr[4]
        phoff, phentsize, phnum = ehdr[5], ehdr[9], ehdr[10]
        loads, interp = [], None
        for i in range(phnum):
            pos = phoff + i * phentsize
            if pos + _PHDR.size > len(data):
                raise HarnessError(f"module {self.path}: program headers are truncated")
            p_type, p_flags, p_offset, p_vaddr, _, p_filesz, p_memsz, _ = _PHDR.unpack_from(data,
                                                                                             pos)
            if p_type == PT_LOAD:
                loads.append(LoadSegment(p_offset, p_vaddr, p_filesz, p_memsz, p_flags))
            elif p_type == PT_DYNAMIC:
                self.dynamic_vaddr = p_vaddr
            elif p_type == PT_INTERP:
                interp = bytes(data[p_offset:p_offset + p_filesz]).split(b"\0")[0].decode()
        return loads, interp

    @property
    def size(self) -> int:
        return len(self._map)

    def load_for_offset(self, file_offset: int) -> LoadSegment | None:
        """The PT_LOAD a mapping at this (page-aligned) file offset comes from."""
        for seg in self.loads:
            if seg.offset <= file_offset < seg.offset + max(seg.filesz, 1):
                return seg
        for seg in self.loads:  # p_offset need not be page aligned
            if file_offset <= seg.offset < file_offset + 0x10000:
                return seg
        return None

    def read(self, offset: int, size: int) -> bytes | None:
        if offset < 0 or offset + size > len(self._map):
            return None
        return bytes(self._map[offset:offset + size])

    def close(self) -> None:
        if isinstance(self._map, mmap.mmap):
            self._map.close()


@dataclass
class Mapping:
    """A file mapping of the process, with the module behind it if we have it."""

    start: int
    end: int
    file_offset: int
    path: str
    module: Module | None = None
    load: LoadSegment | None = None

    @property
    def bias(self) -> int:
        """ELF virtual address = address - bias."""
        if self.load is None:
            return self.start - self.file_offset
        return self.start - self.load.vaddr + self.load.offset - self.file_offset

    def read(self, addr: int, size: int) -> bytes | None:
        if self.module is None or addr + size > self.end:
            return None
        offset = self.file_offset + (addr - self.start)
        if self.load is not None and offset + size > self.load.offset + self.load.filesz:
            return None  # beyond the file-backed part (e.g. .bss): only the core has it
        return self.module.read(offset, size)


@dataclass
class Process:
    """A frozen process: threads, mappings and a memory reader."""

    core: CoreFile
    modules: dict[str, Module] = field(default_factory=dict)  # by original path
    mappings: list[Mapping] = field(default_factory=list)

    def __post_init__(self) -> None:
        # Modules whose file served a memory read (they must be bundled).
        self.read_from: set[str] = set()
        if not self.mappings:
            if self.core.mappings:
                self._set_mappings([self._mapping(m) for m in self.core.mappings])
            else:
                self._set_mappings(self._mappings_from_link_map())
        else:
            self._set_mappings(self.mappings)

    def _set_mappings(self, mappings: list[Mapping]) -> None:
        self.mappings = sorted(mappings, key=lambda m: m.start)
        self._starts = [m.start for m in self.mappings]

    def _module_mappings(self, module: Module, bias: int) -> list[Mapping]:
        loads = [(seg.offset, seg.vaddr, seg.memsz) for seg in module.loads]
        return [self._mapping(m) for m in
                linkmap.synthesize_mappings(module.path, bias, loads, self.core.page_size)]

    def loaded_objects(self) -> list[linkmap.LoadedObject]:
        """Executable and shared objects from the aux vector and link_map (no NT_FILE needed).
        Needs the executable among the modules; returns [] without it."""
        exe_path = linkmap.executable_path(self.core)
        exe = self.modules.get(exe_path) if exe_path else None
        entry = self.core.auxv.get(linkmap.AT_ENTRY)
        if exe is None or exe_path is None or entry is None:
            return []
        bias = entry - exe.entry
        objects = [linkmap.LoadedObject(exe_path, bias)]
        if not self.mappings:  # reads below may need the executable's file pages
            self._set_mappings(self._module_mappings(exe, bias))
        if exe.dynamic_vaddr is not None:
            r_debug = linkmap.r_debug_address(self.read, bias + exe.dynamic_vaddr)
            if r_debug:
                objects += [o for o in linkmap.link_map_objects(self.read, r_debug)
                            if o.path != exe_path]
        return objects

    def _mappings_from_link_map(self) -> list[Mapping]:
        mappings: list[Mapping] = []
        for obj in self.loaded_objects():
            module = self.modules.get(obj.path)
            if module is not None:
                mappings += self._module_mappings(module, obj.bias)
        return mappings

    def _mapping(self, m: FileMapping) -> Mapping:
        module = self.modules.get(m.path)
        load = module.load_for_offset(m.file_offset) if module else None
        return Mapping(m.start, m.end, m.file_offset, m.path, module, load)

    @property
    def arch(self) -> str:
        return self.core.machine

    @property
    def pid(self) -> int:
        if self.core.process is not None:
            return self.core.process.pid
        return self.core.threads[0].lwp if self.core.threads else 0

    @property
    def threads(self) -> list[ThreadState]:
        return self.core.threads

    def mapping_at(self, addr: int) -> Mapping | None:
        i = bisect.bisect_right(self._starts, addr) - 1
        if i >= 0 and addr < self.mappings[i].end:
            return self.mappings[i]
        return None

    def read(self, addr: int, size: int) -> bytes | None:
        """Bytes at addr from the core, else from the mapped file; None if unknown."""
        data = self.core.read(addr, size)
        if data is not None:
            return data
        mapping = self.mapping_at(addr)
        if mapping is not None:
            data = mapping.read(addr, size)
            if data is not None:
                self.read_from.add(mapping.path)
                return data
        return self._read_pieces(addr, size)

    def _read_pieces(self, addr: int, size: int) -> bytes | None:
        """A read straddling a page boundary may need both sources."""
        page = self.core.page_size
        if size <= 1 or (addr // page) == ((addr + size - 1) // page):
            return None
        split = (addr // page + 1) * page
        head = self.read(addr, split - addr)
        if head is None:
            return None
        tail = self.read(split, addr + size - split)
        return None if tail is None else head + tail

    def close(self) -> None:
        for module in self.modules.values():
            module.close()
        self.core.close()
