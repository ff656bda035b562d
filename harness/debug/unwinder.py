"""`coredump debug`: what does the unwinder do? Single-step it on a case in gdb.

gdb runs a Python process (harness.debug.target) that replays the case, or one
thread of it, with the unoptimised build of bpf_src (bpf/build.py DEBUG_FLAGS),
and stops in native_tracer_entry with bpf_src as the source directory: `step`,
`next`, `list` and `info locals` work on the BPF C code. Python itself stays
optimised; only the unwinder's shared object matters. Extra gdb arguments
(`-batch -ex ...` in the tests) go before the program.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..arch import AMD64
from ..bpf.abi import Abi
from ..bpf.bridge import get_unwinder
from ..bpf.build import HOST_DIR, build_unwinder, default_source
from ..bpf.debuginfo import read_layout
from ..cases.store import store_for
from ..core.elfcore import CoreFile
from ..paths import DEBUG_BUILD_ENV, REPO_ROOT
from ..replay import open_case, unwind_process
from .gdb import QUIET_GDB, check_lwp, load_case_file

# The module the Python under gdb runs.
DEBUG_TARGET_MODULE = "harness.debug.target"
# gdb's side: the quiet breakpoint and `quiet-run` (run by gdb, not imported).
GDB_SCRIPT = Path(__file__).with_name("gdb_quiet.py")
# The shared object the breakpoint waits for (bpf/build.py names it unwinder.so).
UNWINDER_LIBRARY = "unwinder"


@dataclass
class DebugThread:
    """One thread replayed by the debug target: what the unwinder said, what the case says."""

    lwp: int
    frames: list[str]
    expected: list[str] | None  # None: the case does not list this thread

    @property
    def ok(self) -> bool:
        return self.frames == self.expected


def replay_for_debugging(case_path: str | os.PathLike[str],
                         lwp: int | None = None) -> list[DebugThread]:
    """Replay a case (or its thread `lwp`) with the debug build of the unwinder.

    Like replay.replay_case, but only the selected thread reaches
    native_tracer_entry, so a breakpoint there stops once, in that thread.
    """
    case = load_case_file(case_path)
    process = open_case(case)
    try:
        check_lwp(lwp, [t.lwp for t in process.threads], case)
        unwinder = get_unwinder(process.arch, debug=True)
        result = unwind_process(process, frozenset(case.fault_addresses), unwinder=unwinder,
                                lwp=lwp)
        expected = {t.lwp: t.frames for t in case.threads}
        return [DebugThread(t.lwp, t.frames, expected.get(t.lwp)) for t in result.threads]
    finally:
        process.close()


def prepare_debug(case_path: str | os.PathLike[str], lwp: int | None = None) -> Path:
    """Check the case and thread, and build the debug unwinder before gdb starts.

    Building here keeps the compiler out of the debugged process (gdb would
    report its fork and exec) and turns build errors into a clear message.
    Returns the path of the debug shared object.
    """
    case = load_case_file(case_path)
    store = store_for(case)
    with CoreFile(store.local_path(case.coredump_ref)) as core:
        check_lwp(lwp, [t.lwp for t in core.threads], case)
        arch = core.machine
    for module in case.modules:  # extract now, not while stepping
        store.local_path(module.ref)
    return build_unwinder(arch, debug=True)


def entry_program() -> str:
    """The program coredump debug stops in first: it starts every thread's unwind.
    Programs are the same for both target architectures; amd64's build says which."""
    source = default_source()
    layout = read_layout(build_unwinder(AMD64, debug=True, source=source), source.directory)
    return Abi(layout, AMD64, source.entry_program, source.trace_struct).entry_program


def debug_argv(case_path: str | os.PathLike[str], lwp: int | None = None,
               gdb_args: Sequence[str] = (), run: bool = True,
               gdb: str = "gdb") -> list[str]:
    """gdb's argv for single-stepping the unwinder on one case.

    The unwinder is loaded with ctypes only after Python has started; gdb_quiet.py
    sets the breakpoint when it loads and runs the program without gdb's start-up
    notices.
    """
    target = [sys.executable, "-m", DEBUG_TARGET_MODULE, str(Path(case_path).resolve())]
    if lwp is not None:
        target += ["--lwp", str(lwp)]
    argv = [gdb, *QUIET_GDB,
            "-iex", "set print thread-events off",
            "-ex", f"directory {HOST_DIR}",
            "-ex", f"directory {default_source().directory}",
            "-x", str(GDB_SCRIPT),
            "-ex", f"python arm({entry_program()!r}, {UNWINDER_LIBRARY!r})"]
    argv += _python_gdb_extension()
    if run:
        argv += ["-ex", "quiet-run"]
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
    env[DEBUG_BUILD_ENV] = "1"
    return env
