"""The unwinder in the kernel equals the emulator: each test program runs, the
BPF build unwinds its threads at syscall entry (coredump live), a core of it is
replayed, and every thread's trace must be equal, field by field, including
the stop reason. Skipped, with the reason, where BPF programs cannot be loaded
and attached (not root, no BTF, locked down) or gcore is missing."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from harness.arch import host_arch
from harness.bpf.bridge import RawFrame, TraceResult
from harness.cli import main
from harness.core.discovery import discover_modules
from harness.core.elfcore import CoreFile
from harness.live.compare import LiveReport, _compare, run_live
from harness.live.residency import PageSnapshot, ResidentReader
from harness.live.session import live_unavailable_reason
from harness.live.trigger import TriggerError, in_system_call, interrupt_threads, thread_ids
from harness.paths import REPO_ROOT
from harness.record.gcore import gcore
from harness.replay import process_from
from tests.programs import ready_line

BUILD_SH = REPO_ROOT / "testsources" / "build.sh"
BUILD = REPO_ROOT / "testsources" / "build" / (host_arch() or "unknown")
READY_TIMEOUT = 10.0


def _unavailable() -> str | None:
    if host_arch() is None:
        return "live runs on the host architecture, which the harness does not target"
    for tool in ("gcore", "gcc", "g++"):
        if shutil.which(tool) is None:
            return f"{tool} not found"
    return live_unavailable_reason()


REASON = _unavailable()
pytestmark = [pytest.mark.bpf, pytest.mark.gdb, pytest.mark.slow,
              pytest.mark.skipif(REASON is not None, reason=f"coredump live: {REASON}")]


@pytest.fixture(scope="module")
def bindir() -> str:
    subprocess.run(["bash", str(BUILD_SH), str(BUILD)], check=True, capture_output=True)
    return str(BUILD)


@dataclass
class Running:
    proc: subprocess.Popen[bytes]
    pid: int  # the process the ready line names (vfork: the child)


def _ready_pid(proc: subprocess.Popen[bytes]) -> int:
    words = ready_line(proc, READY_TIMEOUT).split()
    return int(words[1]) if len(words) > 1 else proc.pid


def _all_blocked(pid: int) -> None:
    """Wait until every thread sleeps in a system call (a thread may announce
    itself a moment before it gets there)."""
    deadline = time.monotonic() + READY_TIMEOUT
    while not all(in_system_call(pid, t) for t in thread_ids(pid)):
        if time.monotonic() > deadline:
            pytest.fail(f"threads of {pid} still in user space after {READY_TIMEOUT}s")
        time.sleep(0.01)


Start = Callable[..., Running]


@pytest.fixture
def start(bindir: str) -> Iterator[Start]:
    started: list[Running] = []

    def run(program: str, wait_blocked: bool = True) -> Running:
        path = os.path.join(bindir, program)
        if not os.path.exists(path):
            pytest.skip(f"{program} is built for x86_64 only (testsources/build.sh)")
        proc = subprocess.Popen([path], stdout=subprocess.PIPE)
        running = Running(proc, proc.pid)
        started.append(running)
        running.pid = _ready_pid(proc)
        if wait_blocked:
            _all_blocked(running.pid)
        return running

    yield run
    for running in started:
        if running.pid != running.proc.pid:  # vfork's child outlives its parent
            with contextlib.suppress(ProcessLookupError):
                os.kill(running.pid, signal.SIGKILL)
        running.proc.kill()
        running.proc.wait()


# program -> (threads it has, all blocked in a system call; how each trace ends)
PROGRAMS = {
    "blocked": (7, "done"),          # nanosleep, read, poll, mutex and condvar futexes,
                                     # a handler on a sigaltstack
    "recurse": (1, "done"),          # 220 frames of recursion
    "deep": (1, "done"),             # 4,004 frames: 16 tail calls of the unwinder
    "deep.limit": (1, "aborted"),    # past MAX_FRAMES: the native_max_frames error frame
    "garbage.block": (1, "aborted"), # a smashed stack: the native_pc_not_mapped error frame
    "sigframe": (1, "done"),         # a handler in pause(), through the kernel's signal frame
    "cxx": (2, "done"),              # libstdc++ frames, std::function thunks, pthread_once
    "chain.O2.nofp": (1, "done"),    # no frame pointers: CFI only
    "chain.O2.nocfi": (1, "done"),   # no CFI for the program: frame-pointer chaining
    "static": (1, "done"),           # one static module (libc's CFI in the executable)
    "realign": (1, "done"),          # GCC's DRAP: CFA = *(rbp - 8)
    "untouched": (2, "aborted"),     # FP into a file page and an anonymous page never
                                     # touched: unreadable to the kernel, so to replay too
                                     # (live/residency.py)
}


def _check_equal(report: LiveReport, threads: int, status: str = "done") -> None:
    assert len(report.threads) == threads
    for row in report.threads:
        assert row.equal is True, (f"thread {row.tid}: {row.problem}\n"
                                   f"kernel: {row.live}\nreplay: {row.replay}")
        assert row.live == row.replay and row.live_status == row.replay_status == status


@pytest.mark.parametrize("program", sorted(PROGRAMS))
def test_kernel_trace_equals_replay(program: str, start: Start) -> None:
    running = start(program)
    report = run_live(running.pid, compare=True)
    _check_equal(report, *PROGRAMS[program])
    if program == "blocked":
        signal_threads = [t for t in report.live.traces.values()
                          if any(f.signal for f in t.frames)]
        assert len(signal_threads) == 1  # the altstack handler's, past its signal frame
    frames = report.threads[0].live or []
    if program == "deep":
        assert len(frames) > 4000
    if program == "deep.limit":
        assert len(frames) == 4096 and frames[-1].endswith("error native_max_frames>")
    if program == "garbage.block":
        assert frames[-1].endswith("error native_pc_not_mapped>")
    if program == "untouched":
        for row in report.threads:
            assert (row.live or [])[-1].endswith("error native_read_return_address>")


def test_replay_reads_only_pages_the_kernel_could(start: Start) -> None:
    """The differences live -compare found: at each thread's frame pointer a file
    (.rodata) or the core (zeros of untouched anonymous memory) has bytes, the
    process has no page, and the kernel's read fails; replay must fail too."""
    running = start("untouched")
    snapshot = PageSnapshot(running.pid, os.sysconf("SC_PAGE_SIZE"))
    with tempfile.TemporaryDirectory() as tmp:
        core = CoreFile(gcore(running.pid, tmp))
        process = process_from(core, discover_modules(core))
    try:
        reader = ResidentReader(process, snapshot)
        assert len(process.threads) == 2
        for thread in process.threads:
            fp, sp = thread.regs["rbp"], thread.regs["rsp"]
            assert process.read(fp, 16) is not None  # the file's bytes, the core's zeros
            assert reader(fp, 16) is None
            assert reader(sp, 16) == process.read(sp, 16)  # the stack: present
        assert reader.refused == 2
    finally:
        process.close()


def test_vfork_child_on_its_parent_stack(start: Start) -> None:
    running = start("vfork", wait_blocked=False)
    _all_blocked(running.pid)
    _check_equal(run_live(running.pid, compare=True), 1)


def test_vfork_parent_cannot_stop_and_is_an_error_not_a_hang(start: Start) -> None:
    running = start("vfork", wait_blocked=False)
    started = time.monotonic()
    with pytest.raises(TriggerError, match="did not stop within 0.3 s"):
        interrupt_threads(running.proc.pid, timeout=0.3)
    assert time.monotonic() - started < 3
    # and coredump live says so before gcore, which would wait for it for good
    with pytest.raises(TriggerError, match="waits in vfork"):
        run_live(running.proc.pid)


def test_a_thread_in_user_space_is_reported_not_compared(start: Start) -> None:
    running = start("threads", wait_blocked=False)
    time.sleep(0.2)
    report = run_live(running.pid, compare=True)
    spinning = [r for r in report.threads if r.equal is None]
    assert len(spinning) == 1 and "user space" in spinning[0].problem
    assert spinning[0].live is None and spinning[0].replay
    assert sum(1 for r in report.threads if r.equal) == 5
    assert not report.differences


def test_cli_live_compare(start: Start,
                          capsys: pytest.CaptureFixture[str]) -> None:
    running = start("chain.O2.nofp")
    assert main(["live", "-pid", str(running.pid), "-compare"]) == 0
    out = capsys.readouterr().out
    assert f"thread {running.pid}: EQUAL (done, 9 frames); live = replay:" in out
    assert "1 equal, 0 different, 0 not compared" in out
    assert "kernel run time:" in out and "us per trace" in out
    assert main(["live", "-pid", str(running.pid)]) == 0
    out = capsys.readouterr().out
    assert f"thread {running.pid}: done, 9 frames" in out and "replay" not in out


def _trace(frames: list[tuple[int, int, int]], status: str = "done") -> TraceResult:
    return TraceResult(1, 1, 1, [RawFrame(f, a, c, 1, 0, 0) for f, a, c in frames],
                       status_name=status)


def test_compare_sees_every_field_and_the_stop_reason() -> None:
    """Synthetic traces: the comparison itself can fail, on each thing it checks."""
    base = _trace([(7, 0x10, 0x100), (7, 0x20, 0x200)])
    assert _compare(base, _trace([(7, 0x10, 0x100), (7, 0x20, 0x200)]), False) == (True, "")
    equal, why = _compare(base, _trace([(7, 0x10, 0x100), (7, 0x20, 0x208)]), False)
    assert equal is False and "frame #1" in why and "0x208" in why  # the CFA alone
    equal, why = _compare(base, _trace([(7, 0x10, 0x100)]), False)
    assert equal is False and "2 live, 1 replayed" in why
    equal, why = _compare(base, _trace([(7, 0x10, 0x100), (7, 0x20, 0x200)], "aborted"),
                          False)
    assert equal is False and "stop reason" in why
    assert _compare(None, base, False)[0] is False   # blocked, yet no trace: a difference
    assert _compare(None, base, True)[0] is None     # in user space: not compared


# A Python process (CPython's frames between the native ones): threads in time.sleep
# under two Python functions, as a profiler samples a sleeping service.
PYTHON_SCRIPT = """\
import threading, time
def inner(n):
    time.sleep(3600)
def outer(n):
    inner(n + 1)
t = threading.Thread(target=outer, args=(1,), daemon=True)
t.start()
time.sleep(0.2)
print("ready", flush=True)
outer(0)
"""
PYTHONS = {f"py{v}": f"/root/.pyenv/versions/{full}/bin/python{v}"
           for v, full in (("3.6", "3.6.15"), ("3.9", "3.9.18"), ("3.10", "3.10.13"),
                           ("3.11", "3.11.7"), ("3.12", "3.12.1"), ("3.13", "3.13.0"))}
PYTHONS["py3.11.debian"] = "/usr/bin/python3.11"


@pytest.mark.parametrize("name", sorted(PYTHONS))
def test_python_process_kernel_trace_equals_replay(name: str, tmp_path: Path) -> None:
    """unwind_python in the kernel: <= 3.10 finds the thread state by the thread
    pointer, read from the task at the offset in the kernel's BTF (live/kernel_btf.py);
    3.11+ by the native thread id. Both threads' traces equal the replay's."""
    python = PYTHONS[name]
    if not os.path.exists(python):
        pytest.skip(f"{python} is not installed (pyenv / Debian's python3.11)")
    script = tmp_path / "sleepers.py"
    script.write_text(PYTHON_SCRIPT)
    proc = subprocess.Popen([python, str(script)], stdout=subprocess.PIPE)
    try:
        pid = _ready_pid(proc)
        _all_blocked(pid)
        report = run_live(pid, compare=True)
    finally:
        proc.kill()
        proc.wait()
    _check_equal(report, 2)
    for row in report.threads:
        frames = row.live or []
        assert any(f.startswith(f"inner+1 in {script}:3") for f in frames), frames
        assert any(f.startswith(f"outer+1 in {script}:5") for f in frames), frames
