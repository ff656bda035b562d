"""Go frames by name, file and line, from the bundled module's .gopclntab.

The reference tool prints a Go frame as `<package.function>+0 in <file>:<line>`:
the physical function's name and the source position of the frame's address
(the PC for the top frame, the return address minus one for callers, which the
unwinder already records). An inlined call is not expanded into frames of its
own: its position is printed under the physical function's name, as the Go
runtime's `FuncForPC(pc).FileLine(pc)` and the reference tool do (so
`runtime.main` may show a line of `internal/runtime/atomic/types.go`).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from functools import lru_cache

from ..core.module import Module
from ..errors import UnwindDataError
from .pclntab import Pclntab, read_pclntab

__all__ = ["go_frame", "go_tables"]


@lru_cache(maxsize=32)
def _table(path: str, content_id: str) -> Pclntab | None:
    """One parsed table per module content, shared by everything in the process."""
    del content_id  # part of the cache key only: a changed file is another entry
    try:
        return read_pclntab(path)
    except (OSError, UnwindDataError):
        return None  # symbolization is for people: the frame prints as module+address


def go_tables(modules: Iterable[Module]) -> dict[int, Pclntab]:
    """{file id: pclntab} of the modules that are Go binaries."""
    found = {}
    for module in modules:
        table = _table(os.fspath(module.local_path), module.content_id)
        if table is not None:
            found[module.file_id] = table
    return found


def go_frame(tables: Mapping[int, Pclntab], file_id: int, addr: int) -> str | None:
    """The reference spelling of a frame in Go code, or None if addr is not in a Go
    function of that module."""
    table = tables.get(file_id)
    if table is None:
        return None
    try:
        found = table.source_line(addr)
    except UnwindDataError:
        return None
    if found is not None and found[2] == "?" and table.function_at(addr + 1) is not None \
            and table.function_at(addr + 1).entry == addr + 1:  # type: ignore[union-attr]
        found = table.source_line(addr + 1)  # a saved PC at an entry (go_deltas._lead_into)
    if found is None:
        return None
    _, name, file, line = found
    return f"{name}+0 in {file}:{line}"
