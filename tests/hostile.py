"""Hostile variants of real inputs, for the tests of issue 20 and the fuzz suite.

A real core is rewritten, not synthesised: its NT_FILE list is replaced (paths that
climb out of their root, say) while every other byte stays, so the rest of the
pipeline runs as it does on the real core up to the point under test.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator

_EHDR = struct.Struct("<16sHHIQQQIHHHHHH")
_PHDR = struct.Struct("<IIQQQQQQ")
_NHDR = struct.Struct("<III")
_PT_NOTE = 4
NT_FILE = 0x46494C45
NT_PRSTATUS = 1

FileEntry = tuple[int, int, int, bytes]  # start, end, page offset, path (raw bytes)


def _pad4(n: int) -> int:
    return (n + 3) & ~3


def notes(data: bytes, offset: int, size: int) -> Iterator[tuple[bytes, int, bytes]]:
    """(owner name with its NUL, type, descriptor) of each note in a PT_NOTE segment."""
    pos, end = offset, offset + size
    while end - pos >= _NHDR.size:
        namesz, descsz, ntype = _NHDR.unpack_from(data, pos)
        name_at = pos + _NHDR.size
        desc_at = name_at + _pad4(namesz)
        yield data[name_at:name_at + namesz], ntype, data[desc_at:desc_at + descsz]
        pos = desc_at + _pad4(descsz)


def note(name: bytes, ntype: int, desc: bytes) -> bytes:
    return (_NHDR.pack(len(name), len(desc), ntype) + name + bytes(_pad4(len(name)) - len(name))
            + desc + bytes(_pad4(len(desc)) - len(desc)))


def parse_nt_file(desc: bytes) -> tuple[int, list[FileEntry]]:
    count, page_size = struct.unpack_from("<QQ", desc)
    names = desc[16 + 24 * count:].split(b"\0")
    entries = [(*struct.unpack_from("<QQQ", desc, 16 + 24 * i), names[i]) for i in range(count)]
    return page_size, entries  # type: ignore[return-value]


def build_nt_file(page_size: int, entries: list[FileEntry]) -> bytes:
    table = b"".join(struct.pack("<QQQ", s, e, pg) for s, e, pg, _ in entries)
    return (struct.pack("<QQ", len(entries), page_size) + table
            + b"".join(p + b"\0" for *_, p in entries))


Note = tuple[bytes, int, bytes]  # owner name with its NUL, type, descriptor


def rewrite_note_list(data: bytes, edit: Callable[[list[Note]], list[Note]]) -> bytes:
    """The core with each PT_NOTE segment's notes replaced by edit(notes). The
    rewritten segments are appended to the file and their program headers pointed
    there; everything else is left in place."""
    out = bytearray(data)
    phoff, phentsize, phnum = (_EHDR.unpack_from(data)[i] for i in (5, 9, 10))
    for i in range(phnum):
        at = phoff + i * phentsize
        fields = list(_PHDR.unpack_from(data, at))
        if fields[0] != _PT_NOTE:
            continue
        blob = b"".join(note(*n) for n in edit(list(notes(data, fields[2], fields[5]))))
        out += bytes(-len(out) % 8)
        fields[2], fields[5] = len(out), len(blob)
        out += blob
        _PHDR.pack_into(out, at, *fields)
    return bytes(out)


def rewrite_notes(data: bytes, edit: Callable[[bytes, int, bytes], bytes | None]) -> bytes:
    """The core with each note's descriptor replaced by edit(name, type, desc) (None:
    dropped)."""
    def each(found: list[Note]) -> list[Note]:
        kept = [(name, ntype, edit(name, ntype, desc)) for name, ntype, desc in found]
        return [(name, ntype, desc) for name, ntype, desc in kept if desc is not None]
    return rewrite_note_list(data, each)


def with_thread_copies(data: bytes, copies: int) -> bytes:
    """The core with its first thread's NT_PRSTATUS repeated `copies` more times."""
    def add(found: list[Note]) -> list[Note]:
        prstatus = [n for n in found if n[1] == NT_PRSTATUS][:1]
        return found + prstatus * copies
    return rewrite_note_list(data, add)


def with_file_paths(data: bytes, rename: Callable[[bytes], bytes]) -> bytes:
    """The core with every NT_FILE path p replaced by rename(p)."""
    def edit(_name: bytes, ntype: int, desc: bytes) -> bytes:
        if ntype != NT_FILE:
            return desc
        page_size, entries = parse_nt_file(desc)
        return build_nt_file(page_size, [(s, e, pg, rename(p)) for s, e, pg, p in entries])
    return rewrite_notes(data, edit)
