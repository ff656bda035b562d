"""Why gcore could not attach to a process, found before running it.

gdb's own message for a refused attach is a bare "ptrace: Operation not
permitted." that names neither the cause nor the fix. The causes are few and
visible in /proc, so `coredump new -pid` checks them first and says what to do.
"""

from __future__ import annotations

import os
from pathlib import Path

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
