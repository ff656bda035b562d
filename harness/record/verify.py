"""The gdb oracle applied to a case: gdb unwinds the same core with the same module
files, and its frames are compared with ours one by one (`coredump new`,
`coredump verify`, the suite's gdb test).

gdb's frames are put in the case's spelling first: `module+0x<ELF vaddr>`, with
callers at their return address minus one, as the unwinder prints them.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..cases.case_file import TestCase, ThreadFrames
from ..cases.store import BlobStore
from ..confine import place_under
from ..core.process import Process
from ..formatting import frame_diff
from ..replay import open_case
from .gdb_oracle import gdb_backtraces, gdb_for, make_sysroot


@dataclass
class GdbComparison:
    problems: list[str]
    gdb_threads: dict[int, list[str]]


def gdb_frames(process: Process, core_path: str | Path, exe: str,
               sysroot: str) -> dict[int, list[str]]:
    """gdb's backtraces, formatted like ours (module+vaddr, callers minus one)."""
    result = {}
    symbol_files = None
    if not process.core.mappings:
        symbol_files = [(str(m.local_path), obj.bias) for obj in process.loaded_objects()
                        if (m := process.modules.get(obj.path)) is not None]
    for thread in gdb_backtraces(str(core_path), exe, sysroot, gdb=gdb_for(process.arch),
                                 symbol_files=symbol_files):
        frames = []
        for frame in thread.frames:
            pc = frame.pc - 1 if frame.caller else frame.pc
            found = process.module_at(pc)
            if found is None:
                frames.append(f"<gdb: {pc:#x} outside known modules>")
            else:
                module, vaddr = found
                frames.append(f"{module.name}+{vaddr:#x}")
        result[thread.lwp] = frames
    return result


def compare_with_gdb(process: Process, core_path: str | Path,
                     threads: list[ThreadFrames]) -> GdbComparison:
    """Compare our frames with gdb's, thread by thread."""
    exe = process.executable_path()
    if exe is None or exe not in process.modules:
        return GdbComparison(["cannot find the executable of the core for gdb"], {})
    with tempfile.TemporaryDirectory(prefix="coredump-sysroot-") as tmp:
        files = {path: str(m.local_path) for path, m in process.modules.items()}
        sysroot = make_sysroot(tmp, files)
        exe_local = str(place_under(sysroot, exe))
        theirs = gdb_frames(process, core_path, exe_local, sysroot)
    problems = []
    for t in threads:
        ours = [f for f in t.frames if not f.startswith("<")]
        aborted = len(ours) != len(t.frames)
        gdb = theirs.get(t.lwp)
        if gdb is None:
            problems.append(f"thread {t.lwp}: gdb does not list it")
            continue
        # An aborted walk must agree with gdb as far as it got.
        compared = gdb[: len(ours)] if aborted else gdb
        if ours != compared:
            problems.append(f"thread {t.lwp} differs from gdb (expected = gdb):\n"
                            + frame_diff(compared, ours))
        elif aborted:
            problems.append(f"thread {t.lwp}: our unwinder aborted after {len(ours)} frames "
                            f"where gdb found {len(gdb)}: {t.frames[-1]}")
    return GdbComparison(problems, theirs)


def verify_case(case: TestCase, store: BlobStore | None = None) -> GdbComparison:
    """Re-run the gdb comparison for a recorded case."""
    process = open_case(case, store)
    try:
        return compare_with_gdb(process, process.core.path, case.threads)
    finally:
        process.close()
