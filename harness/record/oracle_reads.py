"""Which pages of a core file an oracle (gdb, pystack) read, from the page cache.

A skinny core must hold what the oracles read too, and they are other
programs: gdb reads the core through stdio, pystack maps it. Neither can be
asked, but the kernel's page cache can: drop the file's cached pages
(posix_fadvise DONTNEED), run the oracle, and ask which pages are cached now
(mincore over a mapping of the file). Every page the oracle read is there;
readahead would add many more (pystack maps the core: 112 MB of a 468 MB core
were cached after it, of 2.7 MB it read), so the oracles run with a small
LD_PRELOAD shim (noreadahead.c, built once with the host compiler) that turns
readahead off for the files they open and map. Without a compiler the
measurement stays correct, only coarser. This process's own mapping of the
core lets go of its pages first (CoreFile.release_pages): a page mapped
anywhere cannot be dropped.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import mmap
import os
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

from ..core.elfcore import CoreFile
from ..errors import HarnessError
from ..files import atomic_path
from ..paths import cache_root

log = logging.getLogger(__name__)

T = TypeVar("T")

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                       ctypes.c_int, ctypes.c_long]
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p]
_MAP_FAILED = ctypes.c_void_p(-1).value


def drop_cached_pages(path: Path) -> None:
    """Drop the file's pages from the page cache; written ones are flushed first (a
    core gcore has just written is all dirty pages, and those stay)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fdatasync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def cached_ranges(path: Path) -> list[tuple[int, int]]:
    """[start, end) file offsets of the pages of `path` in the page cache."""
    size = path.stat().st_size
    if size == 0:
        return []
    page = mmap.PAGESIZE
    fd = os.open(path, os.O_RDONLY)
    try:
        addr = _libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
        if addr in (None, _MAP_FAILED):
            raise OSError(ctypes.get_errno(), f"mmap of {path} failed")
        try:
            pages = (size + page - 1) // page
            vec = ctypes.create_string_buffer(pages)
            if _libc.mincore(addr, size, vec) != 0:
                raise OSError(ctypes.get_errno(), f"mincore of {path} failed")
            flags = vec.raw
        finally:
            _libc.munmap(addr, size)
    finally:
        os.close(fd)
    ranges: list[tuple[int, int]] = []
    for i, flag in enumerate(flags):
        if flag & 1:
            start = i * page
            if ranges and ranges[-1][1] == start:
                ranges[-1] = (ranges[-1][0], start + page)
            else:
                ranges.append((start, start + page))
    return ranges


def memory_ranges(core: CoreFile, file_ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """The process memory that file ranges of the core hold (through its PT_LOADs)."""
    out = []
    for seg in core.segments:
        if not seg.filesz:
            continue
        lo, hi = seg.offset, seg.offset + seg.filesz
        for start, end in file_ranges:
            a, b = max(start, lo), min(end, hi)
            if a < b:
                out.append((seg.vaddr + a - lo, seg.vaddr + b - lo))
    return out


SHIM_SOURCE = Path(__file__).with_name("noreadahead.c")


def readahead_shim() -> Path | None:
    """The shim, built into the cache on first use (None: no compiler, or it fails)."""
    from ..bpf.build import compiler

    source = SHIM_SOURCE.read_bytes()
    target = cache_root() / "shim" / f"noreadahead-{hashlib.sha256(source).hexdigest()[:16]}.so"
    if target.exists():
        return target
    try:
        cc = compiler()
        with atomic_path(target) as tmp:
            subprocess.run([cc, "-O2", "-shared", "-fPIC", "-o", str(tmp), str(SHIM_SOURCE),
                            "-ldl"], check=True, capture_output=True, timeout=60)
    except (HarnessError, OSError, subprocess.SubprocessError) as e:
        log.info("no readahead shim (%s): oracle reads are measured coarsely", e)
        return None
    return target


@contextmanager
def _preloaded(shim: Path | None) -> Iterator[None]:
    """Child processes started meanwhile load the shim (the oracles are children)."""
    if shim is None:
        yield
        return
    before = os.environ.get("LD_PRELOAD")
    os.environ["LD_PRELOAD"] = f"{shim} {before}" if before else str(shim)
    try:
        yield
    finally:
        if before is None:
            del os.environ["LD_PRELOAD"]
        else:
            os.environ["LD_PRELOAD"] = before


def read_by(core: CoreFile, run: Callable[[], T]) -> tuple[T, list[tuple[int, int]]]:
    """run()'s result, and the memory of `core` that was read while it ran (by
    any process: run it with no other reader of this core file)."""
    path = Path(core.path)
    core.release_pages()  # else the pages our own reads mapped could not be dropped
    drop_cached_pages(path)
    with _preloaded(readahead_shim()):
        result = run()
    return result, memory_ranges(core, cached_ranges(path))
