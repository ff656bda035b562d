#!/usr/bin/env python3
"""Record the bundled amd64 cases from the programs in this directory.

Each program is started, waited for until it prints `ready`, then frozen
either by gcore (`coredump new -pid`) or by the kernel (SIGILL with an
unlimited core size, then `coredump new -core`). "gcore-nobundle" is
`coredump new -pid -no-module-bundling`: coredump_filter 0x3f, no modules
stored, replay rebuilds them from the core. Every recording is checked
against gdb by `new` itself.

    .venv/bin/python testsources/record_cases.py [--only NAME...] [--force]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

from harness.cases.case_file import TestCase  # noqa: E402
from harness.record.new import record_case  # noqa: E402
from harness.record.qemu import record_under_qemu  # noqa: E402

BUILD = HERE / "build" / "amd64"
BUILD_ARM64 = HERE / "build" / "arm64"

# (case name, program, how to freeze it)
CASES = [
    ("chain.O0.fp", "chain.O0.fp", "gcore"),
    ("chain.O0.nofp.sigill", "chain.O0.nofp", "kernel"),
    ("chain.O2.fp", "chain.O2.fp", "gcore"),
    ("chain.O2.nofp", "chain.O2.nofp", "gcore"),
    ("chain.O3.fp.sigill", "chain.O3.fp", "kernel"),
    ("chain.O3.nofp", "chain.O3.nofp", "gcore"),
    ("chain.O2.nocfi", "chain.O2.nocfi", "gcore"),
    ("threads", "threads", "gcore"),
    ("threads.sigill", "threads", "kernel"),
    ("recurse", "recurse", "gcore"),
    ("cxx", "cxx", "gcore"),
    ("static.sigill", "static", "kernel"),
    ("sigframe", "sigframe", "gcore"),
    ("chain.O2.nofp.nobundle", "chain.O2.nofp", "gcore-nobundle"),
    ("vdso", "vdso", "gcore"),
    ("vdso.sigill", "vdso", "kernel"),
    ("realign", "realign", "gcore"),
    ("deep", "deep", "gcore"),
    ("deep.limit", "deep.limit", "gcore"),
    ("vfork", "vfork", "kernel"),  # the parent, in vfork(): a fatal signal ends its wait
    ("vfork.child", "vfork", "gcore-child"),   # the child, on the parent's stack
    ("garbage", "garbage", "gcore"),
    ("sighandler", "sighandler", "gcore"),
    ("musl.threads", "threads.musl", "gcore"),
    ("musl.static", "threads.musl.static", "gcore"),
    ("musl.sighandler", "sighandler.musl", "gcore"),
    ("go.goroutines", "go.goroutines", "gcore"),  # Go: pclntab deltas, goroutine/g0 roots
    ("go.goroutines.stripped", "go.goroutines.stripped", "gcore"),  # -ldflags=-s -w
    ("go.cgo", "go.cgo", "gcore"),  # C frames and Go frames in one thread, both ways
]

# Python cases: (case name, interpreter, arguments of pystacks.py, how to freeze it).
# The script runs from a fixed path (PYTHON_SCRIPT), so the frames name no checkout.
# Modules are stored without DWARF (record/lean.py): pyenv's libpython is 23 MB.
PYENV = Path("/root/.pyenv/versions")
PYTHON_SCRIPT = Path("/tmp/coredump-testsources/pystacks.py")
PYTHON_CASES = [
    ("py3.11", PYENV / "3.11.7/bin/python3.11", ["20", "asyncio"], "gcore"),
    ("py3.12.deep", PYENV / "3.12.1/bin/python3.12", ["600"], "gcore"),
    ("py3.13.sigill", PYENV / "3.13.0/bin/python3.13", ["20", "asyncio"], "kernel"),
    ("py3.10", PYENV / "3.10.13/bin/python3.10", ["20"], "gcore"),
    ("py3.9", PYENV / "3.9.18/bin/python3.9", ["20"], "gcore"),
    ("py3.8.sigill", PYENV / "3.8.18/bin/python3.8", ["20"], "kernel"),
    ("py3.7", PYENV / "3.7.16/bin/python3.7", ["20", "asyncio"], "gcore"),
    ("py3.6", PYENV / "3.6.15/bin/python3.6", ["20"], "gcore"),
    ("py3.11.debian", Path("/usr/bin/python3.11"), ["20"], "gcore"),
]

# arm64 Python cases under qemu-user: (case name, arguments of pystacks.py).
ARM64_PYTHON_CASES = [
    ("py3.11.debian", ["20"]),
]

# gdb's executable where the bundled one is stripped: the unstripped twin of the same build.
GDB_EXECUTABLES = {"go.goroutines.stripped": "go.goroutines"}

# Differences from gdb that a case explains (per frame, as `new -gdb-differences`).
GDB_DIFFERENCES = {
    "garbage": "the return address above smash was overwritten with 0x4141414141414141: the "
               "unwinder ends there with native_pc_not_mapped; gdb goes on to print the "
               "overwritten words as hundreds of frames outside any module",
    "musl.threads": "musl's libc.so has no CFI and only .dynsym: gdb's prologue analysis of "
                    "the local function __syscall_cp_c (frame #1) takes a stack word for "
                    "its caller (an address in a thread stack, then -1) and stops; the "
                    "unwinder follows rules synthesized from libc's instructions (marked "
                    "[synthesized rule] by analyze, checked by validate-deltas) through "
                    "the pthread, time and I/O wrappers to main/_start and __clone",
    "musl.static": "musl has no CFI: gdb's prologue analysis of __syscall_cp_c (frame #1) "
                   "ends at a return address of -1; the unwinder's rules synthesized from "
                   "the instructions reach main/_start_c and __clone (where musl zeroes "
                   "%rbp: the outermost frame), and the spinning thread ends at __clone "
                   "where gdb reads one more word past it (builtin_tls)",
    "musl.sighandler": "musl's libc.so has no CFI and only .dynsym: gdb stops two frames "
                       "into libc (a stack word, then -1) as in musl.threads; the "
                       "unwinder's synthesized rules go on, and musl's __restore_rt "
                       "(no CFI either) is recognised by its instructions "
                       "(mov $15,%rax; syscall) as the signal frame",
    "deep.limit": "a trace holds MAX_FRAMES (4,096) frames: at the limit the unwinder ends "
                  "it with the explicit native_max_frames error frame, where gdb goes on to "
                  "main and _start",
}

_GO_ROOTS = ("the walk ends at Go's stack roots (runtime.goexit under every goroutine, "
             "runtime.mstart under a thread's g0 stack, runtime.mcall where g0 runs the "
             "scheduler for a parked goroutine), as Go's own traceback and the reference "
             "tool end it; gdb goes on past them, reading whatever words lie above (a zero "
             "return address, small integers, from mstart runtime.clone or in a cgo binary "
             "the C thread start)")
_GO_SWITCH = ("the walk ends with go_stack_switch where Go runs on the thread's system stack "
              "(runtime.systemstack; time.now and nanotime1 calling the vDSO): the "
              "goroutine's frames are reachable only through g (thread-local storage) or "
              "a register the unwinder does not carry; gdb unwinds the switching function "
              "with its pcsp frame on the wrong stack and reads on")
_GO_ASMCGOCALL = ("gdb cannot follow asmcgocall's switch from the system stack back to the "
                  "goroutine stack: it unwinds asmcgocall with its empty pcsp frame on the "
                  "system stack and reads garbage; the unwinder takes the goroutine's SP from "
                  "g.stack.hi minus the depth asmcgocall saved (bpf_src/go_stack.h) and "
                  "reaches cgocall and the Go callers, the frames Go's own traceback shows")


# Go preempts a spinning goroutine with a signal every 10 ms; under qemu-user a thread
# is then often caught in Go's handler, whose return address is qemu's own signal
# trampoline, on a page of no module (qemu-user cores have no vDSO). The Go programs
# are recorded without asynchronous preemption, so that no case depends on it.
GO_ENV = {"GODEBUG": "asyncpreemptoff=1"}


def explain_go_waivers(case: TestCase) -> None:
    """Each waiver of a Go case gets the reason that fits it (`new` stores one reason
    for all): where our walk ends at a stack switch, where it follows asmcgocall
    and gdb cannot, or (all others) where it stops at a Go root and gdb reads on."""
    threads = {t.lwp: t.frames for t in case.threads}
    for waiver in case.gdb_differences:
        if any("go_stack_switch" in f for f in waiver.ours):
            waiver.why = _GO_SWITCH
        elif waiver.ours and any("asmcgocall" in f for f in threads[waiver.lwp]):
            waiver.why = _GO_ASMCGOCALL
        else:
            waiver.why = _GO_ROOTS
    case.save()


for _name in ("go.goroutines", "go.goroutines.stripped", "go.cgo", "go.spinStep.pro.entry",
              "go.spinStep.pro.str", "go.spinStep.epi.ldp", "go.spinStep.epi.ret"):
    GDB_DIFFERENCES[_name] = _GO_ROOTS

# arm64 cases, recorded under qemu-user: (case name, program, site or None).
# A site stops the program at one instruction (see harness/record/qemu.py);
# without one the program is frozen once it is ready.
ARM64_CASES = [
    ("sites.f5.pro.entry", "sites", "f5:entry"),       # prologue, nothing stored yet
    ("sites.f5.pro.stp", "sites", "f5:after-stp"),     # right after stp x29, x30, [sp, #-N]!
    ("sites.f5.body", "sites", "f5:body"),             # frame record set up
    ("sites.f5.epi.ldp", "sites", "f5:after-ldp"),     # after ldp x29, x30, before ret
    ("sites.f5.epi.ret", "sites", "f5:ret"),           # on ret
    ("sites.f4.pro.sub", "sites", "f4:after-sub"),     # big frame: sp moved, record not stored
    ("sites.f4.epi.ldp", "sites", "f4:after-ldp"),     # big frame: after ldp, before add sp
    ("sites.leaf.loop", "sites", "leaf:loop"),         # leaf that never saves x30
    ("threads", "threads", None),
    ("recurse", "recurse", None),
    ("chain.O2.nofp", "chain.O2.nofp", None),
    ("chain.O2.nocfi", "chain.O2.nocfi", None),           # no FDEs: frame records
    ("cxx", "cxx", None),
    ("static", "static", None),
    ("deep", "deep", None),
    ("sighandler", "sighandler", None),  # qemu's sigreturn trampoline: anonymous memory
    ("go.goroutines", "go.goroutines", None),  # Go 1.19 cross-built, pclntab deltas
    # A Go function's prologue and epilogue (main.spinStep, a 32-byte frame):
    ("go.spinStep.pro.entry", "go.goroutines", "main.spinStep+0x0"),  # RA in LR
    ("go.spinStep.pro.str", "go.goroutines", "main.spinStep+0x10"),   # after str x30, [sp,#-32]!
    ("go.spinStep.epi.ldp", "go.goroutines", "main.spinStep+0x24"),   # after ldp, before add sp
    ("go.spinStep.epi.ret", "go.goroutines", "main.spinStep+0x28"),   # on ret: RA in LR again
]


@contextlib.contextmanager
def go_environment(name: str) -> Iterator[None]:
    """GO_ENV in the environment while a Go case's program runs (it inherits it)."""
    saved = {key: os.environ.get(key) for key in GO_ENV}
    if name.startswith("go."):
        os.environ.update(GO_ENV)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def start(program: Path | list[str], cwd: str,
          core_limit: bool) -> tuple[subprocess.Popen[str], int]:
    """The program, once ready, and the pid its `ready <pid>` line names (vfork's
    child), else its own."""
    def preexec() -> None:
        if core_limit:
            import resource

            resource.setrlimit(resource.RLIMIT_CORE,
                               (resource.RLIM_INFINITY, resource.RLIM_INFINITY))

    argv = [str(program)] if isinstance(program, Path) else program
    proc = subprocess.Popen(argv, cwd=cwd, stdout=subprocess.PIPE, text=True,
                            preexec_fn=preexec)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith("ready"):
        proc.kill()
        raise SystemExit(f"{argv} did not become ready (printed {line!r})")
    time.sleep(0.2)  # let every thread settle into its blocking call
    words = line.split()
    return proc, int(words[1]) if len(words) > 1 and words[1].isdigit() else proc.pid


def kernel_core(proc: subprocess.Popen[str], cwd: str, also_kill: int | None = None) -> Path:
    """SIGILL and the core the kernel writes. `also_kill`: a vfork child, whose parent
    handles the signal only once the child is gone."""
    pattern = Path("/proc/sys/kernel/core_pattern").read_text().strip()
    if pattern.startswith("|"):
        raise SystemExit(f"core_pattern pipes cores to {pattern!r}; kernel cores need a file "
                         "pattern such as `core`")
    os.kill(proc.pid, signal.SIGILL)
    if also_kill is not None and also_kill != proc.pid:
        time.sleep(0.2)  # the signal is pending in the parent before its child goes
        os.kill(also_kill, signal.SIGKILL)
    proc.wait(timeout=30)
    cores = sorted(Path(cwd).glob("core*"), key=lambda p: p.stat().st_mtime)
    if not cores:
        raise SystemExit(f"no core file appeared in {cwd} (core_pattern {pattern!r})")
    return cores[-1]


def record_arm64(args: argparse.Namespace) -> None:
    env = dict(os.environ, CC="aarch64-linux-gnu-gcc", CXX="aarch64-linux-gnu-g++")
    subprocess.run([str(HERE / "build.sh"), str(BUILD_ARM64)], check=True, env=env)
    for name, program, site in ARM64_CASES:
        if args.only and name not in args.only:
            continue
        started = time.perf_counter()
        with go_environment(name):
            case = record_under_qemu(name, [str(BUILD_ARM64 / program)], site_spec=site,
                                     force=args.force,
                                     gdb_differences=GDB_DIFFERENCES.get(name))
        if name.startswith("go."):
            explain_go_waivers(case)
        frames = sum(len(t.frames) for t in case.threads)
        print(f"== arm64/{name}: {len(case.threads)} threads, {frames} frames, "
              f"{time.perf_counter() - started:.1f} s")
    # Debian's arm64 CPython under qemu: the root arm64_python_root.sh unpacks.
    root = Path("/tmp/coredump-arm64-python")
    for name, script_args in ARM64_PYTHON_CASES:
        if args.only and name not in args.only:
            continue
        if not (root / "usr/bin/python3.11").exists():
            subprocess.run([str(HERE / "arm64_python_root.sh"), str(root)], check=True)
        PYTHON_SCRIPT.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(HERE / "pystacks.py", PYTHON_SCRIPT)
        case = record_under_qemu(name, [str(root / "usr/bin/python3.11"), str(PYTHON_SCRIPT),
                                        *script_args], sysroot=str(root), force=args.force)
        print(f"== arm64/{name}: {len(case.threads)} threads")


def record_python(args: argparse.Namespace) -> None:
    """The Python cases: pystacks.py under each interpreter, checked by gdb and pystack."""
    PYTHON_SCRIPT.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(HERE / "pystacks.py", PYTHON_SCRIPT)
    for name, python, script_args, method in PYTHON_CASES:
        if args.only and name not in args.only:
            continue
        if not python.exists():
            print(f"== {name}: skipped, {python} is not installed")
            continue
        with tempfile.TemporaryDirectory(prefix="record-") as cwd:
            proc, _ = start([str(python), str(PYTHON_SCRIPT), *script_args], cwd,
                            core_limit=method == "kernel")
            try:
                if method == "gcore":
                    case = record_case(name, pid=proc.pid, force=args.force, progress=print,
                                       strip_debug=True)
                else:
                    case = record_case(name, core=kernel_core(proc, cwd), force=args.force,
                                       progress=print, strip_debug=True)
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
        frames = sum(len(t.frames) for t in case.threads)
        print(f"== {name}: {len(case.threads)} threads, {frames} frames")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", help="case names to record")
    parser.add_argument("--force", action="store_true", help="overwrite existing cases")
    parser.add_argument("--arch", choices=["amd64", "arm64", "all"], default="all")
    args = parser.parse_args()
    if args.arch in ("arm64", "all"):
        record_arm64(args)
    if args.arch == "arm64":
        return 0
    record_python(args)
    if args.only and all(name in {c[0] for c in PYTHON_CASES} for name in args.only):
        return 0
    subprocess.run([str(HERE / "build.sh"), str(BUILD)], check=True)
    for name, program, method in CASES:
        if args.only and name not in args.only:
            continue
        started = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="record-") as cwd, go_environment(name):
            proc, ready_pid = start(BUILD / program, cwd, core_limit=method == "kernel")
            try:
                if method.startswith("gcore"):
                    pid = ready_pid if method == "gcore-child" else proc.pid
                    twin = GDB_EXECUTABLES.get(name)
                    case = record_case(name, pid=pid, force=args.force, progress=print,
                                       bundle_modules=method != "gcore-nobundle",
                                       gdb_differences=GDB_DIFFERENCES.get(name),
                                       gdb_executable=str(BUILD / twin) if twin else None)
                else:
                    case = record_case(name, core=kernel_core(proc, cwd, ready_pid),
                                       force=args.force, progress=print)
            finally:
                if ready_pid != proc.pid:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(ready_pid, signal.SIGKILL)
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
        if name.startswith("go."):
            explain_go_waivers(case)
        frames = sum(len(t.frames) for t in case.threads)
        print(f"== {name}: {len(case.threads)} threads, {frames} frames, "
              f"{time.perf_counter() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
