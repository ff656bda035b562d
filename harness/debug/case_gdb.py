"""`coredump gdb`: what is the right answer? Open a case's core in gdb.

gdb opens the case's core with its bundled modules laid out as a sysroot, as the
recording oracle does (record/verify.py), so `bt` shows the process as it was.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..confine import place_under
from ..errors import HarnessError
from ..record.gdb_oracle import make_sysroot
from ..replay import open_case
from .gdb import QUIET_GDB, check_lwp, load_case_file


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
    blob cache, see record/gdb_oracle.make_sysroot), so gdb reads the same files as
    the harness and the recording oracle.
    """
    case = load_case_file(case_path)
    process = open_case(case)
    try:
        check_lwp(lwp, [t.lwp for t in process.threads], case)
        exe = process.executable_path()
        if exe is None or exe not in process.modules:
            raise HarnessError(f"{case.path}: the executable of the core is not bundled "
                               "with the case; gdb cannot open it")
        files = {path: str(m.local_path) for path, m in process.modules.items()}
        core = Path(process.core.path)
        arch = process.arch
        symbol_files = [] if process.core.mappings else [
            (obj.path, obj.bias) for obj in process.loaded_objects() if obj.path in files]
    finally:
        process.close()
    with tempfile.TemporaryDirectory(prefix=f"coredump-gdb-{case.name}-") as tmp:
        sysroot = Path(make_sysroot(tmp, files))
        dirs = sorted({str(place_under(sysroot, p).parent) for p in files if ".so" in p})
        yield CaseSysroot(sysroot, place_under(sysroot, exe), core, dirs, arch,
                          [(str(place_under(sysroot, p)), bias) for p, bias in symbol_files])


def core_gdb_argv(root: CaseSysroot, lwp: int | None = None,
                  gdb_args: Sequence[str] = (), gdb: str = "gdb") -> list[str]:
    """gdb's argv for a case's core, ready for `bt`.

    Sysroot and search path are init commands (-iex): they must be in place
    before gdb loads the executable and reads the core's shared-library list.
    Backtraces go past main and the entry point, as an unwinder's do.
    """
    argv = [gdb, *QUIET_GDB,
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
