"""Turn the unwinder's raw frames into the strings case files hold.

Native frames are `<module basename>+0x<ELF virtual address>`. The C code
already records return addresses minus one (so the address falls inside the
call instruction, as eu-stack -b and the reference tool print it); the top
frame and frames interrupted by a signal carry the exact PC. Python frames
(kind "python": code object address, instruction offset) are named by the
interpreter's CodeReader (interpreters/python/code.py).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from .bpf.bridge import RawFrame, TraceResult
from .interpreters.python import CodeReader


def format_frame(frame: RawFrame, names: dict[int, str],
                 python: Mapping[int, CodeReader] | None = None) -> str:
    """Kinds and error names come from the unwinder's own enums (bpf/abi.py); a kind
    this module does not know yet prints with its name and fields rather than
    disappearing."""
    if frame.kind_name == "native":
        name = names.get(frame.file_id, f"<unknown file {frame.file_id:#x}>")
        return f"{name}+{frame.addr:#x}"
    if frame.kind_name == "python" and python and frame.file_id in python:
        return python[frame.file_id].frame(frame.addr, frame.cfa)
    if frame.kind_name == "error":
        return f"<unwinding aborted due to error {frame.error_name or 'unknown'}>"
    if frame.record is not None and frame.kind_name.startswith("unknown_frame_kind"):
        return f"<error {frame.kind_name}>"
    fields = "" if frame.record is None else " " + " ".join(
        f"{k}={v:#x}" if isinstance(v, int) else f"{k}={v}"
        for k, v in frame.record._asdict().items() if k not in ("kind", "pad"))
    return f"<{frame.kind_name} frame{fields}>"


def format_trace(trace: TraceResult, names: dict[int, str],
                 python: Mapping[int, CodeReader] | None = None) -> list[str]:
    frames = [format_frame(f, names, python) for f in trace.frames]
    if trace.status_name == "aborted" and not any(f.kind_name == "error" for f in trace.frames):
        frames.append("<unwinding aborted due to error unknown>")
    return frames



_PYTHON_FRAME = re.compile(r"^(.+)\+(-?\d+) in (.*):(-?\d+)$")


def parse_python_frame(frame: str) -> tuple[str, str, int] | None:
    """(function, file, line) of an interpreter frame's spelling, None for others."""
    m = _PYTHON_FRAME.match(frame)
    return (m.group(1), m.group(3), int(m.group(4))) if m else None


def is_interpreter_frame(frame: str) -> bool:
    """`<function>+<line offset> in <file>:<line>`: not a native frame (gdb's)."""
    return _PYTHON_FRAME.match(frame) is not None
