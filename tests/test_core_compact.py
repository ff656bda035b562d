"""gcore cores without the PROT_NONE mappings gdb writes as zeros (record/core_compact.py).

A real process: Python reserves 64 MiB with no access (as Go's runtime reserves
its arenas) and fills a readable buffer with a marker; gcore dumps it, the
compaction leaves the reservation's zeros out, and the core still holds every
readable byte (the marker, read through CoreFile) and still loads in gdb.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from harness.core.elfcore import CoreFile
from harness.record.core_compact import drop_no_access_segments, no_access_ranges

RESERVED = 64 << 20
PROGRAM = f"""
import ctypes, mmap, os, sys
reserved = mmap.mmap(-1, {RESERVED}, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS, prot=0)
buf = ctypes.create_string_buffer(b"MARKER-0123456789" * 64)
print(ctypes.addressof(buf), flush=True)
sys.stdin.read()
"""


def test_gcore_core_without_no_access_mappings(tmp_path: Path) -> None:
    gcore = shutil.which("gcore")
    if gcore is None:
        pytest.skip("gcore (gdb) not installed: cannot dump a live process")
    proc = subprocess.Popen([sys.executable, "-c", PROGRAM], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        marker = int(proc.stdout.readline())
        ranges = no_access_ranges(proc.pid)
        assert any(end - start == RESERVED for start, end in ranges)
        done = subprocess.run([gcore, "-o", str(tmp_path / "core"), str(proc.pid)],
                              capture_output=True, text=True, timeout=120)
    finally:
        proc.kill()
        proc.wait()
    core = tmp_path / f"core.{proc.pid}"
    if done.returncode != 0 or not core.exists():
        pytest.skip(f"gcore could not dump pid {proc.pid}: {done.stderr.strip()}")
    before = core.stat().st_size
    with CoreFile(core) as original:
        expected = original.read(marker, 17 * 64)
        threads = [t.lwp for t in original.threads]
    assert expected == b"MARKER-0123456789" * 64

    dropped = drop_no_access_segments(core, ranges)
    assert dropped >= RESERVED
    assert core.stat().st_size <= before - RESERVED
    with CoreFile(core) as compact:
        assert compact.read(marker, 17 * 64) == expected
        assert [t.lwp for t in compact.threads] == threads
    gdb = shutil.which("gdb")
    if gdb is not None:  # gdb still reads the rewritten core
        out = subprocess.run([gdb, "-batch", "-c", str(core), "-ex", f"x/s {marker}"],
                             capture_output=True, text=True, timeout=120).stdout
        assert "MARKER-0123456789" in out
    assert drop_no_access_segments(core, ranges) == 0  # nothing left to drop


def test_nothing_to_drop(tmp_path: Path) -> None:
    """No ranges, or a core with no segment of those ranges: the file is untouched."""
    assert drop_no_access_segments(tmp_path / "absent", set()) == 0
    assert no_access_ranges(2 ** 22 + 12345) == set()  # no such process
