"""Turn the unwinder's raw frames into the strings case files hold.

Native frames are `<module basename>+0x<ELF virtual address>`. The C code
already records return addresses minus one (so the address falls inside the
call instruction, as eu-stack -b and the reference tool print it); the top
frame and frames interrupted by a signal carry the exact PC. Native frames in
Go code print as the reference tool prints them, by function, file and line
(unwind_data/gosym.py), when the module's .gopclntab is given.
"""

from __future__ import annotations

from collections.abc import Mapping

from .bpf.bridge import RawFrame, TraceResult
from .unwind_data.gosym import go_frame
from .unwind_data.pclntab import Pclntab


def format_frame(frame: RawFrame, names: dict[int, str],
                 go: Mapping[int, Pclntab] | None = None) -> str:
    """Kinds and error names come from the unwinder's own enums (bpf/abi.py); a kind
    this module does not know yet prints with its name and fields rather than
    disappearing."""
    if frame.kind_name == "native":
        in_go = go_frame(go, frame.file_id, frame.addr) if go else None
        if in_go is not None:
            return in_go
        name = names.get(frame.file_id, f"<unknown file {frame.file_id:#x}>")
        return f"{name}+{frame.addr:#x}"
    if frame.kind_name == "error":
        return f"<unwinding aborted due to error {frame.error_name or 'unknown'}>"
    if frame.record is not None and frame.kind_name.startswith("unknown_frame_kind"):
        return f"<error {frame.kind_name}>"
    fields = "" if frame.record is None else " " + " ".join(
        f"{k}={v:#x}" if isinstance(v, int) else f"{k}={v}"
        for k, v in frame.record._asdict().items() if k not in ("kind", "pad"))
    return f"<{frame.kind_name} frame{fields}>"


def format_trace(trace: TraceResult, names: dict[int, str],
                 go: Mapping[int, Pclntab] | None = None) -> list[str]:
    frames = [format_frame(f, names, go) for f in trace.frames]
    if trace.status_name == "aborted" and not any(f.kind_name == "error" for f in trace.frames):
        frames.append("<unwinding aborted due to error unknown>")
    return frames

