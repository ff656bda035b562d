"""The vDSO as a module: the kernel's shared object that every process maps and
no file backs.

A thread sampled in `clock_gettime` or `gettimeofday` is running vDSO code. Its
image is in the core's memory at AT_SYSINFO_EHDR (the NT_FILE list does not
name it): a complete small ELF file, program and section headers and
`.eh_frame` included. It is written to the cache under its content hash and
opened like any module, named `linux-vdso.1.so` as the reference tool and the
kernel name it; nothing is bundled, since every core that needs it holds it.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from ..files import write_atomically
from ..paths import cache_root
from . import elf
from .elf import Ehdr
from .elfcore import AT_SYSINFO_EHDR, CoreFile
from .module import Module

VDSO_NAME = "linux-vdso.1.so"
MAX_VDSO_SIZE = 1 << 20  # a vDSO is a few pages; a larger claim is a broken core


def vdso_image(core: CoreFile) -> tuple[int, bytes] | None:
    """(address, image) of the vDSO in the core, or None if it has none or the
    core lacks its pages."""
    addr = core.auxv.get(AT_SYSINFO_EHDR)
    if not addr:
        return None
    head = core.read(addr, elf.EHDR_SIZE)
    if head is None or elf.ident_problem(head):
        return None
    ehdr = Ehdr.parse(head)
    if ehdr.phentsize != elf.PHDR_SIZE or ehdr.phoff + ehdr.phnum * elf.PHDR_SIZE > MAX_VDSO_SIZE:
        return None
    headers = core.read(addr, ehdr.phoff + ehdr.phnum * elf.PHDR_SIZE)
    if headers is None:
        return None
    try:
        ends = [ph.offset + ph.filesz for ph in elf.program_headers(headers, ehdr)]
    except ValueError:
        return None
    if ehdr.shentsize == elf.SHDR_SIZE:
        ends.append(ehdr.shoff + ehdr.shnum * elf.SHDR_SIZE)
    size = max(ends, default=0)
    if not 0 < size <= MAX_VDSO_SIZE:
        return None
    image = core.read(addr, size)
    return (addr, image) if image is not None else None


def vdso_module(core: CoreFile, cache_dir: Path | None = None) -> tuple[int, Module] | None:
    """(address, Module) of the core's vDSO, its image stored in the cache."""
    found = vdso_image(core)
    if found is None:
        return None
    addr, image = found
    content_id = hashlib.sha256(image).hexdigest()
    local = (cache_dir or cache_root() / "memory-modules") / f"{content_id}.elf"
    if not local.exists():
        write_atomically(local, image, 0o444)
    return addr, Module(VDSO_NAME, local, content_id)
