"""Make every thread of a live process enter a system call now.

The live entry program runs at syscall entry (bpf_src/kernel/live_entry.h),
but a thread blocked in a system call has entered it long ago. PTRACE_SEIZE +
PTRACE_INTERRUPT stops each thread without a signal: its blocking call returns
-ERESTART* on the way to the stop, and after PTRACE_DETACH the kernel restarts
it (the instruction pointer moved back over the `syscall` instruction, or
restart_syscall for nanosleep/poll), so the thread enters the kernel again
with the user registers and stack it slept with -- the ones a core holds.

Why not a signal: SIGSTOP/SIGCONT does the same restart, but the parent sees
the job stop (a shell prints it), and a signal the process handles runs its
handler and changes the stack. The interrupt is invisible to the process: no
signal is queued, nothing runs in user space. A thread running in user space
(never in a syscall) is stopped and resumed where it was and sends no trace;
the caller reports it.
"""

from __future__ import annotations

import ctypes
import os
import signal
import time

from ..errors import HarnessError
from ..record.gcore import attach_problem, refusal_advice

PTRACE_DETACH = 17
PTRACE_SEIZE = 0x4206
PTRACE_INTERRUPT = 0x4207
PTRACE_EVENT_STOP = 128
WALL = 0x40000000  # __WALL: wait for threads of other processes we trace

_libc = ctypes.CDLL(None, use_errno=True)
_libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p]
_libc.ptrace.restype = ctypes.c_long


class TriggerError(HarnessError):
    """The threads could not be interrupted (ptrace refused, process gone)."""


def thread_ids(pid: int) -> list[int]:
    """The process's threads now (/proc/PID/task)."""
    try:
        return sorted(int(t) for t in os.listdir(f"/proc/{pid}/task"))
    except FileNotFoundError:
        raise TriggerError(f"process {pid} does not exist (has it exited?)") from None


def in_system_call(pid: int, tid: int) -> bool:
    """Whether the thread is blocked in a system call (/proc/.../syscall is
    "running" for a thread in user space): only those will send a trace."""
    try:
        text = open(f"/proc/{pid}/task/{tid}/syscall").read().strip()
    except OSError:
        return False
    return bool(text) and text.split()[0] not in ("running", "-1")


# Where a vfork parent sleeps (/proc/.../wchan) until its child execs or exits:
# uninterruptibly, so neither gdb nor PTRACE_INTERRUPT can stop it.
VFORK_WCHANS = ("kernel_clone", "_do_fork", "do_fork", "wait_for_vfork_done")


def vfork_waiters(pid: int) -> list[int]:
    """Threads of `pid` waiting in vfork for their child."""
    found = []
    for tid in thread_ids(pid):
        try:
            wchan = open(f"/proc/{pid}/task/{tid}/wchan").read().strip()
        except OSError:
            continue
        if wchan in VFORK_WCHANS:
            found.append(tid)
    return found


def require_stoppable(pid: int) -> None:
    """TriggerError (at once, not after a gcore that waits for good) if a thread
    of `pid` is a vfork parent."""
    waiting = vfork_waiters(pid)
    if waiting:
        raise TriggerError(f"thread {waiting[0]} of process {pid} waits in vfork() for its "
                           "child, uninterruptibly: neither gcore nor ptrace can stop it "
                           "until the child execs or exits (run live on the child)")


def _ptrace(request: int, tid: int, data: int = 0) -> None:
    if _libc.ptrace(request, tid, None, ctypes.c_void_p(data)) != 0:
        err = ctypes.get_errno()
        raise TriggerError(f"ptrace({request:#x}) on thread {tid}: {os.strerror(err)}"
                           + (f" — {refusal_advice()}" if err == 1 else ""))


def _wait_stop(tid: int, timeout: float) -> int:
    """Wait for the thread's stop; the signal to hand back on detach (0 unless
    a signal arrived meanwhile and stopped it first). A thread that cannot stop
    (a vfork parent waits for its child uninterruptibly) is an error after
    `timeout` seconds, not a hang."""
    deadline = time.monotonic() + timeout
    while True:
        got, status = os.waitpid(tid, WALL | os.WNOHANG)
        if got == 0:
            if time.monotonic() > deadline:
                raise TriggerError(f"thread {tid} did not stop within {timeout:g} s of "
                                   "PTRACE_INTERRUPT (a vfork parent cannot stop until its "
                                   "child execs or exits)")
            time.sleep(0.001)
            continue
        if not os.WIFSTOPPED(status):
            raise TriggerError(f"thread {tid} exited while it was being interrupted")
        if status >> 16 == PTRACE_EVENT_STOP:
            return 0
        sig = os.WSTOPSIG(status)
        return 0 if sig in (signal.SIGSTOP, signal.SIGTRAP) else sig


def interrupt_threads(pid: int, timeout: float = 2.0) -> list[int]:
    """Interrupt every thread of `pid` once and let it go; returns their ids.
    A thread that does not stop stays seized until this process exits (the
    kernel detaches only stopped tracees on request)."""
    problem = attach_problem(pid)
    if problem:
        raise TriggerError(problem)
    tids = thread_ids(pid)
    seized: list[int] = []
    stopped: dict[int, int] = {}
    try:
        for tid in tids:
            _ptrace(PTRACE_SEIZE, tid)
            seized.append(tid)
        for tid in seized:
            _ptrace(PTRACE_INTERRUPT, tid)
        for tid in seized:
            stopped[tid] = _wait_stop(tid, timeout)
    finally:
        for tid in seized:
            if tid not in stopped:  # only a stopped tracee can be detached
                try:
                    _ptrace(PTRACE_INTERRUPT, tid)
                    stopped[tid] = _wait_stop(tid, 0.1)
                except (TriggerError, ChildProcessError):
                    continue
            try:
                _ptrace(PTRACE_DETACH, tid, stopped[tid])
            except TriggerError:
                pass  # gone: nothing to let go
    return tids
