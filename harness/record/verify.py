"""The gdb oracle applied to a case: gdb unwinds the same core with the same module
files, and its frames are compared with ours one by one (`coredump new`,
`coredump verify`, the suite's gdb test).

gdb's frames are put in the case's spelling first: `module+0x<ELF vaddr>`, with
callers at their return address minus one, as the unwinder prints them.

The lists are aligned (diffing.py) and each hunk is one difference, named by its
thread, our frame index and the frames on both sides. A difference is accepted
only if the case has a waiver for exactly it (`gdb-differences`, with the reason);
a waiver that matches nothing is stale and fails as well, so a case-wide silence
is impossible: changing an unrelated frame always shows.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..cases.case_file import GdbWaiver, TestCase, ThreadFrames
from ..cases.store import BlobStore, store_for
from ..confine import place_under
from ..core.process import Process
from ..diffing import Annotate, frame_annotator, frame_diff, hunks
from ..errors import HarnessError
from ..formatting import is_interpreter_frame
from ..replay import open_case
from ..unwind_data.gosym import go_frame, go_tables
from .gdb_oracle import gdb_backtraces, gdb_for, make_sysroot
from .pystack_oracle import PystackComparison, compare_with_pystack, pystack_frames


@dataclass(frozen=True)
class GdbDifference:
    """gdb printed `gdb` where we print `ours`, from our frame `frame` of thread `lwp`."""

    lwp: int
    frame: int
    gdb: tuple[str, ...]
    ours: tuple[str, ...]

    def waiver(self, why: str) -> GdbWaiver:
        return GdbWaiver(self.lwp, self.frame, list(self.gdb), list(self.ours), why)

    def matches(self, waiver: GdbWaiver) -> bool:
        return (waiver.lwp, waiver.frame, waiver.gdb, waiver.ours) == \
            (self.lwp, self.frame, list(self.gdb), list(self.ours))

    def describe(self) -> str:
        return (f"thread {self.lwp} frame #{self.frame}: gdb {_frames_text(self.gdb)}; "
                f"ours {_frames_text(self.ours)}")


def _frames_text(frames: Sequence[str], most: int = 6) -> str:
    """A run of frames for a message: a long one shows its ends and how many between."""
    if not frames:
        return "nothing"
    if len(frames) <= most:
        return ", ".join(frames)
    half = most // 2
    return (", ".join(frames[:half]) + f", ... {len(frames) - most} more ..., "
            + ", ".join(frames[-half:]))


@dataclass
class GdbComparison:
    """`problems` fail (unexplained differences, stale waivers, missing threads);
    `differences` are all those found, `waived` the ones the case explains."""

    problems: list[str]
    gdb_threads: dict[int, list[str]]
    differences: list[GdbDifference] = field(default_factory=list)
    waived: list[GdbWaiver] = field(default_factory=list)
    # Problems no waiver can cover (a thread gdb does not list).
    unwaivable: list[str] = field(default_factory=list)
    python: PystackComparison | None = None  # pystack's check of the Python frames


def gdb_frames(process: Process, core_path: str | Path, exe: str,
               sysroot: str) -> dict[int, list[str]]:
    """gdb's backtraces, formatted like ours (module+vaddr, callers minus one)."""
    result = {}
    symbol_files = None
    if not process.core.mappings:
        symbol_files = [(str(m.local_path), obj.bias) for obj in process.loaded_objects()
                        if (m := process.modules.get(obj.path)) is not None]
    go = go_tables(process.all_modules())  # Go frames in the spelling ours have
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
                frames.append(go_frame(go, module.file_id, vaddr) or f"{module.name}+{vaddr:#x}")
        result[thread.lwp] = frames
    return result


def compare_with_gdb(process: Process, core_path: str | Path,
                     threads: list[ThreadFrames], waivers: Sequence[GdbWaiver] = (),
                     annotate: Annotate | None = None,
                     gdb_executable: str | Path | None = None) -> GdbComparison:
    """Compare our frames with gdb's, thread by thread; `waivers` are the case's
    accepted differences, `annotate` adds symbols to the diffs shown.
    `gdb_executable` is the file gdb gets as the executable (a stripped build's
    unstripped twin: the same code, with the symbols and DWARF gdb needs)."""
    try:
        theirs = gdb_frames_of(process, core_path, gdb_executable)
    except NoExecutable as e:
        return GdbComparison([str(e)], {}, unwaivable=[str(e)])
    return judge(threads, theirs, waivers,
                 annotate or frame_annotator(process.all_modules()))


class NoExecutable(HarnessError):
    pass


def gdb_frames_of(process: Process, core_path: str | Path,
                  gdb_executable: str | Path | None = None) -> dict[int, list[str]]:
    """gdb's frames for a core of this process, its modules in a scratch sysroot
    (`gdb_executable`: the executable gdb gets, see compare_with_gdb)."""
    exe = process.executable_path()
    if exe is None or exe not in process.modules:
        raise NoExecutable("cannot find the executable of the core for gdb")
    with tempfile.TemporaryDirectory(prefix="coredump-sysroot-") as tmp:
        files = {path: str(m.local_path) for path, m in process.modules.items()}
        if gdb_executable is not None:
            files[exe] = str(gdb_executable)
        sysroot = make_sysroot(tmp, files)
        exe_local = str(place_under(sysroot, exe))
        return gdb_frames(process, core_path, exe_local, sysroot)


def judge(threads: list[ThreadFrames], theirs: dict[int, list[str]],
          waivers: Sequence[GdbWaiver] = (), annotate: Annotate | None = None) -> GdbComparison:
    """Our threads against gdb's frames, with the case's waivers applied."""
    comparison = GdbComparison([], theirs)
    unused = list(waivers)
    for t in threads:
        gdb = theirs.get(t.lwp)
        if gdb is None:
            comparison.unwaivable.append(f"thread {t.lwp}: gdb does not list it")
            comparison.problems.append(comparison.unwaivable[-1])
            continue
        # Our error frame (an aborted walk) stays in: it lines up against the frames
        # gdb found beyond the point where we stopped, and is a difference like any.
        # Interpreter frames are pystack's to check (pystack_oracle.py), not gdb's.
        ours = [f for f in t.frames[:-1] if not f.startswith("<")
                and not is_interpreter_frame(f)] + t.frames[-1:]
        found = [GdbDifference(t.lwp, h.act_start, tuple(h.expected(gdb)),
                               tuple(h.actual(ours))) for h in hunks(gdb, ours)]
        comparison.differences += found
        unexplained = []
        for d in found:
            waiver = next((w for w in unused if d.matches(w)), None)
            if waiver is None:
                unexplained.append(d)
            else:
                unused.remove(waiver)
                comparison.waived.append(waiver)
        if unexplained:
            comparison.problems.append(
                f"thread {t.lwp} differs from gdb ({len(unexplained)} unexplained, "
                f"{len(found) - len(unexplained)} explained):\n"
                + "\n".join("  " + d.describe() for d in unexplained) + "\n"
                + frame_diff(gdb, ours, expected_name="gdb", actual_name="ours",
                             annotate=annotate))
    for w in unused:
        comparison.problems.append(
            f"stale gdb waiver: thread {w.lwp} frame #{w.frame} (gdb {', '.join(w.gdb)}; "
            f"ours {', '.join(w.ours)}; why: {w.why}) matches no difference any more: "
            "remove it from the case file")
    return comparison


def verify_case(case: TestCase, store: BlobStore | None = None) -> GdbComparison:
    """Re-run the gdb comparison for a recorded case, and pystack's for a case with
    Python frames (its problems join gdb's)."""
    store = store or store_for(case)
    twin = store.local_path(case.gdb_executable) if case.gdb_executable else None
    process = open_case(case, store)
    try:
        comparison = compare_with_gdb(process, process.core.path, case.threads,
                                      case.gdb_differences, gdb_executable=twin)
        if has_python_frames(case.threads):
            python = compare_with_pystack(case.threads,
                                          pystack_frames(process, process.core.path),
                                          faults=bool(case.fault_addresses))
            comparison.problems += python.problems
            comparison.python = python
        return comparison
    finally:
        process.close()


def has_python_frames(threads: Sequence[ThreadFrames]) -> bool:
    return any(is_interpreter_frame(f) for t in threads for f in t.frames)
