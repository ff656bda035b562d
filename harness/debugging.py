"""Debugging a case in gdb: single-step the unwinder, or open the frozen process.

Two views of one case, the two questions a failing case raises:

* `coredump debug` (debug_argv): what does the unwinder do? gdb runs a Python
  process (harness.debug_target) that replays the case, or one thread of it,
  with the unoptimised build of bpf_src (build.DEBUG_FLAGS), and stops in
  native_tracer_entry with bpf_src as the source directory: `step`, `next`,
  `list` and `info locals` work on the BPF C code. Python itself stays
  optimised; only the unwinder's shared object matters.
* `coredump gdb` (core_gdb_argv): what is the right answer? gdb opens the
  case's core with its bundled modules laid out as a sysroot, as the recording
  oracle does (harness/record.py), so `bt` shows the process as it was.

Both build an argv and leave the terminal to gdb (run_gdb); extra gdb
arguments (`-batch -ex ...` in the tests) go before the program.
"""

from __future__ import annotations

import contextlib
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .agent import Agent
from .bpf_abi import ARCH_AMD64, ARCH_ARM64
from .bridge import get_unwinder
from .build import BPF_SRC, REPO_ROOT, build_unwinder
from .elfcore import CoreFile
from .errors import HarnessError
from .formatting import format_trace
from .gdb_oracle import make_sysroot
from .record import executable_path
from .replay import open_case, regs_struct, store_for
from .testcase import TestCase, load_case

# The program coredump debug stops in first: it starts every thread's unwind.
ENTRY_BREAKPOINT = "native_tracer_entry"
# harness.debug_target, run by the Python under gdb.
DEBUG_TARGET_MODULE = "harness.debug_target"
# Keep gdb off the network (the case's modules are all local) and never let it
# ask "Enable debuginfod?" before the first command runs.
_QUIET_GDB = ["-q", "-iex", "set debuginfod enabled off"]
_HOST_ARCHES = {"x86_64": ARCH_AMD64, "aarch64": ARCH_ARM64}


@dataclass
class DebugThread:
    """One thread replayed by the debug target: what the unwinder said, what the case says."""

    lwp: int
    frames: list[str]
    expected: list[str] | None  # None: the case does not list this thread

    @property
    def ok(self) -> bool:
        return self.frames == self.expected


def host_arch() -> str | None:
    """This machine's architecture in the harness's names, or None if it has none."""
    return _HOST_ARCHES.get(platform.machine())


def find_gdb(core_arch: str | None = None) -> str:
    """The gdb to run: plain gdb, or gdb-multiarch for a core of another architecture.

    Debian's plain gdb only knows the host's architecture; scripts/bootstrap
    installs it when it is missing.
    """
    name = "gdb" if core_arch is None or core_arch == host_arch() else "gdb-multiarch"
    gdb = shutil.which(name)
    if gdb is None:
        why = f" to open a {core_arch} core" if name != "gdb" else ""
        raise HarnessError(f"{name} not found{why}: install it (apt-get install {name})")
    return gdb


def _load(case_path: str | os.PathLike[str]) -> TestCase:
    path = Path(case_path)
    if not path.is_file():
        raise HarnessError(f"case file {path} does not exist")
    return load_case(path)


def _check_lwp(lwp: int | None, core_lwps: Sequence[int], case: TestCase) -> None:
    if lwp is not None and lwp not in core_lwps:
        raise HarnessError(f"{case.path}: the core has no thread {lwp}; its threads are "
                           + ", ".join(str(t) for t in core_lwps))


def replay_for_debugging(case_path: str | os.PathLike[str],
                         lwp: int | None = None) -> list[DebugThread]:
    """Replay a case (or its thread `lwp`) with the debug build of the unwinder.

    Like replay.replay_case, but only the selected thread reaches
    native_tracer_entry, so a breakpoint there stops once, in that thread.
    """
    case = _load(case_path)
    process = open_case(case, store_for(case))
    try:
        _check_lwp(lwp, [t.lwp for t in process.threads], case)
        unwinder = get_unwinder(process.arch, debug=True)
        Agent(unwinder, process).attach()
        names = {m.file_id: m.name for m in process.modules.values()}
        expected = {t.lwp: t.frames for t in case.threads}
        result = []
        for thread in process.threads:
            if lwp is not None and thread.lwp != lwp:
                continue
            trace = unwinder.unwind(regs_struct(process.arch, thread), process.pid,
                                    thread.lwp, process.read, frozenset(case.fault_addresses))
            result.append(DebugThread(thread.lwp, format_trace(trace, names),
                                      expected.get(thread.lwp)))
        return result
    finally:
        process.close()


def prepare_debug(case_path: str | os.PathLike[str], lwp: int | None = None) -> Path:
    """Check the case and thread, and build the debug unwinder before gdb starts.

    Building here keeps the compiler out of the debugged process (gdb would
    report its fork and exec) and turns build errors into a clear message.
    Returns the path of the debug shared object.
    """
    case = _load(case_path)
    store = store_for(case)
    with CoreFile(store.local_path(case.coredump_ref)) as core:
        _check_lwp(lwp, [t.lwp for t in core.threads], case)
        arch = core.machine
    for module in case.modules:  # extract now, not while stepping
        store.local_path(module.ref)
    return build_unwinder(arch, debug=True)


def debug_argv(case_path: str | os.PathLike[str], lwp: int | None = None,
               gdb_args: Sequence[str] = (), run: bool = True,
               gdb: str = "gdb") -> list[str]:
    """gdb's argv for single-stepping the unwinder on one case.

    The breakpoint is pending: the unwinder is loaded with ctypes only after
    Python has started, and gdb resolves the breakpoint then.
    """
    target = [sys.executable, "-m", DEBUG_TARGET_MODULE, str(Path(case_path).resolve())]
    if lwp is not None:
        target += ["--lwp", str(lwp)]
    argv = [gdb, *_QUIET_GDB,
            "-ex", "set breakpoint pending on",
            "-ex", f"directory {BPF_SRC / 'host'}",
            "-ex", f"directory {BPF_SRC}",
            "-ex", f"break {ENTRY_BREAKPOINT}"]
    argv += _python_gdb_extension()
    if run:
        argv += ["-ex", "run"]
    return argv + list(gdb_args) + ["--args", *target]


def _python_gdb_extension() -> list[str]:
    """Let gdb load the debugged Python's own gdb extension (py-bt, py-list).

    It is the script CPython installs beside its executable; gdb refuses it by
    default (auto-load safe-path) and prints a long warning instead.
    """
    script = Path(os.path.realpath(sys.executable) + "-gdb.py")
    return ["-iex", f"add-auto-load-safe-path {script}"] if script.is_file() else []


def debug_env() -> dict[str, str]:
    """The debugged Python imports this checkout's harness and uses the debug build."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    env["COREDUMP_DEBUG_BUILD"] = "1"
    return env


@dataclass
class CaseSysroot:
    """A case's core and modules, laid out where gdb looks for them."""

    sysroot: Path
    executable: Path
    core: Path
    solib_dirs: list[str]
    arch: str  # the core's architecture (which gdb can read it)
    # (original path, load bias) for cores without a file list (qemu-user):
    # gdb cannot relocate a PIE from such a core, so it is told the biases.
    symbol_files: list[tuple[str, int]] = field(default_factory=list)


@contextlib.contextmanager
def case_sysroot(case_path: str | os.PathLike[str],
                 lwp: int | None = None) -> Iterator[CaseSysroot]:
    """Extract a case into a temporary sysroot, removed on exit.

    Every bundled module appears at its original path (symlinks into the
    blob cache, see gdb_oracle.make_sysroot), so gdb reads the same files as
    the harness and the recording oracle.
    """
    case = _load(case_path)
    store = store_for(case)
    process = open_case(case, store)
    try:
        _check_lwp(lwp, [t.lwp for t in process.threads], case)
        exe = executable_path(process)
        if exe is None or exe not in process.modules:
            raise HarnessError(f"{case.path}: the executable of the core is not bundled "
                               "with the case; gdb cannot open it")
        files = {path: str(m.local_path) for path, m in process.modules.items()}
        core = store.local_path(case.coredump_ref)
        arch = process.arch
        symbol_files = [] if process.core.mappings else [
            (obj.path, obj.bias) for obj in process.loaded_objects() if obj.path in files]
    finally:
        process.close()
    with tempfile.TemporaryDirectory(prefix=f"coredump-gdb-{case.name}-") as tmp:
        sysroot = Path(make_sysroot(tmp, files))
        dirs = sorted({str((sysroot / p.lstrip("/")).parent) for p in files if ".so" in p})
        yield CaseSysroot(sysroot, sysroot / exe.lstrip("/"), core, dirs, arch,
                          [(str(sysroot / p.lstrip("/")), bias) for p, bias in symbol_files])


def core_gdb_argv(root: CaseSysroot, lwp: int | None = None,
                  gdb_args: Sequence[str] = (), gdb: str = "gdb") -> list[str]:
    """gdb's argv for a case's core, ready for `bt`.

    Sysroot and search path are init commands (-iex): they must be in place
    before gdb loads the executable and reads the core's shared-library list.
    Backtraces go past main and the entry point, as an unwinder's do.
    """
    argv = [gdb, *_QUIET_GDB,
            "-iex", f"set sysroot {root.sysroot}",
            "-iex", f"set solib-search-path {':'.join(root.solib_dirs)}",
            "-iex", "set backtrace past-main on",
            "-iex", "set backtrace past-entry on"]
    files: list[str] = [str(root.executable), str(root.core)]
    if root.symbol_files:
        argv += ["-ex", f"core-file {root.core}"]
        argv += [a for path, bias in root.symbol_files
                 for a in ("-ex", f"add-symbol-file {path} -o {bias:#x}")]
        files = []
    if lwp is not None:
        argv += ["-ex", "python [t.switch() for t in gdb.selected_inferior().threads() "
                        f"if t.ptid[1] == {lwp}]"]
    return argv + list(gdb_args) + files


def _ignore_interrupt(_signum: int, _frame: object) -> None:
    pass


def run_gdb(argv: Sequence[str], env: dict[str, str] | None = None) -> int:
    """Run gdb on this terminal and return its exit status.

    Ctrl-C is meant for gdb (to interrupt the debugged program), so this
    process does nothing on it while gdb runs. A no-op handler, not SIG_IGN:
    an ignored signal would stay ignored in gdb and its inferior after exec.
    """
    previous = signal.signal(signal.SIGINT, _ignore_interrupt)
    try:
        return subprocess.run(list(argv), env=env, check=False).returncode
    except OSError as e:
        raise HarnessError(f"cannot run {argv[0]}: {e}") from e
    finally:
        signal.signal(signal.SIGINT, previous)
