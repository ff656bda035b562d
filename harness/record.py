"""Recording cases (`coredump new`) and checking them against gdb (`coredump verify`).

A case bundles the core, the executable, the dynamic linker and every module
the unwinder touched (for unwind data or memory), as the reference tool does:
enough to replay anywhere, no more. Before a case is written, its frames are
compared with gdb's backtrace of the same core and the same module files.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from . import memory_modules
from .bpf_abi import ARCH_AMD64, ARCH_ARM64
from .build import REPO_ROOT
from .elfcore import CoreFile
from .errors import HarnessError
from .formatting import frame_diff
from .gdb_oracle import gdb_available, gdb_backtraces, make_sysroot
from .linkmap import executable_path as executable_path_of
from .process import Module, Process
from .procfs import attach_problem
from .replay import open_case, open_process, store_for, unwind_process
from .store import BlobStore
from .sysroot import resolve_in_sysroot
from .testcase import ModuleRef, TestCase, ThreadFrames

AT_BASE = 7
AT_ENTRY = 9
TESTDATA = REPO_ROOT / "testdata"

Progress = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


def gcore(pid: int, out_dir: str | Path) -> Path:
    """Snapshot a running process with gdb's gcore; errors say what to do."""
    exe = shutil.which("gcore")
    if exe is None:
        raise HarnessError("gcore not found: install gdb (apt-get install gdb) to record "
                           "from a pid, or pass -core with a core file")
    problem = attach_problem(pid)
    if problem:
        raise HarnessError(problem)
    prefix = Path(out_dir) / "core"
    proc = subprocess.run([exe, "-o", str(prefix), str(pid)], capture_output=True, text=True,
                          timeout=300)
    core = Path(f"{prefix}.{pid}")
    if proc.returncode != 0 or not core.exists():
        detail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        hint = ""
        if not Path(f"/proc/{pid}").exists():
            hint = f" — process {pid} exited while gcore ran"
        elif "ptrace" in proc.stderr.lower() or "not permitted" in proc.stderr.lower():
            hint = (" — ptrace was refused: run as root (sudo) or allow it with "
                    "`sysctl kernel.yama.ptrace_scope=0`")
        raise HarnessError(f"gcore failed for pid {pid}{hint}: " + " | ".join(detail))
    return core


def _is_elf(path: str) -> bool:
    with open(path, "rb") as f:
        return f.read(4) == b"\x7fELF"


def _find_under_sysroot(path: str, sysroot: str | None) -> str | None:
    """Like qemu-user's -L: the file under the sysroot, else the path itself."""
    for candidate in ([os.path.join(sysroot, path.lstrip("/"))] if sysroot else []) + [path]:
        if os.path.isfile(candidate) and _is_elf(candidate):
            return candidate
    return None


def modules_from_link_map(core: CoreFile, sysroot: str | None,
                          progress: Progress = _quiet) -> dict[str, tuple[str, str | None]]:
    """Module files of a core without NT_FILE (qemu-user), via AT_EXECFN and link_map."""
    exe = executable_path_of(core)
    if exe is None:
        raise HarnessError("the core has neither a file list (NT_FILE) nor a readable AT_EXECFN; "
                           "cannot tell which executable it belongs to")
    exe_local = _find_under_sysroot(exe, sysroot)
    if exe_local is None:
        raise HarnessError(f"executable {exe} not found (sysroot {sysroot or '/'}); "
                           "pass -sysroot or run from the directory the program was started in")
    found: dict[str, tuple[str, str | None]] = {exe: (exe_local, None)}
    probe = Process(core, {exe: Module(exe, exe_local)})
    for obj in probe.loaded_objects()[1:]:
        local = _find_under_sysroot(obj.path, sysroot)
        if local is None:
            progress(f"warning: {obj.path} not found under {sysroot or '/'}; frames in it "
                     "cannot be attributed")
            continue
        found[obj.path] = (local, None)
    return found


def candidate_modules(core: CoreFile, sysroot: str | None,
                      progress: Progress = _quiet) -> dict[str, tuple[str, str | None]]:
    """{original path: (local file, None)} for every mapped file found on disk."""
    if not core.mappings:
        return modules_from_link_map(core, sysroot, progress)
    found: dict[str, tuple[str, str | None]] = {}
    for mapping in core.mappings:
        path = mapping.path
        if path in found or not path.startswith("/") or path.startswith(("/dev/", "/memfd:")):
            continue
        local = path
        if sysroot:  # links resolved inside the sysroot; if missing, the warning names it
            local = resolve_in_sysroot(sysroot, path) or os.path.join(sysroot, path.lstrip("/"))
        if path.endswith(" (deleted)") or not os.path.isfile(local):
            progress(f"warning: {path} is not available at {local}; frames in it cannot be "
                     "attributed")
            continue
        if not _is_elf(local):
            continue  # a mapped data file (locale archive, cache...): not a module
        found[path] = (local, None)
    return found


def _entry_modules(process: Process) -> set[str]:
    """Paths of the executable and the dynamic linker (always bundled)."""
    paths = set()
    for key in (AT_ENTRY, AT_BASE):
        addr = process.core.auxv.get(key)
        mapping = process.mapping_at(addr) if addr else None
        if mapping is not None and mapping.module is not None:
            paths.add(mapping.path)
    return paths


def executable_path(process: Process) -> str | None:
    addr = process.core.auxv.get(AT_ENTRY)
    mapping = process.mapping_at(addr) if addr else None
    return mapping.path if mapping else None


@dataclass
class GdbComparison:
    problems: list[str]
    gdb_threads: dict[int, list[str]]


def gdb_for(arch: str) -> str:
    """gdb for the host's own architecture, gdb-multiarch for foreign cores."""
    host = {"x86_64": ARCH_AMD64, "aarch64": ARCH_ARM64}.get(platform.machine())
    return "gdb" if arch == host else "gdb-multiarch"


def gdb_frames(process: Process, core_path: str | Path, exe: str, sysroot: str) -> dict[
        int, list[str]]:
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
            mapping = process.mapping_at(pc)
            if mapping is None or mapping.module is None:
                frames.append(f"<gdb: {pc:#x} outside known modules>")
            else:
                frames.append(f"{mapping.module.name}+{pc - mapping.bias:#x}")
        result[thread.lwp] = frames
    return result


def compare_with_gdb(process: Process, core_path: str | Path,
                     threads: list[ThreadFrames]) -> GdbComparison:
    """Compare our frames with gdb's, thread by thread."""
    exe = executable_path(process)
    if exe is None or exe not in process.modules:
        return GdbComparison(["cannot find the executable of the core for gdb"], {})
    with tempfile.TemporaryDirectory(prefix="coredump-sysroot-") as tmp:
        files = {path: str(m.local_path) for path, m in process.modules.items()}
        sysroot = make_sysroot(tmp, files)
        exe_local = os.path.join(sysroot, exe.lstrip("/"))
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


def _touched_modules(process: Process, touched_ids: set[int]) -> list[str]:
    keep = _entry_modules(process) | process.read_from
    keep |= {path for path, m in process.modules.items() if m.file_id in touched_ids}
    return sorted(keep)


def record_case(name: str, *, core: str | Path | None = None, pid: int | None = None,
                sysroot: str | None = None, store: BlobStore | None = None,
                testdata: Path = TESTDATA, gdb_differences: str | None = None,
                check_gdb: bool = True, force: bool = False, bundle_modules: bool = True,
                progress: Progress = _quiet) -> TestCase:
    """Create testdata/<arch>/<name>.json from a core or a running process.

    With bundle_modules=False no module is stored: replay rebuilds them from the
    core's memory (see memory_modules), which needs a core with file pages.
    """
    if (core is None) == (pid is None):
        raise HarnessError("give exactly one of -core FILE and -pid PID")
    if not name or "/" in name or name.startswith("."):
        raise HarnessError(f"invalid case name {name!r}")
    store = store or BlobStore(testdata / "blobs")
    with tempfile.TemporaryDirectory(prefix="coredump-new-") as tmp:
        if pid is not None:
            progress(f"running gcore on pid {pid}")
            if bundle_modules:
                core = gcore(pid, tmp)
            else:
                with memory_modules.full_coredump_filter(pid):
                    core = gcore(pid, tmp)
        assert core is not None
        core_path = Path(core)
        with CoreFile(core_path) as probe:
            arch = probe.machine
            modules: Mapping[str, tuple[str | Path, str | None]]
            if bundle_modules:
                modules = candidate_modules(probe, sysroot, progress)
            else:
                modules = memory_modules.module_files(probe, progress=progress)
                memory_modules.require_modules(modules, core_path)
        target = testdata / arch / f"{name}.json"
        if target.exists() and not force:
            raise HarnessError(f"{target} exists; choose another name or pass -force")

        progress(f"unwinding {core_path.name} ({arch}, {len(modules)} modules on disk)")
        process = open_process(core_path, modules)
        try:
            result = unwind_process(process)
            threads = [ThreadFrames(t.lwp, t.frames) for t in result.threads]
            bundled = _touched_modules(process, result.touched_file_ids) if bundle_modules else []
            if check_gdb:
                if gdb_available(gdb_for(arch)) is None:
                    raise HarnessError(f"{gdb_for(arch)} is needed to cross-check a new case; "
                                       "install it or pass -no-gdb-check")
                progress("comparing with gdb")
                comparison = compare_with_gdb(process, core_path, threads)
                if comparison.problems and not gdb_differences:
                    raise HarnessError(
                        "the unwinder disagrees with gdb; fix it, or record anyway with "
                        "-gdb-differences \"explanation\":\n" + "\n".join(comparison.problems))
            module_refs = []
            for path in bundled:
                progress(f"storing {path}")
                module_refs.append(ModuleRef(store.put_file(process.modules[path].local_path),
                                             path))
        finally:
            process.close()
        progress(f"storing the core ({core_path.stat().st_size} bytes)")
        core_ref = store.put_file(core_path)

    case = TestCase(core_ref, threads, module_refs, gdb_differences=gdb_differences)
    if not bundle_modules:
        case.extra[memory_modules.FIELD] = True
    case.path = target
    # Self-check: the bundled subset must replay to the same frames.
    replayed = open_case(case, store)
    try:
        again = [ThreadFrames(t.lwp, t.frames) for t in unwind_process(replayed).threads]
    finally:
        replayed.close()
    if again != threads:
        raise HarnessError("replaying from the bundled modules gives different frames; "
                           "a module the unwinder needs was not bundled (please report)")
    case.save(target)
    return case


def verify_case(case: TestCase, store: BlobStore | None = None) -> GdbComparison:
    """Re-run the gdb comparison for a recorded case."""
    store = store or store_for(case)
    process = open_case(case, store)
    try:
        return compare_with_gdb(process, store.local_path(case.coredump_ref), case.threads)
    finally:
        process.close()
