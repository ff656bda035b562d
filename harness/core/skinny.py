"""Skinny cores: the same ELF notes, and only the memory that is read.

A case's core is mostly memory nobody looks at: heap, the untouched parts of
thread stacks, file pages the bundled modules hold anyway. The recorder knows
which bytes the unwinder, the host side and the oracles read; a skinny core
keeps those pages and leaves the rest out, and is still a valid ELF core that
gdb opens:

- every note of the full core, byte for byte, in one PT_NOTE, plus a note of
  our own (owner COREDUMP-HARNESS, type 1) listing the ranges left out, so a
  replay that reads one of them says so instead of seeing a fault
  (CoreFile.was_dropped);
- the kept parts of every PT_LOAD of the full core (with their flags and
  bytes); the parts left out have no program header at all: gdb then reads a
  file-backed page from the file, as for any page a core lacks (a PT_LOAD with
  p_filesz 0 over them would make it read zeros for libc's code and CFI).
  Segments the full core did not dump either (p_filesz 0) stay as they are:
  gdb-multiarch needs them to unwind a qemu-user core.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from pathlib import Path

from ..errors import CoreError
from ..files import atomic_file
from . import elf
from .elf import PT_LOAD, PT_NOTE, Ehdr
from .elfcore import NT_SKINNY_DROPPED, SKINNY_NOTE_OWNER, CoreFile

MAX_SEGMENTS = 0xFFFF - 2  # e_phnum without the PN_XNUM extension


def page_ranges(ranges: Iterable[tuple[int, int]], page: int) -> list[tuple[int, int]]:
    """The union of [start, end) ranges, widened to whole pages, sorted and merged."""
    merged: list[list[int]] = []
    for start, end in sorted((s & ~(page - 1), (e + page - 1) & ~(page - 1))
                             for s, e in ranges if e > s):
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return [(s, e) for s, e in merged]


def _split(start: int, end: int, keep: list[tuple[int, int]]) -> list[tuple[int, int, bool]]:
    """[start, end) cut into (start, end, kept) pieces by the sorted keep ranges."""
    pieces = []
    cursor = start
    for lo, hi in keep:
        if hi <= cursor or lo >= end:
            continue
        if lo > cursor:
            pieces.append((cursor, lo, False))
        pieces.append((max(lo, cursor), min(hi, end), True))
        cursor = min(hi, end)
    if cursor < end:
        pieces.append((cursor, end, False))
    return pieces


def _note(owner: str, ntype: int, desc: bytes) -> bytes:
    """One ELF note: header, name and descriptor, each padded to 4 bytes."""
    name = owner.encode() + b"\0"
    return (struct.pack("<III", len(name), len(desc), ntype) + name + bytes((-len(name)) % 4)
            + desc + bytes((-len(desc)) % 4))


def write_skinny_core(core: CoreFile, keep: list[tuple[int, int]], out: Path) -> dict[str, int]:
    """Write the skinny version of an open full core to `out`, keeping the page
    ranges `keep` (page_ranges). Returns sizes: kept bytes, dropped bytes, file size."""
    mm = core._mem()
    ehdr = Ehdr.parse(mm[:elf.EHDR_SIZE])
    notes = b"".join(bytes(mm[ph.offset:ph.offset + ph.filesz])
                     for ph in elf.program_headers(mm, ehdr) if ph.type == PT_NOTE)
    loads: list[tuple[int, int, int, bool]] = []  # vaddr, memsz, flags, kept
    dropped: list[tuple[int, int]] = []
    for seg in core.segments:
        if not seg.filesz:  # not dumped in the full core either: kept as it is
            loads.append((seg.vaddr, seg.memsz, seg.flags, False))
            continue
        stored_end = seg.vaddr + seg.filesz
        for lo, hi, kept in _split(seg.vaddr, stored_end, keep):
            if kept:
                loads.append((lo, hi - lo, seg.flags, True))
            else:
                dropped.append((lo, hi))
    if len(loads) + 1 > MAX_SEGMENTS:
        raise CoreError(f"{core.path}: a skinny core would need {len(loads) + 1} program "
                        "headers; keep the full core")
    if dropped:
        ranges = _merged(dropped)
        desc = struct.pack(f"<Q{2 * len(ranges)}Q", len(ranges), *(b for r in ranges for b in r))
        notes += _note(SKINNY_NOTE_OWNER, NT_SKINNY_DROPPED, desc)
    phnum = 1 + len(loads)
    data_at = elf.EHDR_SIZE + phnum * elf.PHDR_SIZE
    notes_at = data_at
    offset = (notes_at + len(notes) + core.page_size - 1) & ~(core.page_size - 1)
    headers = [struct.pack("<IIQQQQQQ", PT_NOTE, 0, notes_at, 0, 0, len(notes), 0, 4)]
    kept_bytes = 0
    for vaddr, size, flags, kept in loads:
        filesz = size if kept else 0
        headers.append(struct.pack("<IIQQQQQQ", PT_LOAD, flags, offset if kept else 0, vaddr,
                                   0, filesz, size, core.page_size))
        if kept:
            offset += size
            kept_bytes += size
    head = struct.pack("<16sHHIQQQIHHHHHH", bytes(mm[:16]), ehdr.type, ehdr.machine,
                       ehdr.version, 0, elf.EHDR_SIZE, 0, ehdr.flags, elf.EHDR_SIZE,
                       elf.PHDR_SIZE, phnum, 0, 0, 0)
    with atomic_file(out) as f:
        f.write(head)
        f.write(b"".join(headers))
        f.write(notes)
        f.write(bytes(((notes_at + len(notes) + core.page_size - 1) & ~(core.page_size - 1))
                      - (notes_at + len(notes))))
        for vaddr, size, _, kept in loads:
            if kept:
                data = core.read(vaddr, size)
                if data is None:
                    raise CoreError(f"{core.path}: cannot read {size} bytes at {vaddr:#x} "
                                    "that the core stores")
                f.write(data)
    return {"kept": kept_bytes, "dropped": sum(e - s for s, e in dropped),
            "size": offset}


def _merged(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for start, end in sorted(ranges):
        if out and start <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], end))
        else:
            out.append((start, end))
    return out
