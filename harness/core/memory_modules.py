"""ELF modules rebuilt from a core's memory (`coredump new -no-module-bundling`).

When the files a process had mapped cannot be bundled (the core comes from
another machine and no sysroot is at hand), the replay can still find code and
unwind data in the core itself, provided the core holds the file-backed pages:
`echo 0x3f > /proc/PID/coredump_filter` before gcore or the kernel dump.

Design:

* The case records `"no-module-bundling": true` and an empty `modules` list
  (TestCase.no_module_bundling), so replay knows to rebuild them.
* For each ELF file in the core's file list, the mapping at file offset 0
  holds the ELF and program headers. Each read-only PT_LOAD's file bytes are
  read back from memory at load bias + p_vaddr and laid out at p_offset,
  giving an image of the file up to the end of its last loaded byte (debug
  sections and section headers are never loaded, so they are not there).
  Writable segments stay zero (see _Image.build).
* `.eh_frame` is found as a profiler's agent finds it in a live process:
  PT_GNU_EH_FRAME gives `.eh_frame_hdr`, whose `eh_frame_ptr` gives
  `.eh_frame`; its size is the walk over its length fields up to the zero
  terminator. A small section header table (`.eh_frame_hdr`, `.eh_frame`, one
  `.text` per executable segment) is appended so that every consumer of ELF
  files works unchanged: the process model, the CFI extraction and its cache
  (keyed by the image's sha256), and gdb for the cross-check.

The images are derived data: they live in the cache and are rebuilt when
missing. Only `.eh_frame` is available this way, never `.debug_frame`.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..arch import ARCHES, U64_MASK
from ..errors import ModuleError
from ..files import write_atomically
from ..paths import cache_root
from . import elf
from .elf import (
    PF_W,
    PF_X,
    PT_GNU_EH_FRAME,
    PT_LOAD,
    SHF_ALLOC,
    SHF_EXECINSTR,
    SHT_PROGBITS,
    SHT_STRTAB,
    Ehdr,
    Phdr,
    Shdr,
)
from .elfcore import CoreFile, FileMapping

Progress = Callable[[str], None]


_MAX_FILE_GAP = 2 << 20  # padding before a PT_LOAD in a file: at most its alignment (2 MiB)


class MemoryModuleError(ModuleError):
    """A module cannot be rebuilt from the core (pages missing, malformed headers)."""


def _quiet(_: str) -> None:
    pass


@dataclass(frozen=True)
class _Load:
    offset: int
    vaddr: int
    filesz: int
    flags: int


class _Image:
    """One module's headers as found in memory, and the reads that rebuild it."""

    def __init__(self, core: CoreFile, path: str, header_addr: int) -> None:
        self.core = core
        self.path = path
        head = self._read(header_addr, elf.EHDR_SIZE, "the ELF header")
        problem = elf.ident_problem(head)
        if problem:
            raise self._fail(f"cannot be rebuilt: {problem}")
        ehdr = Ehdr.parse(head)
        if ehdr.machine != ARCHES[core.machine].elf_machine or \
                ehdr.phentsize != elf.PHDR_SIZE or ehdr.phnum == 0:
            raise self._fail(f"unexpected ELF header (e_machine {ehdr.machine}, "
                             f"e_phentsize {ehdr.phentsize}, e_phnum {ehdr.phnum})")
        phdrs = self._read(header_addr + ehdr.phoff, ehdr.phnum * elf.PHDR_SIZE,
                           "the program headers")
        self.loads: list[_Load] = []
        self.eh_frame_hdr: tuple[int, int] | None = None
        for i in range(ehdr.phnum):
            ph = Phdr.parse(phdrs, i * elf.PHDR_SIZE)
            if ph.type == PT_LOAD:
                self.loads.append(_Load(ph.offset, ph.vaddr, ph.filesz, ph.flags))
            elif ph.type == PT_GNU_EH_FRAME:
                self.eh_frame_hdr = (ph.vaddr, ph.memsz)
        if not self.loads:
            raise self._fail("no PT_LOAD program header")
        # The mapping at file offset 0 comes from the segment that maps that offset,
        # which puts file offset 0 at p_vaddr - p_offset (plus the load bias).
        first = min(self.loads, key=lambda s: s.offset)
        self.bias = header_addr - (first.vaddr - first.offset)

    def _fail(self, problem: str) -> MemoryModuleError:
        return MemoryModuleError(f"{self.path}: {problem}")

    def _read(self, addr: int, size: int, what: str) -> bytes:
        data = self.core.read(addr, size)
        if data is None:
            raise self._fail(
                f"the core does not contain {what} ({size} bytes at {addr:#x}); record the "
                f"process with `echo 0x3f > /proc/PID/coredump_filter` before gcore or the "
                f"kernel dump, or bundle the modules (drop -no-module-bundling)")
        return bytes(data)

    def build(self) -> bytes:
        """The rebuilt file: loaded bytes at their offsets, plus a section header table.

        Writable segments must be in the core but stay zero in the image: in memory
        they hold this process's relocated pointers, not the file's bytes, and reads
        there are served by the core. So the image of a library is the same for every
        process, and its unwind data is decoded once (cached by the image's hash).
        """
        contents = [(seg, self._read(self.bias + seg.vaddr, seg.filesz,
                                     f"the segment at vaddr {seg.vaddr:#x}"))
                    for seg in self.loads if seg.filesz]
        size = max(s.offset + s.filesz for s in self.loads)
        # The segments lie packed in the file, with at most an alignment's padding
        # between them: p_offsets from memory that spread them wider are garbage,
        # and an image that size would be allocated before anything else failed.
        held = sum(s.filesz for s in self.loads)
        if size > held + (len(self.loads) + 1) * _MAX_FILE_GAP:
            raise self._fail(f"cannot be rebuilt: its PT_LOADs end at file offset {size:#x} "
                             f"but hold only {held:#x} bytes (more than {_MAX_FILE_GAP:#x} "
                             "of padding per segment); corrupt program headers")
        image = bytearray(size)
        for seg, data in contents:
            if not seg.flags & PF_W:
                image[seg.offset:seg.offset + seg.filesz] = data
        sections = list(self._sections(image))
        return _append_section_headers(image, sections)

    def _file_offset(self, vaddr: int, size: int) -> int | None:
        for seg in self.loads:
            if seg.vaddr <= vaddr and vaddr + size <= seg.vaddr + seg.filesz:
                return seg.offset + vaddr - seg.vaddr
        return None

    def _sections(self, image: bytearray) -> Iterator[tuple[str, int, int, int, int]]:
        """(name, flags, vaddr, file offset, size) of the sections we can name."""
        for seg in sorted(self.loads, key=lambda s: s.vaddr):
            if seg.flags & PF_X and seg.filesz:
                yield ".text", SHF_ALLOC | SHF_EXECINSTR, seg.vaddr, seg.offset, seg.filesz
        if self.eh_frame_hdr is None:
            return  # no CFI: the unwinder falls back to frame pointers, as for any such file
        hdr_vaddr, hdr_size = self.eh_frame_hdr
        hdr_off = self._file_offset(hdr_vaddr, hdr_size)
        if hdr_off is None or hdr_size < 8:
            raise self._fail(f"PT_GNU_EH_FRAME ({hdr_vaddr:#x}) is outside the loaded bytes")
        yield ".eh_frame_hdr", SHF_ALLOC, hdr_vaddr, hdr_off, hdr_size
        frame_vaddr = _eh_frame_ptr(image, hdr_off, hdr_vaddr, self.path)
        if frame_vaddr is None:
            return
        frame_off = self._file_offset(frame_vaddr, 4)
        if frame_off is None:
            raise self._fail(f".eh_frame ({frame_vaddr:#x}) is outside the loaded bytes")
        seg_end = next(s.offset + s.filesz for s in self.loads
                       if s.offset <= frame_off < s.offset + s.filesz)
        yield ".eh_frame", SHF_ALLOC, frame_vaddr, frame_off, _eh_frame_size(image, frame_off,
                                                                             seg_end)


def _eh_frame_ptr(image: bytearray, hdr_off: int, hdr_vaddr: int, path: str) -> int | None:
    """Decode eh_frame_ptr of .eh_frame_hdr (DWARF EH pointer encoding)."""
    version, enc = image[hdr_off], image[hdr_off + 1]
    if version != 1:
        raise MemoryModuleError(f"{path}: .eh_frame_hdr version {version} (expected 1)")
    if enc == 0xFF:  # DW_EH_PE_omit
        return None
    formats = {0x00: "<Q", 0x03: "<I", 0x04: "<Q", 0x0B: "<i", 0x0C: "<q"}
    fmt = formats.get(enc & 0x0F)
    if fmt is None:
        raise MemoryModuleError(f"{path}: unsupported eh_frame_ptr encoding {enc:#x}")
    (value,) = struct.unpack_from(fmt, image, hdr_off + 4)
    application = enc & 0x70
    if application == 0x10:  # DW_EH_PE_pcrel: relative to the field itself
        value += hdr_vaddr + 4
    elif application == 0x30:  # DW_EH_PE_datarel: relative to .eh_frame_hdr
        value += hdr_vaddr
    elif application != 0:
        raise MemoryModuleError(f"{path}: unsupported eh_frame_ptr encoding {enc:#x}")
    return int(value) & U64_MASK


def _eh_frame_size(image: bytearray, start: int, limit: int) -> int:
    """Walk CIE/FDE length fields up to the zero terminator (or the segment's end)."""
    pos = start
    while pos + 4 <= limit:
        (length,) = struct.unpack_from("<I", image, pos)
        if length == 0:
            return pos + 4 - start
        if length == 0xFFFF_FFFF:
            if pos + 12 > limit:
                break
            (length,) = struct.unpack_from("<Q", image, pos + 4)
            pos += 12 + length
        else:
            pos += 4 + length
    return min(pos, limit) - start


def _append_section_headers(image: bytearray,
                            sections: list[tuple[str, int, int, int, int]]) -> bytes:
    names = bytearray(b"\0.shstrtab\0")
    name_offsets = []
    for name, *_ in sections:
        name_offsets.append(len(names))
        names += name.encode() + b"\0"
    strtab_off = len(image)
    image += names
    image += b"\0" * (-len(image) % 8)
    shoff = len(image)
    headers = [bytes(elf.SHDR_SIZE),
               Shdr(1, SHT_STRTAB, 0, 0, strtab_off, len(names), 0, 0, 1, 0).pack()]
    for (_, flags, vaddr, offset, size), name_off in zip(sections, name_offsets, strict=True):
        headers.append(Shdr(name_off, SHT_PROGBITS, flags, vaddr, offset, size, 0, 0, 8,
                            0).pack())
    image += b"".join(headers)
    struct.pack_into("<Q", image, elf.EHDR_SHOFF, shoff)
    struct.pack_into("<HHH", image, elf.EHDR_SHENTSIZE, elf.SHDR_SIZE, len(headers), 1)
    return bytes(image)


def _header_mappings(core: CoreFile) -> dict[str, FileMapping]:
    """The mapping at file offset 0 of each mapped file (where its ELF header is)."""
    found: dict[str, FileMapping] = {}
    for m in core.mappings:
        if m.file_offset == 0 and m.path.startswith("/") and m.path not in found \
                and not m.path.startswith(("/dev/", "/memfd:")):
            found[m.path] = m
    return found


def rebuild_module(core: CoreFile, path: str, header_addr: int) -> bytes:
    """The image of one module from the core's memory (MemoryModuleError if impossible)."""
    return _Image(core, path, header_addr).build()


def _store_image(image: bytes, cache_dir: Path) -> tuple[Path, str]:
    content_id = hashlib.sha256(image).hexdigest()
    dest = cache_dir / f"{content_id}.elf"
    if not dest.exists():
        write_atomically(dest, image, 0o444)
    return dest, content_id


def module_files(core: CoreFile, cache_dir: Path | None = None,
                 progress: Progress = _quiet) -> dict[str, tuple[str | Path, str | None]]:
    """{original path: (rebuilt image, its sha256)} for every ELF module the core holds.

    Mapped files that are not ELF (locale archives, caches) are left out silently;
    ELF files whose pages the core lacks are left out with a warning, as
    candidate_modules does for files missing on disk.
    """
    cache_dir = cache_dir if cache_dir is not None else cache_root() / "memory-modules"
    files: dict[str, tuple[str | Path, str | None]] = {}
    for path, mapping in sorted(_header_mappings(core).items()):
        magic = core.read(mapping.start, 4)
        if magic is None:
            progress(f"warning: the core lacks the first page of {path}; frames in it cannot "
                     "be attributed (set coredump_filter to 0x3f before dumping)")
            continue
        if magic != b"\x7fELF":
            continue
        try:
            image = rebuild_module(core, path, mapping.start)
        except MemoryModuleError as e:
            progress(f"warning: {e}")
            continue
        local, content_id = _store_image(image, cache_dir)
        files[path] = (local, content_id)
    return files


def require_modules(files: dict[str, Any], core_path: str | Path) -> None:
    """A core with no rebuildable module was dumped without file pages: say how to fix."""
    if not files:
        raise MemoryModuleError(
            f"{core_path}: no ELF module can be rebuilt from the core's memory; the core was "
            "dumped without file-backed pages. Set `echo 0x3f > /proc/PID/coredump_filter` "
            "before gcore or the kernel dump (coredump new -pid does this itself with "
            "-no-module-bundling), or bundle the modules (drop -no-module-bundling, "
            "optionally with -sysroot DIR)")
