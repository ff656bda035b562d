"""The Python oracle: pystack reads the same core and modules, and each thread's Python
frames (function, file, line) must equal ours, innermost first.

pystack (PyPI, a dev dependency) finds the interpreter state in the core on its own,
so its frames are an independent reading of the same memory. It prints co_name
where we print co_qualname (3.11+): a frame matches when our name is pystack's or
ends with "." + pystack's. Native frames stay gdb's business (verify.py).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from ..cases.case_file import ThreadFrames
from ..confine import place_under
from ..core.process import Process
from ..errors import HarnessError
from ..formatting import parse_python_frame
from .gdb_oracle import make_sysroot

__all__ = ["pystack_command", "pystack_frames", "compare_with_pystack", "PystackComparison"]

PythonFrame = tuple[str, str, int]  # function, file, line
_THREAD = re.compile(r"^Traceback for thread (\d+)")
_FRAME = re.compile(r'^\s*\(Python\) File "(.*)", line (\d+), in (.*)$')
PYSTACK_TIMEOUT = 300


def pystack_command() -> str | None:
    """pystack beside this Python (the venv's), else on PATH."""
    beside = Path(sys.executable).with_name("pystack")
    return str(beside) if beside.exists() else shutil.which("pystack")


def parse_pystack(text: str) -> dict[int, list[PythonFrame]]:
    """`pystack core` output -> {thread id: Python frames, innermost first}."""
    threads: dict[int, list[PythonFrame]] = {}
    current: list[PythonFrame] | None = None
    for line in text.splitlines():
        if (m := _THREAD.match(line)) is not None:
            current = threads.setdefault(int(m.group(1)), [])
        elif current is not None and (m := _FRAME.match(line)) is not None:
            current.append((m.group(3), m.group(1), int(m.group(2))))
    return {lwp: frames[::-1] for lwp, frames in threads.items()}


def pystack_frames(process: Process, core_path: str | Path) -> dict[int, list[PythonFrame]]:
    """pystack's Python frames of every thread, from the core and the process's modules
    (laid out as a sysroot, as for gdb)."""
    command = pystack_command()
    if command is None:
        raise HarnessError("pystack is needed to check Python frames: "
                           ".venv/bin/pip install pystack")
    exe = process.executable_path()
    with tempfile.TemporaryDirectory(prefix="coredump-pystack-") as tmp:
        files = {path: str(m.local_path) for path, m in process.modules.items()}
        sysroot = make_sysroot(tmp, files)
        argv = [command, "core", "--no-color", str(core_path)]
        if exe is not None and exe in process.modules:
            argv.append(str(place_under(sysroot, exe)))
        argv += ["--lib-search-root", sysroot]
        try:
            proc = subprocess.run(argv, capture_output=True, text=True,
                                  timeout=PYSTACK_TIMEOUT)
        except subprocess.TimeoutExpired:
            raise HarnessError(f"pystack took more than {PYSTACK_TIMEOUT} s on "
                               f"{core_path}") from None
    if proc.returncode != 0:
        raise HarnessError(f"pystack failed on {core_path} (exit {proc.returncode}): "
                           + (proc.stderr.strip().splitlines() or ["no message"])[-1])
    return parse_pystack(proc.stdout)


# Our spelling of a Python frame whose code object could not be read.
UNREADABLE = "<error python_code_unreadable>"
_UNREADABLE_FRAME: PythonFrame = (UNREADABLE, "", 0)


def python_frames(frames: list[str]) -> list[PythonFrame]:
    """Our Python frames of one thread, in order (unreadable ones included)."""
    found = []
    for frame in frames:
        parsed = _UNREADABLE_FRAME if frame == UNREADABLE else parse_python_frame(frame)
        if parsed is not None:
            found.append(parsed)
    return found


def same_frame(ours: PythonFrame, theirs: PythonFrame, faults: bool = False) -> bool:
    """`faults`: the case injects read faults, so a frame we could not name stands
    for whichever frame pystack names there (it reads without the faults)."""
    if ours == _UNREADABLE_FRAME:
        return faults
    name, file, line = ours
    their_name, their_file, their_line = theirs
    return (file, line) == (their_file, their_line) and \
        (name == their_name or name.endswith("." + their_name))


@dataclass
class PystackComparison:
    problems: list[str] = field(default_factory=list)
    threads: int = 0        # threads with Python frames compared
    frames: int = 0         # Python frames that matched


def compare_with_pystack(threads: list[ThreadFrames], theirs: dict[int, list[PythonFrame]],
                         faults: bool = False) -> PystackComparison:
    """Thread by thread: our Python frames against pystack's (`faults`: the case has
    fault-addresses, see same_frame)."""
    result = PystackComparison()
    for t in threads:
        ours = python_frames(t.frames)
        other = theirs.get(t.lwp, [])
        if not ours and not other:
            continue
        result.threads += 1
        if len(ours) == len(other) and all(same_frame(a, b, faults)
                                           for a, b in zip(ours, other, strict=True)):
            result.frames += len(ours)
            continue
        lines = [f"thread {t.lwp}: our Python frames differ from pystack's "
                 f"({len(ours)} ours, {len(other)} pystack's):"]
        for i in range(max(len(ours), len(other))):
            a = ours[i] if i < len(ours) else None
            b = other[i] if i < len(other) else None
            mark = " " if a is not None and b is not None and same_frame(a, b, faults) \
                else "!"
            lines.append(f"  {mark} #{i:<3} ours {_show(a):<60} pystack {_show(b)}")
        result.problems.append("\n".join(lines))
    return result


def _show(frame: PythonFrame | None) -> str:
    return "-" if frame is None else f"{frame[0]} {frame[1]}:{frame[2]}"
