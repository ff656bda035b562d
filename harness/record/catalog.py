"""What the bundled cases are, for `coredump list`: per case its arch, threads,
frames, modules, stored size, skip reason and how its core was made.

How a core was made is read from the core itself, so it needs no field in the
case file: a qemu-user guest core has neither a file list nor siginfo; gcore
stops the process with SIGSTOP; a kernel core carries the fatal signal.
"""

from __future__ import annotations

import signal
from dataclasses import dataclass
from pathlib import Path

from ..cases.case_file import TestCase, load_case
from ..cases.selection import case_label
from ..cases.store import store_for
from ..core.elfcore import CoreFile

__all__ = ["CaseSummary", "summarize", "how_recorded"]


@dataclass(frozen=True)
class CaseSummary:
    label: str
    arch: str
    threads: int
    frames: int
    modules: int
    stored_bytes: int  # compressed core and modules, as committed
    skip: str | None
    recorded: str
    core_bytes: int = 0  # the compressed core alone
    skinny: bool = False


def how_recorded(core: CoreFile) -> str:
    """gcore, kernel (SIGNAL) or qemu-user, from the core's notes."""
    if core.siginfo is None:
        return "qemu-user" if not core.mappings else "unknown (no siginfo)"
    if core.siginfo.signo == signal.SIGSTOP:
        return "gcore"
    try:
        name = signal.Signals(core.siginfo.signo).name
    except ValueError:
        name = f"signal {core.siginfo.signo}"
    return f"kernel ({name})"


def _recorded(case: TestCase) -> tuple[str, bool]:
    """How the core was made, and whether it is skinny."""
    with CoreFile(store_for(case).local_path(case.coredump_ref)) as core:
        how = how_recorded(core)
        skinny = bool(core.dropped)
    return how + (", modules from memory" if case.no_module_bundling else ""), skinny


def summarize(path: Path) -> CaseSummary:
    case = load_case(path)
    store = store_for(case)
    sizes = []
    for ref in [case.coredump_ref, *(m.ref for m in case.modules)]:
        blob = store.blob_path(ref)
        sizes.append(blob.stat().st_size if blob.exists() else 0)
    recorded, skinny = _recorded(case)
    return CaseSummary(case_label(path), path.parent.name, len(case.threads),
                       sum(len(t.frames) for t in case.threads), len(case.modules), sum(sizes),
                       case.skip, recorded, sizes[0], skinny)
