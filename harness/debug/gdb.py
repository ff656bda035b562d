"""What both gdb views of a case share: loading the case, checking the thread asked
for, and running gdb on this terminal."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Sequence
from pathlib import Path

from ..cases.case_file import TestCase, load_case
from ..errors import HarnessError

# Keep gdb off the network (the case's modules are all local) and never let it
# ask "Enable debuginfod?" before the first command runs.
QUIET_GDB = ["-q", "-iex", "set debuginfod enabled off"]


def load_case_file(case_path: str | os.PathLike[str]) -> TestCase:
    path = Path(case_path)
    if not path.is_file():
        raise HarnessError(f"case file {path} does not exist")
    return load_case(path)


def check_lwp(lwp: int | None, core_lwps: Sequence[int], case: TestCase) -> None:
    if lwp is not None and lwp not in core_lwps:
        raise HarnessError(f"{case.path}: the core has no thread {lwp}; its threads are "
                           + ", ".join(str(t) for t in core_lwps))


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
