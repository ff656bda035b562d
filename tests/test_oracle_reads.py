"""What another program read of a file, from the page cache (record/oracle_reads.py):
how a skinny core learns which pages pystack needs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from harness.paths import cache_root
from harness.record.oracle_reads import (
    _preloaded,
    cached_ranges,
    drop_cached_pages,
    readahead_shim,
)

SIZE = 8 << 20
AT = 5 << 20  # the one page the child reads


def _file(tmp: Path) -> Path:
    path = tmp / "big.bin"
    path.write_bytes(bytes(range(256)) * (SIZE // 256))
    drop_cached_pages(path)
    if sum(e - s for s, e in cached_ranges(path)) > SIZE // 2:
        pytest.skip(f"{tmp} keeps its pages cached (tmpfs?): the page cache cannot tell")
    return path


def _child_reads(path: Path) -> None:
    code = (f"import mmap; f = open({str(path)!r}, 'rb'); "
            f"m = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ); m[{AT}:{AT} + 100]")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_the_page_a_child_maps_is_cached_and_little_else() -> None:
    tmp = cache_root() / "test-oracle-reads"  # on disk, like the cores it is used on
    tmp.mkdir(parents=True, exist_ok=True)
    path = _file(tmp)
    shim = readahead_shim()
    if shim is None:
        pytest.skip("no C compiler for the readahead shim")
    try:
        with _preloaded(shim):
            _child_reads(path)
        cached = cached_ranges(path)
        assert any(s <= AT < e for s, e in cached)
        # without readahead, the mapping's fault brings in its page and at most a
        # fault-around window of pages already cached: nothing like the file
        assert sum(e - s for s, e in cached) <= 64 << 10
    finally:
        path.unlink()


def test_without_the_shim_readahead_brings_in_more() -> None:
    """Why the shim exists: a plain mapping reads around the faulting page."""
    tmp = cache_root() / "test-oracle-reads"
    tmp.mkdir(parents=True, exist_ok=True)
    path = _file(tmp)
    try:
        _child_reads(path)
        cached = cached_ranges(path)
        assert any(s <= AT < e for s, e in cached)
        assert sum(e - s for s, e in cached) > 64 << 10
    finally:
        path.unlink()
