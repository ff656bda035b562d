"""Signal trampolines in anonymous executable memory, as modules.

qemu-user writes its guest's sigreturn trampoline (arm64 `mov x8,#139; svc #0`)
to a page of anonymous memory, right after the last mapping it made; a JIT may
do the same. No file or NT_FILE entry names such a page, so the frame a signal
handler returns to had no module and the unwinder either stopped or, worse,
took the rules of the module mapped just below it. A profiler's agent reads
the process's executable anonymous pages and recognises the trampoline by its
instructions; so do we: each page of the core's executable memory that no
module covers and that holds the pattern becomes a module of its own, with no
CFI. unwind_data/synthesize.py then gives the trampoline its CFA_SIGNAL rule,
as for any code without CFI.

A handler returns to the trampoline's first instruction, and the unwinder
looks up return addresses minus one: at the page's first trampoline that is
the last byte of whatever lies below. So the module starts one byte before the
page: a filler byte at ELF virtual address 0 (the page's first byte is at 1)
that the trampoline's rule covers. Frames in it print as
`[anon@0x<page>]+0x<offset>`, the offset counted from that byte: `+0x0` is a
return to the trampoline at the page's start, like every caller frame an
address minus one.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Callable
from pathlib import Path

from ..arch import ARCHES, sigreturn_offsets
from ..files import write_atomically
from ..paths import cache_root
from . import elf
from .elf import PF_R, PF_X, PT_LOAD
from .elfcore import CoreFile
from .module import Module

ANON_PREFIX = "[anon@"
MAX_SCAN_BYTES = 16 << 20  # executable anonymous memory read per core, at most
MAX_PAGES = 16  # trampoline pages made into modules per core
_CODE_OFFSET = 0x100  # file offset of the filler byte (vaddr 0) in the image
_FILLER = b"\x90"
_ET_DYN = 3


def anon_name(page: int) -> str:
    return f"{ANON_PREFIX}{page:#x}]"


def trampoline_pages(core: CoreFile,
                     covered: Callable[[int], bool]) -> list[tuple[int, bytes]]:
    """(address, bytes) of each executable page the core holds that has a
    sigreturn trampoline and that no module maps (`covered` says which do)."""
    page_size = core.page_size
    found: dict[int, bytes] = {}
    budget = MAX_SCAN_BYTES
    log, core.read_log = core.read_log, None  # the scan is not a read of the process
    try:
        for seg in core.segments:
            if not seg.flags & PF_X or not seg.filesz or seg.filesz > budget \
                    or (covered(seg.vaddr) and covered(seg.vaddr + seg.filesz - 1)):
                continue
            budget -= seg.filesz
            data = core.read(seg.vaddr, seg.filesz)
            if data is None:
                continue
            for start, _ in sigreturn_offsets(data, core.machine):
                page = (seg.vaddr + start) & ~(page_size - 1)
                if page in found or len(found) >= MAX_PAGES or covered(page):
                    continue
                found[page] = b""
    finally:
        core.read_log = log
    # The pages that become modules are read (and logged) for what they are.
    return [(page, code) for page in sorted(found)
            if (code := core.read(page, page_size)) is not None]


def _image(code: bytes, machine: int) -> bytes:
    """A minimal ELF shared object: one R+X PT_LOAD of filler byte + code at vaddr 0."""
    size = len(_FILLER) + len(code)
    ident = b"\x7fELF" + bytes([2, 1, 1]) + bytes(9)  # ELFCLASS64, LSB, EV_CURRENT
    ehdr = ident + struct.pack("<HHIQQQIHHHHHH", _ET_DYN, machine, 1, 0, elf.EHDR_SIZE, 0,
                               0, elf.EHDR_SIZE, elf.PHDR_SIZE, 1, 0, 0, 0)
    phdr = struct.pack("<IIQQQQQQ", PT_LOAD, PF_R | PF_X, _CODE_OFFSET, 0, 0, size, size, 1)
    head = ehdr + phdr
    return head + bytes(_CODE_OFFSET - len(head)) + _FILLER + code


def trampoline_module(core: CoreFile, page: int, code: bytes,
                      cache_dir: Path | None = None) -> Module:
    """The page as a module (image in the cache under its content hash)."""
    image = _image(code, ARCHES[core.machine].elf_machine)
    content_id = hashlib.sha256(image).hexdigest()
    local = (cache_dir or cache_root() / "memory-modules") / f"{content_id}.elf"
    if not local.exists():
        write_atomically(local, image, 0o444)
    return Module(anon_name(page), local, content_id)


FILE_OFFSET = _CODE_OFFSET  # where the module's mapping starts in its image (vaddr 0)
