"""Record arm64 cases on any host: run the program under qemu-user, freeze it
(at an exact instruction through qemu's gdb stub, or when it prints `ready`),
let qemu write the guest core, and hand that to `coredump new`.

qemu writes the guest core (`qemu_<prog>_<date>-<pid>.core`) when the guest
dies of a core-dumping signal; the kernel then also dumps qemu itself
(`core`), which we delete. The CPU is `max,sve=off`: gdb-multiarch 13 can
hang on qemu signal frames when the guest has SVE.

Where the modules come from mirrors what qemu did: it runs the executable from
the host path it was given, and looks up every other guest path under its `-L`
prefix first, then on the host. So the recording gets the executable explicitly
and searches the prefix, then `/`, for the rest (core/discovery.py refuses a
host file of the wrong architecture).
"""

from __future__ import annotations

import difflib
import os
import re
import resource
import select
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..arch import ARM64
from ..cases.case_file import TestCase
from ..check.sites import disassembler
from ..core.discovery import HOST_ROOT
from ..core.module import Module
from ..core.symbols import function_symbols
from ..errors import HarnessError
from ..paths import TESTDATA
from .new import Progress, record_case

DEFAULT_SYSROOT = "/usr/aarch64-linux-gnu"
QEMU = "qemu-aarch64"
GDB = "gdb-multiarch"
C_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# Bounds of every wait on qemu and gdb, in seconds.
GDB_STOP_TIMEOUT = 60.0
QEMU_EXIT_TIMEOUT = 60.0
SITES = ("entry", "after-stp", "body", "after-ldp", "ret", "after-sub", "loop")


def _quiet(_: str) -> None:
    pass


def _require(tool: str, package: str) -> str:
    path = shutil.which(tool)
    if path is None:
        raise HarnessError(f"{tool} not found: apt-get install {package}")
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class Site:
    function: str
    offset: int

    @property
    def gdb_location(self) -> str:
        # GCC's clones (`f.constprop.0`, `.isra.0`, `.part.0`) are not C identifiers:
        # unquoted, gdb reads the dots as member access. A C identifier stays bare,
        # since gdb reads a quoted short name ('f4') as a character constant.
        name = self.function if C_IDENTIFIER.fullmatch(self.function) else \
            f"'{self.function}'"
        return f"*({name}+{self.offset})"


def resolve_site(binary: str, spec: str) -> Site:
    """`FUNCTION:SITE` or `FUNCTION+OFFSET` -> a function-relative instruction.

    Named sites are found with capstone in the function's code, so a case name
    like `sites.f5.epi.ldp` keeps meaning "right after the ldp x29, x30" when
    the compiler moves instructions around.
    """
    if not Path(binary).is_file():
        raise HarnessError(f"program {binary} does not exist")
    if "+" in spec:
        function, offset = spec.rsplit("+", 1)
        try:
            number = int(offset, 0)
        except ValueError:
            raise HarnessError(f"bad offset {offset!r} in {spec!r} (FUNCTION+0x10)") from None
        _function_symbol(binary, function)  # an unknown name fails here, not in gdb
        return Site(function, number)
    function, _, site = spec.partition(":")
    if site not in SITES:
        raise HarnessError(f"unknown site {site!r} in {spec!r}; known: {', '.join(SITES)}")
    insns = _disassemble_function(binary, function)
    base = insns[0][0]

    def after(pred: Callable[[str, str], bool]) -> int:
        for i, (_, mnemonic, operands) in enumerate(insns[:-1]):
            if pred(mnemonic, operands):
                return insns[i + 1][0] - base
        raise HarnessError(f"{function} has no instruction for site {site!r}")

    def at(pred: Callable[[str, str], bool]) -> int:
        for addr, mnemonic, operands in insns:
            if pred(mnemonic, operands):
                return addr - base
        raise HarnessError(f"{function} has no instruction for site {site!r}")

    finders: dict[str, Callable[[], int]] = {
        "entry": lambda: 0,
        "after-stp": lambda: after(lambda m, o: m == "stp" and o.startswith("x29, x30")),
        "body": lambda: after(lambda m, o: m == "mov" and o == "x29, sp"),
        "after-ldp": lambda: after(lambda m, o: m == "ldp" and o.startswith("x29, x30")),
        "ret": lambda: at(lambda m, o: m == "ret"),
        "after-sub": lambda: after(lambda m, o: m == "sub" and o.startswith("sp, sp")),
        "loop": lambda: _loop_head(insns) - base,
    }
    return Site(function, finders[site]())


def _loop_head(insns: list[tuple[int, str, str]]) -> int:
    for addr, mnemonic, operands in insns:
        if mnemonic.startswith("b") and operands.startswith("#"):
            target = int(operands[1:], 0)
            if target < addr:
                return target
    raise HarnessError("no backward branch (loop) in the function")


def _function_symbol(binary: str, function: str) -> tuple[int, int]:
    """(address, size) of a function symbol; an unknown name lists near matches."""
    path = Path(binary)
    module = Module(str(path), path)
    try:
        symbols = {name: (addr, size) for addr, (name, size) in
                   function_symbols(module.read).items()}
    finally:
        module.close()
    if function in symbols:
        return symbols[function]
    if not symbols:
        raise HarnessError(f"{binary} has no function symbols (stripped? build with a symtab)")
    near = difflib.get_close_matches(function, list(symbols), n=5, cutoff=0.5)
    near += [n for n in symbols if n.startswith(function + ".") and n not in near]
    hint = f"; did you mean {', '.join(near)}?" if near else ""
    raise HarnessError(f"{binary} has no function {function!r}{hint}")


def _disassemble_function(binary: str, function: str) -> list[tuple[int, str, str]]:
    start, size = _function_symbol(binary, function)
    module = Module(binary, binary)
    try:
        code = module.read_vaddr(start, size)
    finally:
        module.close()
    if code is None:
        raise HarnessError(f"{function} is not in a loaded segment of {binary}")
    md = disassembler(ARM64)
    md.detail = False
    return [(i.address, i.mnemonic, i.op_str) for i in md.disasm(code, start)]


def _core_limit() -> None:
    resource.setrlimit(resource.RLIMIT_CORE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))


def freeze_under_qemu(program: list[str], workdir: str, *, sysroot: str = DEFAULT_SYSROOT,
                      site: Site | None = None, ready_timeout: float = 30.0,
                      progress: Progress = _quiet) -> Path:
    """Run `program` under qemu-user and return the guest core it leaves behind."""
    qemu = _require(QEMU, "qemu-user")
    args = [qemu, "-L", sysroot, "-cpu", "max,sve=off"]
    port = _free_port() if site else None
    if port:
        args += ["-g", str(port)]
    exe = os.path.abspath(program[0])  # AT_EXECFN must be absolute for replay
    proc = subprocess.Popen(args + [exe, *program[1:]], cwd=workdir, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, preexec_fn=_core_limit)
    try:
        if site is not None:
            _stop_at_site(exe, port or 0, site, progress)
        else:
            _wait_ready(proc, ready_timeout)
            progress(f"freezing {Path(exe).name} (pid {proc.pid}) with SIGABRT")
            os.kill(proc.pid, signal.SIGABRT)
        try:
            proc.wait(timeout=QEMU_EXIT_TIMEOUT)
        except subprocess.TimeoutExpired:
            raise HarnessError(f"qemu did not exit within {QEMU_EXIT_TIMEOUT:g} s of SIGABRT "
                               "(writing the guest core?); nothing was recorded") from None
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    host_core = Path(workdir) / "core"
    host_core.unlink(missing_ok=True)  # qemu's own core: not what we want
    cores = sorted(Path(workdir).glob("qemu_*.core"))
    if not cores:
        err = proc.stderr.read() if proc.stderr else ""
        raise HarnessError(f"qemu wrote no guest core (exit {proc.returncode}): {err.strip()}")
    return cores[-1]


def _wait_ready(proc: subprocess.Popen[str], timeout: float) -> None:
    """Wait for the `ready` line, at most `timeout` seconds (readline alone could
    block forever on a program that never prints it)."""
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    line = proc.stdout.readline() if ready else ""
    if not ready:
        raise HarnessError(f"the program did not print `ready` within {timeout:g} s; "
                           "programs for record-qemu print it once they reach their state "
                           "(or use -site FUNCTION:SITE)")
    if not line.startswith("ready"):
        raise HarnessError(f"the program did not print `ready` (got {line!r}; exit status "
                           f"{proc.poll()})")
    time.sleep(0.3)  # let every thread reach its blocking call


def _stop_at_site(exe: str, port: int, site: Site, progress: Progress) -> None:
    gdb = _require(GDB, "gdb-multiarch")
    progress(f"stopping {Path(exe).name} at {site.gdb_location} with {GDB}")
    script = [
        "set pagination off", "set confirm off",
        f"target remote 127.0.0.1:{port}",
        f"break {site.gdb_location}", "continue", "delete",
        "printf \"stopped at pc=%#lx\\n\", $pc",
        "signal SIGABRT",
    ]
    cmd = [gdb, "-nx", "-batch", "-q"] + [a for line in script for a in ("-ex", line)] + [exe]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=GDB_STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        raise HarnessError(f"{GDB} did not stop at {site.gdb_location} within "
                           f"{GDB_STOP_TIMEOUT:g} s: the program does not reach it (or waits "
                           "for input); pick a site on its path") from None
    if "stopped at pc=" not in out.stdout:
        raise HarnessError(f"{GDB} did not stop at {site.gdb_location}:\n"
                           f"{(out.stdout + out.stderr)[-2000:]}")


def record_under_qemu(name: str, program: list[str], *, sysroot: str = DEFAULT_SYSROOT,
                      site_spec: str | None = None, testdata: Path = TESTDATA,
                      force: bool = False, gdb_differences: str | None = None,
                      progress: Progress = _quiet, full_core: bool = False) -> TestCase:
    if not Path(program[0]).is_file():
        raise HarnessError(f"program {program[0]} does not exist (build it first, e.g. "
                           "CC=aarch64-linux-gnu-gcc testsources/build.sh "
                           "testsources/build/arm64)")
    site = resolve_site(program[0], site_spec) if site_spec else None
    with tempfile.TemporaryDirectory(prefix="coredump-qemu-") as workdir:
        core = freeze_under_qemu(program, workdir, sysroot=sysroot, site=site,
                                 progress=progress)
        return record_case(name, core=core, sysroot=[sysroot, HOST_ROOT],
                           executable=os.path.abspath(program[0]), testdata=testdata,
                           force=force, gdb_differences=gdb_differences, progress=progress,
                           temporary_core=True, full_core=full_core)
