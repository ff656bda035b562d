"""Recording a case (`coredump new`): from a core or a running process to
testdata/<arch>/<name>.json and its blobs.

A case bundles the core, the executable, the dynamic linker and every module
the unwinder touched (for unwind data or memory), as the reference tool does:
enough to replay anywhere, no more. Before a case is written, its frames are
compared with gdb's backtrace of the same core and the same module files
(verify.py), and the bundled subset is replayed to prove it is enough.
"""

from __future__ import annotations

import os
import shlex
import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..arch import host_arch
from ..cases.case_file import GdbWaiver, ModuleRef, TestCase, ThreadFrames
from ..cases.store import BlobStore, full_store
from ..check.case_check import validate_process
from ..core.discovery import discover_modules
from ..core.elfcore import CoreFile
from ..core.memory_modules import module_files, require_modules
from ..core.process import Process
from ..errors import HarnessError
from ..paths import TESTDATA, cache_root
from ..replay import open_case, process_from, thread_frames, unwind_process
from .core_compact import drop_no_access_segments, no_access_ranges
from .gcore import full_coredump_filter, gcore
from .gdb_oracle import gdb_available, gdb_for
from .lean import strip_debug as lean_copy
from .pystack_oracle import compare_with_pystack, pystack_frames
from .skinny import SkinnyOutcome, make_skinny, start_logging
from .verify import compare_with_gdb, has_python_frames

Progress = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


@dataclass
class ReadTracker:
    """The unwinder's memory reader during a recording: the process's own, noting
    which module files served bytes that the core lacks (they must be bundled)."""

    process: Process
    files: set[str] = field(default_factory=set)

    def read(self, addr: int, size: int) -> bytes | None:
        data = self.process.read(addr, size)
        if data is not None and self.process.core.read(addr, size) is None:
            self.files |= self.process.file_sources(addr, size)
        return data


def _bundled_modules(process: Process, touched_ids: set[int], read_from: set[str]) -> list[str]:
    """The executable, the dynamic linker, and every module the unwinder used."""
    keep = {p for p in (process.executable_path(), process.interpreter_path()) if p}
    keep |= read_from
    keep |= {path for path, m in process.modules.items() if m.file_id in touched_ids}
    return sorted(keep)


def _check_name(name: str) -> None:
    if not name or "/" in name or name.startswith("."):
        raise HarnessError(f"invalid case name {name!r}")


def _check_free(target: Path, force: bool) -> None:
    """A taken name fails before any work (a gcore of a large process takes minutes)."""
    if target.exists() and not force:
        raise HarnessError(f"{target} exists; choose another name or pass -force")


def record_case(name: str, *, core: str | Path | None = None, pid: int | None = None,
                sysroot: str | Sequence[str] | None = None, executable: str | None = None,
                store: BlobStore | None = None, testdata: Path = TESTDATA,
                gdb_differences: str | None = None, check_gdb: bool = True,
                force: bool = False, bundle_modules: bool = True,
                progress: Progress = _quiet, temporary_core: bool = False,
                strip_debug: bool = False, full_core: bool = False,
                gdb_executable: str | Path | None = None) -> TestCase:
    """Create testdata/<arch>/<name>.json from a core or a running process.

    Module files are found in `sysroot` (one directory or several, searched in
    order; default `/`), see core/discovery.py. `executable` is the local file of
    the executable where the core's path for it is not under the sysroot (qemu-user
    runs it from the host). With bundle_modules=False no module is stored: replay
    rebuilds them from the core's memory (core/memory_modules.py), which needs a
    core with file pages. `strip_debug` stores modules without their DWARF
    (record/lean.py). A core made for this recording (gcore, or
    `temporary_core` as record-qemu's) is kept in the cache if the recording fails.
    The case stores a skinny core (record/skinny.py) unless `full_core`, or unless
    the skinny one does not prove equal; the full core then goes to the full-core store.
    `gdb_executable` is what gdb gets as the executable: the unstripped twin of a
    stripped build (stored too, as the case's `gdb-executable`).
    """
    if (core is None) == (pid is None):
        raise HarnessError("give exactly one of -core FILE and -pid PID")
    _check_name(name)
    store = store or BlobStore(testdata / "blobs")
    if pid is not None:
        # gcore writes a core of this machine's architecture.
        _check_free(testdata / (host_arch() or "unknown") / f"{name}.json", force)
    with tempfile.TemporaryDirectory(prefix="coredump-new-") as tmp:
        if pid is not None:
            progress(f"running gcore on pid {pid}")
            no_access = no_access_ranges(pid)
            if bundle_modules:
                core = gcore(pid, tmp)
            else:
                with full_coredump_filter(pid):
                    core = gcore(pid, tmp)
            dropped = drop_no_access_segments(Path(core), no_access)
            if dropped:
                progress(f"left out {dropped >> 20} MiB of PROT_NONE mappings gcore wrote as "
                         "zeros")
        assert core is not None
        core_path = Path(core)
        core_file = CoreFile(core_path)
        if not full_core:
            start_logging(core_file)
        target = testdata / core_file.machine / f"{name}.json"
        missing: list[str] = []
        try:
            _check_free(target, force)
            files: Mapping[str, tuple[str | Path, str | None]]
            if bundle_modules:
                files = discover_modules(core_file, sysroot, executable=executable,
                                         progress=progress, missing=missing)
            else:
                files = module_files(core_file, progress=progress)
                require_modules(files, core_path)
        except BaseException:
            core_file.close()
            raise

        progress(f"unwinding {core_path.name} ({core_file.machine}, {len(files)} modules "
                 "on disk)")
        process = process_from(core_file, files)
        exe = process.executable_path()
        exe_file = str(files[exe][0]) if exe in files else None
        try:
            outcome = None
            try:
                threads, module_refs, waivers, gdb_threads = _unwind_and_bundle(
                    process, core_path, store, bundle_modules, check_gdb, gdb_differences,
                    progress, missing, strip_debug, gdb_executable)
                if not full_core:
                    outcome = _make_skinny(process, dict(files), threads, gdb_threads,
                                           Path(tmp), not bundle_modules, progress,
                                           gdb_executable)
            finally:
                process.close()
            stored = outcome.core if outcome is not None else core_path
            progress(f"storing the core ({stored.stat().st_size} bytes)")
            core_ref = store.put_file(stored)
            full_ref = full_store().put_file(core_path) \
                if outcome is not None and outcome.skinny else None
            twin_ref = store.put_file(gdb_executable) if gdb_executable else None
            case = TestCase(core_ref, threads, module_refs, gdb_differences=waivers,
                            no_module_bundling=not bundle_modules, full_ref=full_ref,
                            gdb_executable=twin_ref)
            case.path = target
            _check_replay(case, store, threads)
        except HarnessError as e:
            advice = _keep_failed(core_path, name, pid, sysroot, exe_file,
                                  keep=temporary_core or pid is not None)
            raise HarnessError(f"{e}\n{advice}") from e
    case.save(target)
    return case


def _keep_failed(core: Path, name: str, pid: int | None,
                 sysroot: str | Sequence[str] | None, exe_file: str | None,
                 keep: bool) -> str:
    """Keep the core of a failed recording (a gcore'd process may be gone, qemu's
    temporary directory is removed) and say how to look at it."""
    if keep:
        kept_dir = cache_root() / "failed"
        kept_dir.mkdir(parents=True, exist_ok=True)
        kept = kept_dir / (f"{name}.{pid}.core" if pid is not None else f"{name}.core")
        shutil.move(core, kept)
        core = kept
        where = f"the core is kept at {core}"
    else:
        where = f"the core is {core}"
    roots = [sysroot] if isinstance(sysroot, str) else list(sysroot or [])
    flags = "".join(f" -sysroot {shlex.quote(str(r))}" for r in roots)
    gdb_root = f" -ex 'set sysroot {roots[0]}'" if roots else ""
    return (f"{where}; look at it with:\n"
            f"  .venv/bin/coredump analyze -core {shlex.quote(str(core))}{flags}\n"
            f"  gdb{gdb_root} -ex 'set backtrace past-main on' "
            f"{shlex.quote(exe_file) + ' ' if exe_file else ''}-c {shlex.quote(str(core))}"
            " -ex 'thread apply all bt'\n"
            f"  .venv/bin/coredump new -core {shlex.quote(str(core))} -name {name}{flags} "
            "(to record it again)")


def _unwind_and_bundle(process: Process, core_path: Path, store: BlobStore,
                       bundle_modules: bool, check_gdb: bool, gdb_differences: str | None,
                       progress: Progress, missing: Sequence[str] = (),
                       strip_debug: bool = False, gdb_executable: str | Path | None = None
                       ) -> tuple[list[ThreadFrames], list[ModuleRef], list[GdbWaiver],
                                  dict[int, list[str]] | None]:
    """Unwind every thread, check with gdb, store the modules to bundle.

    With `gdb_differences` (the reason), each difference gdb shows becomes one
    waiver carrying that reason, so later differences are not covered by it.
    Also returns gdb's frames (None without the gdb check)."""
    tracker = ReadTracker(process)
    result = unwind_process(process, reader=tracker.read)
    threads = thread_frames(result)
    waivers: list[GdbWaiver] = []
    gdb_threads = None
    if check_gdb:
        gdb = gdb_for(process.arch)
        if gdb_available(gdb) is None:
            raise HarnessError(f"{gdb} is needed to cross-check a new case; install it or "
                               "pass -no-gdb-check")
        progress("comparing with gdb")
        comparison = compare_with_gdb(process, core_path, threads,
                                      gdb_executable=gdb_executable)
        gdb_threads = comparison.gdb_threads
        exe = process.executable_path()
        lacking = [p for p in missing if ".so" in os.path.basename(p) or p == exe]
        if comparison.problems and lacking:
            # The cause, not the symptom: frames in a file we lack cannot match gdb.
            raise HarnessError(
                "the core maps files that the sysroot lacks, so frames in them cannot be "
                "unwound: " + ", ".join(lacking) + "; copy them into the sysroot (or pass "
                "another -sysroot), then record again. gdb's comparison:\n"
                + "\n".join(comparison.problems))
        if comparison.unwaivable or (comparison.problems and not gdb_differences):
            raise HarnessError(
                "the unwinder disagrees with gdb; fix it, or record anyway with "
                "-gdb-differences \"explanation\" (stored per frame, for these differences "
                "only):\n" + "\n".join(comparison.problems))
        if gdb_differences:
            if not comparison.differences:
                raise HarnessError("-gdb-differences was given but gdb agrees with every "
                                   "frame: record without it")
            waivers = [d.waiver(gdb_differences) for d in comparison.differences]
            for d in comparison.differences:
                progress(f"waived: {d.describe()}")
    if check_gdb and has_python_frames(threads):
        progress("comparing Python frames with pystack")
        python = compare_with_pystack(threads, pystack_frames(process, core_path))
        if python.problems:
            raise HarnessError("the unwinder's Python frames disagree with pystack's:\n"
                               + "\n".join(python.problems))
    module_refs = []
    if bundle_modules:
        with tempfile.TemporaryDirectory(prefix="coredump-lean-") as lean:
            for path in _bundled_modules(process, result.touched_file_ids, tracker.files):
                progress(f"storing {path}")
                local = process.modules[path].local_path
                if strip_debug:
                    local = lean_copy(local, lean)
                module_refs.append(ModuleRef(store.put_file(local), path))
    return threads, module_refs, waivers, gdb_threads


def _make_skinny(process: Process, files: dict[str, tuple[str | Path, str | None]],
                 threads: list[ThreadFrames], gdb_threads: dict[int, list[str]] | None,
                 tmp: Path, rebuild_modules: bool, progress: Progress,
                 gdb_executable: str | Path | None = None) -> SkinnyOutcome:
    """The skinny core, proven (record/skinny.py); the validate emulation runs first so
    that what it reads is kept too."""
    progress("making the core skinny")
    validate_process(process)
    outcome = make_skinny(process, files, threads, gdb_threads, tmp, rebuild_modules,
                          gdb_executable)
    if outcome.skinny:
        progress(f"skinny core: {outcome.size} of {outcome.full_size} bytes "
                 f"({outcome.seconds:.1f} s with its proof)")
    else:
        progress(f"note: keeping the full core: the skinny one failed its proof: "
                 f"{outcome.why_full}")
    return outcome


def _check_replay(case: TestCase, store: BlobStore, threads: list[ThreadFrames]) -> None:
    """Self-check: the bundled subset must replay to the same frames."""
    replayed = open_case(case, store)
    try:
        again = thread_frames(unwind_process(replayed))
    finally:
        replayed.close()
    if again != threads:
        raise HarnessError("replaying from the bundled modules gives different frames; "
                           "a module the unwinder needs was not bundled (please report)")
