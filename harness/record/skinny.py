"""Making a case's core skinny, with proof (`new`, `coredump reskinny`).

What a skinny core keeps (page granularity, core/skinny.py writes it):
- every byte of the core that was read while the case was recorded: the
  unwinder's bpf_probe_read_user, host-side reads (vDSO, trampolines, link map,
  modules rebuilt from memory, interpreter symbolization), and the `validate`
  emulation (CoreFile.read_log);
- each thread's stack from its SP (less a red zone) to the end of the mapping
  that holds it, and the page at its thread pointer (TLS, the thread
  descriptor): what gdb reads to walk and list threads;
- what gdb reads to find the shared objects: the dynamic linker's link map.

Then the proof: the skinny core is replayed, gdb is run on it, and both must
give exactly the frames they gave on the full core; otherwise the full core is
kept and the reason said. The full core goes to the local full-core store
(`.cache/full-blobs`, `full-ref` in the case) so `reskinny` can rebuild the
skinny core when the unwinder starts reading more; `upload -full` pushes it to
a remote store.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..arch import get_arch
from ..cases.case_file import TestCase, ThreadFrames
from ..cases.selection import case_label
from ..cases.store import BlobStore, full_store, store_for
from ..core import linkmap
from ..core.elf import PHDR_SIZE
from ..core.elfcore import AT_ENTRY, AT_PHDR, AT_PHNUM, CoreFile
from ..core.process import Process
from ..core.skinny import page_ranges, write_skinny_core
from ..diffing import NATIVE_FRAME
from ..errors import HarnessError
from ..replay import process_with_modules, thread_frames, unwind_process
from .oracle_reads import read_by
from .pystack_oracle import PythonFrame, pystack_frames
from .verify import gdb_frames_of, has_python_frames

RED_ZONE = 256  # below SP: amd64's red zone is 128 bytes; gdb may look a little lower
CODE_AROUND_PC = 64  # gdb's frame sniffers read the instructions around a frame's pc


def start_logging(core: CoreFile) -> None:
    """From now on, note every read the core serves."""
    if core.read_log is None:
        core.read_log = []


def _frame_pcs(process: Process, frames: Sequence[str]) -> list[int]:
    """Runtime addresses of `module+0xvaddr` frames."""
    bias = {m.module.name: m.bias for m in process.mappings if m.module is not None}
    pcs = []
    for frame in frames:
        found = NATIVE_FRAME.fullmatch(frame)
        if found is not None and found["module"] in bias:
            pcs.append(int(found["addr"], 16) + bias[found["module"]])
    return pcs


def kept_ranges(process: Process, frames: Sequence[str] = ()) -> list[tuple[int, int]]:
    """The page ranges a skinny core of this process keeps (see the module docstring).
    The core must have been logging since it was opened. `frames`: the frames found
    (ours and gdb's), whose code gdb reads from the core where no file list tells it
    which file maps there (qemu-user cores)."""
    core = process.core
    if core.read_log is None:
        raise HarnessError("internal: the core's reads were not logged")
    _walk_link_map(process)  # what gdb reads to list the shared objects: now logged
    ranges = [(addr, addr + size) for addr, size in core.read_log]
    phdr = core.auxv.get(AT_PHDR)
    if phdr:  # gdb finds the executable's dynamic section through its program headers
        ranges.append((phdr, phdr + core.auxv.get(AT_PHNUM, 1) * PHDR_SIZE))
    sp_name = get_arch(process.arch).sp
    for thread in process.threads:
        sp = thread.regs.get(sp_name, 0)
        seg = core.segment_at(sp)
        if seg is not None:
            ranges.append((max(seg.vaddr, sp - RED_ZONE), seg.vaddr + seg.filesz))
        tp = thread.regs.get("fs_base") if process.arch == "amd64" else thread.tls
        if tp:
            ranges.append((tp - core.page_size, tp + core.page_size))
    if not core.mappings:
        ranges += [(pc - CODE_AROUND_PC, pc + CODE_AROUND_PC)
                   for pc in _frame_pcs(process, frames)]
    return page_ranges(ranges, core.page_size)


def _walk_link_map(process: Process) -> None:
    """Read r_debug and the link map as gdb does, from the executable's dynamic
    section (found through the module at AT_ENTRY, whatever path the core names)."""
    exe = process.modules.get(process.executable_path() or "")
    entry = process.core.auxv.get(AT_ENTRY)
    if exe is None or exe.dynamic_vaddr is None or entry is None:
        return
    bias = entry - exe.entry
    r_debug = linkmap.r_debug_address(process.read, bias + exe.dynamic_vaddr)
    if r_debug:
        for _ in linkmap.link_map_objects(process.read, r_debug):
            pass


@dataclass
class SkinnyOutcome:
    """The core to store: the skinny one if the proof held, else the full one."""

    core: Path
    skinny: bool
    why_full: str | None
    full_size: int
    size: int
    seconds: float


def make_skinny(process: Process, files: dict[str, tuple[str | Path, str | None]],
                threads: list[ThreadFrames], gdb_threads: dict[int, list[str]] | None,
                out_dir: Path, rebuild_modules: bool = False,
                gdb_executable: str | Path | None = None,
                fault_addresses: frozenset[int] = frozenset()) -> SkinnyOutcome:
    """Write the skinny core of an open, logged process into out_dir and prove it:
    replay (and gdb, when gdb_threads gives its frames on the full core) must agree."""
    start = time.perf_counter()
    full = Path(process.core.path)
    seen = [f for t in threads for f in t.frames]
    seen += [f for frames in (gdb_threads or {}).values() for f in frames]
    # pystack reads interpreter state beyond what the unwinder and its symbolizer
    # read (it validates the interpreter's dicts, for one): what it reads is
    # measured (oracle_reads.py). gdb's needs are the link map, stacks and code
    # around frames (kept_ranges); measured, it would read whole qemu stacks.
    python = None
    oracle_pages: list[tuple[int, int]] = []
    if gdb_threads is not None and has_python_frames(threads):
        python, oracle_pages = read_by(process.core, lambda: pystack_frames(process, full))
    keep = page_ranges([*kept_ranges(process, seen), *oracle_pages], process.core.page_size)
    skinny = out_dir / (full.name + ".skinny")
    write_skinny_core(process.core, keep, skinny)

    def outcome(ok: bool, why: str | None) -> SkinnyOutcome:
        return SkinnyOutcome(skinny if ok else full, ok, why, full.stat().st_size,
                             skinny.stat().st_size if ok else full.stat().st_size,
                             time.perf_counter() - start)

    why = prove(skinny, files, threads, gdb_threads, rebuild_modules, python, gdb_executable,
                fault_addresses)
    return outcome(why is None, why)


def prove(skinny: Path, files: dict[str, tuple[str | Path, str | None]],
          threads: list[ThreadFrames], gdb_threads: dict[int, list[str]] | None,
          rebuild_modules: bool = False,
          python: dict[int, list[PythonFrame]] | None = None,
          gdb_executable: str | Path | None = None,
          fault_addresses: frozenset[int] = frozenset()) -> str | None:
    """None if the skinny core replays (and, with gdb_threads, gdb-backtraces; with
    python, pystack-reads) to the same frames as the full core; else why not.
    rebuild_modules: the modules come from the core's memory (a case without bundled
    modules), as replay will get them."""
    process = process_with_modules(CoreFile(skinny), files, rebuild_modules)
    try:
        again = thread_frames(unwind_process(process, fault_addresses))
        if process.core.dropped_reads:
            addr, size = process.core.dropped_reads[0]
            return (f"replaying it reads {size} bytes at {addr:#x}, which it left out "
                    "(please report: the recording's read log missed them)")
        if again != threads:
            changed = [t.lwp for t, u in zip(threads, again, strict=False) if t != u]
            return f"replaying it gives other frames (threads {changed})"
        if gdb_threads is not None:
            theirs = gdb_frames_of(process, skinny, gdb_executable)
            if theirs != gdb_threads:
                changed = sorted(lwp for lwp in gdb_threads
                                 if theirs.get(lwp) != gdb_threads[lwp])
                return f"gdb's backtraces on it differ (threads {changed})"
        if python is not None:
            try:
                again_python = pystack_frames(process, skinny)
            except HarnessError as e:
                return f"pystack fails on it: {e}"
            if again_python != python:
                changed = sorted(lwp for lwp in python if again_python.get(lwp) != python[lwp])
                return f"pystack's Python frames on it differ (threads {changed})"
    finally:
        process.close()
    return None


@dataclass
class Reskinned:
    """What `reskinny` did to one case."""

    label: str
    changed: bool
    message: str
    full_size: int = 0
    size: int = 0


def _full_core(case: TestCase, store: BlobStore) -> tuple[str, Path]:
    """(id, local path) of a case's full core: its full-ref (local full-core store, then
    the remote), or its own core if that one is not skinny."""
    if case.full_ref:
        return case.full_ref, full_store().local_path(case.full_ref)
    path = store.local_path(case.coredump_ref)
    with CoreFile(path) as core:
        if core.dropped:
            raise HarnessError(f"{case.name}: its core is skinny and the case names no "
                               "full-ref: record it again to make a new skinny core")
    return case.coredump_ref, path


def reskinny_case(case: TestCase, check_gdb: bool = True) -> Reskinned:
    """Rebuild a case's skinny core from its full core, with the proof of `new`; the
    case file then names the new skinny core and its full-ref. Frames must replay
    from the full core as the case has them (else rebase first)."""
    from ..check.case_check import validate_process

    label = case_label(case.path) if case.path else case.name
    store = store_for(case)
    full_ref, full_path = _full_core(case, store)
    files: dict[str, tuple[str | Path, str | None]] = {
        m.local_path: (store.local_path(m.ref), m.ref) for m in case.modules}
    core = CoreFile(full_path)
    start_logging(core)
    process = process_with_modules(core, files, case.no_module_bundling)
    with tempfile.TemporaryDirectory(prefix="coredump-skinny-") as tmp:
        try:
            threads = thread_frames(unwind_process(process, frozenset(case.fault_addresses)))
            if threads != case.threads:
                raise HarnessError(f"{label}: its full core does not replay to the case's "
                                   "frames; rebase the case first (`coredump rebase`)")
            twin = store.local_path(case.gdb_executable) if case.gdb_executable else None
            gdb_threads = gdb_frames_of(process, full_path, twin) if check_gdb else None
            validate_process(process)
            outcome = make_skinny(process, files, threads, gdb_threads, Path(tmp),
                                  case.no_module_bundling, twin,
                                  frozenset(case.fault_addresses))
        finally:
            process.close()
        if not outcome.skinny:
            return Reskinned(label, False, f"kept the full core: {outcome.why_full}",
                             outcome.full_size, outcome.full_size)
        new_ref = store.put_file(outcome.core)
        if full_path != full_store().blob_path(full_ref):
            full_store().put_file(full_path)
    changed = new_ref != case.coredump_ref or case.full_ref != full_ref
    case.coredump_ref, case.full_ref = new_ref, full_ref
    if changed:
        case.save()
    return Reskinned(label, changed, f"skinny core {outcome.size} of {outcome.full_size} bytes",
                     outcome.full_size, outcome.size)
