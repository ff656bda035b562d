"""A module: an ELF file (executable or shared object) that a process had mapped,
available locally, mapped rather than read, and identified by its content hash.
"""

from __future__ import annotations

import hashlib
import mmap
import os
from dataclasses import dataclass
from pathlib import Path

from ..confine import open_regular
from ..errors import ModuleError
from . import elf
from .elf import PT_DYNAMIC, PT_INTERP, PT_LOAD, Ehdr

_ADDR_LIMIT = 1 << 64  # a segment past this wraps the address space
MAX_LOADS = 1024  # PT_LOADs of one module; real ones have 2 to 6


@dataclass(frozen=True)
class LoadSegment:
    """One PT_LOAD of a module file."""

    offset: int
    vaddr: int
    filesz: int
    memsz: int
    flags: int  # PF_*


def file_id_for(content_id: str) -> int:
    """64-bit module id for the maps: the first 8 bytes of the content hash."""
    return int.from_bytes(bytes.fromhex(content_id)[:8], "little") or 1


class Module:
    """An ELF file that was mapped into the process, available locally."""

    def __init__(self, path: str, local_path: str | os.PathLike[str],
                 content_id: str | None = None) -> None:
        self.path = path  # where the process had it
        self.local_path = Path(local_path)  # where we read it
        self.name = os.path.basename(path)
        fd = open_regular(self.local_path, f"module {path}:", ModuleError)
        try:
            size = os.fstat(fd).st_size
            self._map = mmap.mmap(fd, 0, access=mmap.ACCESS_READ) if size else b""
        except OSError as e:
            raise ModuleError(f"cannot map module {path} ({self.local_path}): "
                              f"{e.strerror}") from e
        finally:
            os.close(fd)
        if content_id is None:
            content_id = hashlib.sha256(self._map).hexdigest()
        self.content_id = content_id
        self.file_id = file_id_for(content_id)
        self.entry = 0
        self.machine = 0
        self.dynamic_vaddr: int | None = None
        self.interp: str | None = None
        self.loads: list[LoadSegment] = []
        self._parse_headers()

    def _fail(self, problem: str) -> ModuleError:
        return ModuleError(f"module {self.path} ({self.local_path}): {problem}")

    def _parse_headers(self) -> None:
        data = self._map
        problem = elf.ident_problem(data[: elf.EHDR_SIZE])
        if problem:
            raise self._fail(problem)
        ehdr = Ehdr.parse(data)
        if ehdr.type not in (elf.ET_EXEC, elf.ET_DYN):
            kind = "a core file" if ehdr.type == elf.ET_CORE else \
                elf.ET_NAMES.get(ehdr.type, f"an ELF file of type {ehdr.type}")
            raise self._fail(f"is {kind}, not an executable or shared object")
        self.entry = ehdr.entry
        self.machine = ehdr.machine
        try:
            phdrs = elf.program_headers(data, ehdr)
        except ValueError as e:
            raise self._fail(f"program headers: {e}") from None
        if sum(ph.type == PT_LOAD for ph in phdrs) > MAX_LOADS:
            raise self._fail(f"more than {MAX_LOADS} PT_LOAD program headers")
        for ph in phdrs:
            if ph.type == PT_LOAD:
                if ph.vaddr + ph.memsz > _ADDR_LIMIT or ph.filesz > ph.memsz:
                    raise self._fail(f"PT_LOAD at vaddr {ph.vaddr:#x} with p_filesz "
                                     f"{ph.filesz:#x}, p_memsz {ph.memsz:#x} cannot be mapped")
                self.loads.append(LoadSegment(ph.offset, ph.vaddr, ph.filesz, ph.memsz,
                                              ph.flags))
            elif ph.type == PT_DYNAMIC:
                self.dynamic_vaddr = ph.vaddr
            elif ph.type == PT_INTERP:
                self.interp = elf.cstring(data[ph.offset:ph.offset + ph.filesz])

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

    def segment_at(self, vaddr: int, size: int = 1) -> LoadSegment | None:
        """The PT_LOAD whose file-backed part holds [vaddr, vaddr+size)."""
        for seg in self.loads:
            if seg.vaddr <= vaddr and vaddr + size <= seg.vaddr + seg.filesz:
                return seg
        return None

    def read(self, offset: int, size: int) -> bytes | None:
        """File bytes at a file offset (None beyond the end)."""
        if offset < 0 or offset + size > len(self._map):
            return None
        return bytes(self._map[offset:offset + size])

    def read_vaddr(self, vaddr: int, size: int) -> bytes | None:
        """File-backed bytes at an ELF virtual address (None outside the PT_LOADs' files)."""
        seg = self.segment_at(vaddr, size)
        return None if seg is None else self.read(seg.offset + vaddr - seg.vaddr, size)

    def close(self) -> None:
        if isinstance(self._map, mmap.mmap):
            self._map.close()
