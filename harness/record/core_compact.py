"""Leave out of a gcore core what the process could not read anyway.

gdb's gcore writes every mapping into the core, PROT_NONE reservations too, as
zero-filled "readable" segments; the kernel writes them with no content. A Go
process reserves hundreds of MiB that way (heap arena hints, the span and
bitmap reservations), so its gcore core is 0.7 to 1 GiB of zeros, all of which
the blob store would extract into the cache for every replay. The mappings
that had no access in /proc/PID/maps when gcore ran, and that the core holds
only zeros for, become segments without content (p_filesz 0, as the kernel
writes them); nothing the process could read is dropped.
"""

from __future__ import annotations

import os
import shutil
import struct
from pathlib import Path

from ..core import elf
from ..errors import HarnessError

__all__ = ["no_access_ranges", "drop_no_access_segments"]

_PT_LOAD = 1
_CHUNK = 1 << 20
_EHDR = struct.Struct("<16sHHIQQQIHHHHHH")  # Elf64_Ehdr, as core/elf.py reads it
_PHDR = struct.Struct("<IIQQQQQQ")  # Elf64_Phdr


def no_access_ranges(pid: int) -> set[tuple[int, int]]:
    """[start, end) of the process's mappings without any access (`---p`)."""
    ranges = set()
    try:
        with open(f"/proc/{pid}/maps") as maps:
            for line in maps:
                fields = line.split()
                if len(fields) >= 2 and fields[1].startswith("---"):
                    start, _, end = fields[0].partition("-")
                    ranges.add((int(start, 16), int(end, 16)))
    except OSError:
        return set()
    return ranges


def _all_zero(fd: int, offset: int, size: int) -> bool:
    zero = bytes(_CHUNK)
    while size > 0:
        chunk = os.pread(fd, min(size, _CHUNK), offset)
        if not chunk or chunk != zero[:len(chunk)]:
            return False
        offset += len(chunk)
        size -= len(chunk)
    return True


def drop_no_access_segments(core: Path, ranges: set[tuple[int, int]]) -> int:
    """Rewrite `core` in place without the content of the PT_LOAD segments that are
    exactly one of `ranges` and hold only zeros; returns the bytes left out. The
    section headers BFD adds to gcore cores go too (they point at the old
    offsets; the kernel writes none, and readers use the program headers)."""
    if not ranges:
        return 0
    with open(core, "rb") as f:
        head = f.read(elf.EHDR_SIZE)
        if elf.ident_problem(head):
            raise HarnessError(f"{core}: not a 64-bit ELF core")
        ehdr = elf.Ehdr.parse(head)
        f.seek(ehdr.phoff)
        table = f.read(ehdr.phnum * elf.PHDR_SIZE)
        phdrs = [elf.Phdr.parse(table, i * elf.PHDR_SIZE) for i in range(ehdr.phnum)]
        fd = f.fileno()
        drop = {i for i, ph in enumerate(phdrs)
                if ph.type == _PT_LOAD and ph.filesz
                and (ph.vaddr, ph.vaddr + ph.memsz) in ranges
                and _all_zero(fd, ph.offset, ph.filesz)}
        if not drop:
            return 0
        tmp = core.with_name(core.name + ".compact")
        with open(tmp, "wb") as out:
            pos = elf.EHDR_SIZE + ehdr.phnum * elf.PHDR_SIZE
            new = []
            for i, ph in sorted(enumerate(phdrs), key=lambda item: item[1].offset):
                if i in drop or not ph.filesz:
                    new.append((i, ph._replace(offset=0, filesz=0)))
                    continue
                align = ph.align if ph.type == _PT_LOAD and 0 < ph.align <= 0x1000 else 1
                pos = -(-pos // align) * align
                out.seek(pos)
                f.seek(ph.offset)
                shutil.copyfileobj(_Limited(f, ph.filesz), out, _CHUNK)
                new.append((i, ph._replace(offset=pos)))
                pos += ph.filesz
            out.truncate(pos)
            out.seek(0)
            out.write(_EHDR.pack(*ehdr._replace(phoff=elf.EHDR_SIZE, shoff=0, shnum=0,
                                                shstrndx=0, shentsize=0)))
            for _, ph in sorted(new):
                out.write(_PHDR.pack(*ph))
    saved = sum(phdrs[i].filesz for i in drop)
    os.replace(tmp, core)
    return saved


class _Limited:
    """The next `size` bytes of a file, for copyfileobj."""

    def __init__(self, f: object, size: int) -> None:
        self.f, self.left = f, size

    def read(self, n: int = -1) -> bytes:
        n = self.left if n < 0 else min(n, self.left)
        data = self.f.read(n)  # type: ignore[attr-defined]
        self.left -= len(data)
        return bytes(data)
