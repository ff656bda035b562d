"""What the fuzz suite feeds and how it judges the outcome (tests/test_fuzz.py, scripts/fuzz).

Each target takes the bytes of one input, runs the harness on it as a user would,
and returns "ok" or "error": a HarnessError, the one-line error the CLI prints.
Anything else (a traceback) propagates, and hypothesis shrinks the input that
raised it. The seeds are bundled cases, so the mutations start from real cores,
real modules, real case files and real blobs.
"""

from __future__ import annotations

import io
import json
import mmap
import struct
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from harness.cases.blobs import verify_blob
from harness.cases.case_file import decode_case, load_case, parse_case
from harness.cases.store import store_for
from harness.core.discovery import discover_modules
from harness.core.elfcore import CoreFile
from harness.core.memory_modules import module_files
from harness.core.process import Process
from harness.errors import HarnessError
from harness.paths import REPO_ROOT
from harness.replay import process_from, thread_frames, unwind_process

SEED_CASE = REPO_ROOT / "testdata" / "amd64" / "chain.O2.nofp.json"
_PHDR = struct.Struct("<IIQQQQQQ")
_SHDR = struct.Struct("<IIQQQQIIQQ")
_PT_NOTE = 4
NOBUNDLE_CASE = REPO_ROOT / "testdata" / "amd64" / "chain.O2.nofp.nobundle.json"


@dataclass(frozen=True)
class Seed:
    """The bundled case's inputs, as bytes."""

    core: bytes
    modules: dict[str, bytes]  # original path -> module file
    blob: bytes  # the compressed executable, as stored
    blob_id: str


@cache
def seed() -> Seed:
    case = load_case(SEED_CASE)
    store = store_for(case)
    exe = case.modules[-1]
    return Seed(store.local_path(case.coredump_ref).read_bytes(),
                {m.local_path: store.local_path(m.ref).read_bytes() for m in case.modules},
                store.blob_path(exe.ref).read_bytes(), exe.ref)


def header_regions(data: bytes) -> list[tuple[int, int]]:
    """(offset, size) of the parts of an ELF file where corruption is interesting: the
    ELF header, the program headers and every PT_NOTE (the memory is just bytes)."""
    regions = [(0, min(64, len(data)))]
    try:
        phoff, phnum = struct.unpack_from("<Q", data, 32)[0], struct.unpack_from("<H", data, 56)[0]
        regions.append((phoff, phnum * _PHDR.size))
        for i in range(phnum):
            fields = _PHDR.unpack_from(data, phoff + i * _PHDR.size)
            if fields[0] == _PT_NOTE:
                regions.append((fields[2], fields[5]))
    except struct.error:
        pass
    return [(o, s) for o, s in regions if 0 <= o < len(data) and s > 0]


def section_regions(data: bytes) -> list[tuple[int, int]]:
    """(offset, size) of a module's section headers and of the sections the unwinder
    and the agent read (.eh_frame, .eh_frame_hdr, .debug_frame, .dynamic, symbols)."""
    wanted = {b".eh_frame", b".eh_frame_hdr", b".debug_frame", b".dynamic", b".dynsym",
              b".symtab", b".dynstr", b".strtab", b".interp", b".gnu_debuglink"}
    try:
        shoff = struct.unpack_from("<Q", data, 40)[0]
        shnum, shstrndx = struct.unpack_from("<HH", data, 60)
        shdrs = [_SHDR.unpack_from(data, shoff + i * _SHDR.size) for i in range(shnum)]
        names_at = shdrs[shstrndx][4]
    except (struct.error, IndexError):
        return []
    regions = [(shoff, shnum * _SHDR.size)]
    for name, _type, _flags, _addr, offset, size, *_ in shdrs:
        label = data[names_at + name:].split(b"\0", 1)[0]
        if label in wanted and size:
            regions.append((offset, min(size, 1 << 16)))
    return [(o, n) for o, n in regions if 0 <= o < len(data)]


def stack_regions(data: bytes) -> list[tuple[int, int]]:
    """(offset, size) in a core of the memory around each thread's stack pointer: a
    garbage stack must end a walk, not loop it."""
    with _scratch() as tmp:
        path = tmp / "core"
        path.write_bytes(data)
        with CoreFile(path) as core:
            regions = []
            for thread in core.threads:
                sp = thread.regs.get("rsp", thread.regs.get("sp", 0))
                for seg in core.segments:
                    if seg.vaddr <= sp < seg.vaddr + seg.filesz:
                        at = seg.offset + sp - seg.vaddr
                        regions.append((at, min(4096, seg.offset + seg.filesz - at)))
            return regions


@contextmanager
def _scratch() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="coredump-fuzz-") as tmp:
        yield Path(tmp)


def _judge(run: object) -> str:
    """'ok', or 'error' for a HarnessError; anything else propagates (a bug)."""
    try:
        run()  # type: ignore[operator]
    except HarnessError:
        return "error"
    return "ok"


def run_core(data: bytes) -> str:
    """The core loader: parse, then touch what the process model reads."""
    def go() -> None:
        with _scratch() as tmp:
            path = tmp / "core"
            path.write_bytes(data)
            core = CoreFile(path)
            process = Process(core)
            try:
                for seg in core.segments[:64]:
                    core.read(seg.vaddr, 16)
                    process.read(seg.vaddr + seg.filesz - 4, 8)
                _ = (process.pid, process.executable_path(), process.interpreter_path(),
                     [len(t.regs) for t in core.threads])
            finally:
                process.close()
    return _judge(go)


@cache
def nobundle_core() -> bytes:
    """The core of the case recorded with -no-module-bundling (it holds file pages)."""
    case = load_case(NOBUNDLE_CASE)
    return store_for(case).local_path(case.coredump_ref).read_bytes()


def run_rebuild(data: bytes) -> str:
    """Modules rebuilt from a core's memory (-no-module-bundling), then unwound."""
    def go() -> None:
        with _scratch() as tmp:
            path = tmp / "core"
            path.write_bytes(data)
            parsed = CoreFile(path)
            try:
                files = module_files(parsed, cache_dir=tmp / "modules")
            except BaseException:
                parsed.close()
                raise
            process = process_from(parsed, files)
            try:
                unwind_process(process)
            finally:
                process.close()
    return _judge(go)


def run_case(data: bytes) -> str:
    """The case loader on a case file's bytes, then a save and reload of what loaded."""
    def go() -> None:
        with _scratch() as tmp:
            path = tmp / "case.json"
            path.write_bytes(data)
            case = load_case(path)
            again = case.save(tmp / "again.json")
            parse_case(decode_case(again.read_bytes(), again), again)
    return _judge(go)


def run_blob(data: bytes, blob_id: str) -> str:
    """The store's check of compressed bytes that claim to be blob_id."""
    def go() -> None:
        with _scratch() as tmp:
            path = tmp / f"{blob_id}.zst"
            path.write_bytes(data)
            verify_blob(path, blob_id, io.BytesIO())
    return _judge(go)


def run_analyze(core: bytes, modules: dict[str, bytes]) -> str:
    """`coredump analyze -core CORE -sysroot S`: discovery, unwinding, formatting, and the
    JSON the -json flag prints."""
    def go() -> None:
        with _scratch() as tmp:
            root = tmp / "sysroot"
            for original, content in modules.items():
                dest = root / original.lstrip("/")
                dest.parent.mkdir(parents=True, exist_ok=True)
                dest.write_bytes(content)
            path = tmp / "core"
            path.write_bytes(core)
            parsed = CoreFile(path)
            try:
                files = discover_modules(parsed, [str(root)])
            except BaseException:
                parsed.close()
                raise
            process = process_from(parsed, files)
            try:
                threads = thread_frames(unwind_process(process))
            finally:
                process.close()
            json.dumps([{"lwp": t.lwp, "frames": t.frames} for t in threads])
            for t in threads:
                "\n".join(t.frames).encode("utf-8", "backslashreplace")
    return _judge(go)


GO_CASE = REPO_ROOT / "testdata" / "amd64" / "go.goroutines.json"


@cache
def go_table() -> bytes:
    """The .gopclntab of the bundled Go executable: the table the Go support parses."""
    from harness.unwind_data.pclntab import _section

    case = load_case(GO_CASE)
    exe = store_for(case).local_path(case.modules[-1].ref)
    with open(exe, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        found = _section(mm)
    assert found is not None, f"{exe} has no .gopclntab"
    return found[0]


def run_pclntab(data: bytes) -> str:
    """A .gopclntab parsed, every function's pcsp table walked, PCs named."""
    from harness.unwind_data.pclntab import Pclntab

    def go() -> None:
        table = Pclntab(data)
        functions = table.functions
        for func in functions[:64]:
            table.name(func)
            for run, _ in zip(table.pcvalues(func, func.pcsp), range(64), strict=False):
                assert run[0] <= run[1], run  # runs go forward
            table.source_line(func.entry)
    return _judge(go)
