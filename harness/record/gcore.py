"""Freezing a running process with gdb's gcore (`coredump new -pid`).

gdb's own message for a refused attach is a bare "ptrace: Operation not
permitted." that names neither the cause nor the fix. The causes are few and
visible in /proc, so they are checked first (attach_problem) and the error says
what to do. For `-no-module-bundling` the core must also hold the file-backed
pages, which gcore dumps only as /proc/PID/coredump_filter allows
(full_coredump_filter).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..errors import HarnessError

YAMA_SCOPE = Path("/proc/sys/kernel/yama/ptrace_scope")


def _status(pid: int) -> dict[str, str] | None:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    except OSError:
        return {}
    fields = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    return fields


def _process_name(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return "?"


def _yama_scope() -> int:
    try:
        return int(YAMA_SCOPE.read_text().strip())
    except (OSError, ValueError):
        return 0  # no Yama: classic ptrace rules only


def _is_ancestor(ancestor: int, pid: int) -> bool:
    seen = 0
    while pid > 1 and seen < 4096:
        status = _status(pid)
        if not status or "PPid" not in status:
            return False
        pid = int(status["PPid"])
        if pid == ancestor:
            return True
        seen += 1
    return False


def attach_problem(pid: int) -> str | None:
    """A message saying why ptrace(ATTACH) on pid will fail and what to do, or None."""
    status = _status(pid)
    if status is None:
        return f"process {pid} does not exist (has it exited?)"
    if not status:
        return None  # unreadable status: let gcore try and report
    state = status.get("State", "")
    if state.startswith(("Z", "X")):
        return (f"process {pid} ({_process_name(pid)}) has exited ({state}); "
                "there is nothing left to dump")
    tracer = int(status.get("TracerPid", "0") or 0)
    if tracer:
        return (f"process {pid} is already being traced by pid {tracer} "
                f"({_process_name(tracer)}); a process has one tracer at most: detach that "
                "debugger or strace first")
    scope = _yama_scope()
    if scope >= 3:
        return ("ptrace is disabled on this machine (kernel.yama.ptrace_scope=3, which only a "
                "reboot resets); create the core another way (kill -ILL with `ulimit -c "
                "unlimited`) and use `coredump new -core`")
    if os.geteuid() != 0:
        uids = status.get("Uid", "").split()
        if uids and int(uids[0]) != os.geteuid():
            return (f"process {pid} belongs to uid {uids[0]}, not to you (uid {os.geteuid()}); "
                    "run `coredump new` with sudo, then `chown -R $USER .` in the repository")
        if scope >= 1 and not _is_ancestor(os.getpid(), pid):
            return (f"ptrace of process {pid} is restricted to its parent "
                    f"(kernel.yama.ptrace_scope={scope}); run with sudo, or allow it with "
                    "`sudo sysctl kernel.yama.ptrace_scope=0`")
    return None


def refusal_advice() -> str:
    """What to do about a refused ptrace, for this machine: sudo only to a non-root
    user, the Yama knob only where Yama is, else what is left (a container policy)."""
    fixes = []
    if os.geteuid() != 0:
        fixes.append("run as root (sudo)")
    if YAMA_SCOPE.exists() and _yama_scope() > 0:
        fixes.append(f"allow it with `sysctl kernel.yama.ptrace_scope=0` (it is "
                     f"{_yama_scope()})")
    if not fixes:
        return ("this machine has no Yama and you are root, so a sandbox refuses it "
                "(a container without CAP_SYS_PTRACE, a seccomp profile): allow ptrace "
                "there, or dump with `kill -ILL` and use `coredump new -core`")
    return " or ".join(fixes)


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
            hint = f" — ptrace was refused: {refusal_advice()}"
        raise HarnessError(f"gcore failed for pid {pid}{hint}: " + " | ".join(detail))
    return core


FULL_COREDUMP_FILTER = 0x3F  # anonymous + file-backed, private + shared, ELF headers


@contextmanager
def full_coredump_filter(pid: int) -> Iterator[None]:
    """Make gcore (which honours coredump_filter) dump file pages too; restore after."""
    with coredump_filter(pid, FULL_COREDUMP_FILTER,
                         "without it the core lacks the modules' pages"):
        yield


@contextmanager
def coredump_filter(pid: int, value: int, why: str = "gcore needs it") -> Iterator[None]:
    """Set /proc/PID/coredump_filter (what gcore dumps) for a while; restore after."""
    path = Path(f"/proc/{pid}/coredump_filter")
    try:
        old = path.read_text().strip()
        path.write_text(f"{value:#x}\n")
    except FileNotFoundError:
        raise HarnessError(f"process {pid} does not exist (has it exited?)") from None
    except OSError as e:
        raise HarnessError(
            f"cannot set {path} to {value:#x} ({e.strerror}); {why}: run as the process's "
            "owner or root") from e
    try:
        yield
    finally:
        try:
            path.write_text(f"0x{old}\n")
        except OSError:
            pass  # the process is gone; nothing to restore
