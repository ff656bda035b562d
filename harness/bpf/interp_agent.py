"""The agent's part for interpreters: tell the unwinder where each interpreter loop is
and how the interpreter's frames are laid out.

For every CPython build the process maps (interpreters/python), the module's eval
loop ranges go into `interpreter_ranges` with the program that walks its frames
(PROG_UNWIND_PYTHON), and its layout into `python_layouts`, both keyed by the
module's file id. An unwinder that declares neither map gets neither.
"""

from __future__ import annotations

from ..core.process import Process
from ..errors import HarnessError
from ..interpreters.python import PythonLayout, python_layouts
from ..interpreters.python.facts import (
    ENTRY_IS_ENTRY,
    ENTRY_SHIM,
    FRAME_OBJECTS,
    INTERPRETER_FRAMES,
)
from .backend import MapBackend

RANGES_MAP = "interpreter_ranges"
PYTHON_MAP = "python_layouts"
_ENUM_FIELDS = {"frame_model": (FRAME_OBJECTS, INTERPRETER_FRAMES),
                "entry_marker": (ENTRY_IS_ENTRY, ENTRY_SHIM)}


def attach_interpreters(unwinder: MapBackend, process: Process) -> dict[int, PythonLayout]:
    """Fill the interpreter maps for `process`; the layouts by file id (the formatter
    names Python frames with them)."""
    ranges_map = unwinder.maps.get(RANGES_MAP)
    python_map = unwinder.maps.get(PYTHON_MAP)
    if ranges_map is None or python_map is None:
        return {}
    layout_info = unwinder.layout
    found: dict[int, PythonLayout] = {}
    for layout in python_layouts(process):
        file_id = layout.module.file_id
        fields = layout.bpf_fields()
        for name in _ENUM_FIELDS:
            fields[name] = layout_info.constant(str(fields[name]))
        limit = layout_info.constant("MAX_INTERPRETER_RANGES")
        spans = list(layout.eval_ranges)[:limit]
        value = {"start": [s for s, _ in spans], "end": [e for _, e in spans],
                 "count": len(spans), "prog": layout_info.constant("PROG_UNWIND_PYTHON")}
        if ranges_map.update_value(file_id, value) != 0 \
                or python_map.update_value(file_id, fields) != 0:
            raise HarnessError(f"{RANGES_MAP} / {PYTHON_MAP} are full "
                               f"({ranges_map.max_entries} interpreter modules)")
        found[file_id] = layout
    return found
