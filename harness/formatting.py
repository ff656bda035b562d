"""Turn the unwinder's raw frames into the strings case files hold.

Native frames are `<module basename>+0x<ELF virtual address>`. The C code
already records return addresses minus one (so the address falls inside the
call instruction, as eu-stack -b and the reference tool print it); the top
frame and frames interrupted by a signal carry the exact PC.
"""

from __future__ import annotations

from .bpf.abi import ERROR_NAMES, FRAME_ERROR, FRAME_NATIVE, TRACE_STATUS_ABORTED
from .bpf.bridge import RawFrame, TraceResult


def error_name(code: int) -> str:
    return ERROR_NAMES.get(code, f"unknown_{code}")


def format_frame(frame: RawFrame, names: dict[int, str]) -> str:
    if frame.kind == FRAME_NATIVE:
        name = names.get(frame.file_id, f"<unknown file {frame.file_id:#x}>")
        return f"{name}+{frame.addr:#x}"
    if frame.kind == FRAME_ERROR:
        return f"<unwinding aborted due to error {error_name(frame.error)}>"
    return f"<error unknown_frame_kind_{frame.kind}>"


def format_trace(trace: TraceResult, names: dict[int, str]) -> list[str]:
    frames = [format_frame(f, names) for f in trace.frames]
    if trace.status == TRACE_STATUS_ABORTED and not any(
        f.kind == FRAME_ERROR for f in trace.frames
    ):
        frames.append("<unwinding aborted due to error unknown>")
    return frames

