"""Inputs the fuzz suite (tests/test_fuzz.py) found to break the harness, minimised, each
with the fix it needed. They run in the normal suite so a bug stays fixed."""

from __future__ import annotations

import struct

from tests import fuzz_targets as targets
from tests.test_fuzz import _elf_images

_PHDR = struct.Struct("<IIQQQQQQ")


def _with_load_offset(core: bytes, image_at: int, offset: int) -> bytes:
    """The core with the first PT_LOAD of the ELF image dumped at image_at moved to
    p_offset = offset (in the program headers as they are in memory)."""
    buf = bytearray(core)
    phoff = struct.unpack_from("<Q", buf, image_at + 32)[0]
    phnum = struct.unpack_from("<H", buf, image_at + 56)[0]
    for i in range(phnum):
        at = image_at + phoff + i * _PHDR.size
        fields = list(_PHDR.unpack_from(buf, at))
        if fields[0] == 1:
            fields[2] = offset
            _PHDR.pack_into(buf, at, *fields)
            return bytes(buf)
    return core


def test_a_module_in_memory_with_a_huge_p_offset_is_refused_not_allocated() -> None:
    """Found under scripts/sanitize: the rebuilt image was allocated at the size the
    in-memory program headers claim (bytearray(0xf20000026112): ASan's
    allocation-size-too-big; a MemoryError traceback without ASan)."""
    core = targets.nobundle_core()
    images = _elf_images(core)
    assert images, "the -no-module-bundling core holds no ELF header"
    tried = 0
    for image_at in images:
        phoff, phnum = struct.unpack_from("<Q", core, image_at + 32)[0], \
            struct.unpack_from("<H", core, image_at + 56)[0]
        if phoff > 4096 or not 0 < phnum < 64:
            continue  # the bytes \x7fELF, not a header
        mutant = _with_load_offset(core, image_at, 0xF20000000000)
        if mutant != core:
            tried += 1
            assert targets.run_rebuild(mutant) in ("ok", "error")
    assert tried
