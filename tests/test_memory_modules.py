"""Modules rebuilt from a core's memory (-no-module-bundling), on the bundled case
recorded with coredump_filter 0x3f, compared with the real files."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from harness.cases.case_file import NO_MODULE_BUNDLING, load_case
from harness.cases.store import store_for
from harness.core import memory_modules
from harness.core.elfcore import CoreFile
from harness.errors import CaseError
from harness.paths import REPO_ROOT, cache_root
from harness.replay import replay_case
from harness.unwind_data import load_unwind_data

CASES = REPO_ROOT / "testdata" / "amd64"
NOBUNDLE = CASES / "chain.O2.nofp.nobundle.json"
BUNDLED = CASES / "chain.O2.nofp.json"  # the same program, recorded with its modules
LIBC = "/usr/lib/x86_64-linux-gnu/libc.so.6"


def _rebuilt(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    case = load_case(NOBUNDLE)
    core_path = store_for(case).local_path(case.coredump_ref)
    with CoreFile(core_path) as core:
        files = memory_modules.module_files(core, tmp_path)
    return {k: (Path(v[0]), str(v[1])) for k, v in files.items()}


def test_case_records_no_modules() -> None:
    case = load_case(NOBUNDLE)
    assert case.modules == [] and case.no_module_bundling
    assert not load_case(BUNDLED).no_module_bundling


def test_replays_to_the_frames_of_the_bundled_recording() -> None:
    """Same executable and libc, one recorded with modules and one without: same frames."""
    nobundle, bundled = replay_case(NOBUNDLE), replay_case(BUNDLED)
    assert nobundle.ok and bundled.ok, nobundle.problems + bundled.problems
    assert [t.frames for t in nobundle.actual] == [t.frames for t in bundled.actual]
    assert nobundle.frame_count == 9


def test_rebuilt_images_match_the_files(tmp_path: Path) -> None:
    files = _rebuilt(tmp_path)
    names = {Path(p).name for p in files}
    assert names == {"chain.O2.nofp", "ld-linux-x86-64.so.2", "libc.so.6"}
    for image, content_id in files.values():
        assert hashlib.sha256(image.read_bytes()).hexdigest() == content_id
    # libc of the recording is the one bundled with chain.O2.nofp: every read-only
    # loaded byte and the decoded unwind data must be identical.
    libc_ref = next(m.ref for m in load_case(BUNDLED).modules if m.local_path == LIBC)
    original = store_for(load_case(BUNDLED)).local_path(libc_ref)
    image, image_id = files[LIBC]
    from elftools.elf.elffile import ELFFile

    with open(original, "rb") as f:
        segments = [(s["p_offset"], s["p_filesz"]) for s in ELFFile(f).iter_segments()
                    if s["p_type"] == "PT_LOAD" and not s["p_flags"] & 2]  # not PF_W
    data, rebuilt = bytearray(original.read_bytes()), bytearray(image.read_bytes())
    # The rebuilt header points at the new section header table (e_shoff, e_shentsize,
    # e_shnum, e_shstrndx); everything else is what the process had in memory.
    for field in (slice(0x28, 0x30), slice(0x3A, 0x40)):
        assert rebuilt[field] != data[field]
        rebuilt[field] = data[field]
    for offset, size in segments:
        assert rebuilt[offset:offset + size] == data[offset:offset + size]
    # Cached per content hash (replays of both cases have usually decoded them already).
    ours = load_unwind_data(image, image_id, cache_root())
    theirs = load_unwind_data(original, libc_ref, cache_root())
    assert ours.sources == [".eh_frame"]
    assert ours.deltas == theirs.deltas and ours.fde_count == theirs.fde_count > 3000


def test_section_headers_found_through_eh_frame_hdr(tmp_path: Path) -> None:
    from elftools.elf.elffile import ELFFile

    image, _ = _rebuilt(tmp_path)[LIBC]
    with open(image, "rb") as f:
        elf = ELFFile(f)
        names = [s.name for s in elf.iter_sections()]
        assert names == ["", ".shstrtab", ".text", ".eh_frame_hdr", ".eh_frame"]
        eh_frame = elf.get_section_by_name(".eh_frame")
        # The walk over length fields stops at the zero terminator, inside the segment.
        assert eh_frame.data()[-4:] == b"\0\0\0\0" and eh_frame["sh_size"] > 100_000


def test_core_without_file_pages_is_refused(tmp_path: Path) -> None:
    """A default gcore (coredump_filter 0x33) lacks code pages: no module can be rebuilt."""
    case = load_case(BUNDLED)
    core_path = store_for(case).local_path(case.coredump_ref)
    messages: list[str] = []
    with CoreFile(core_path) as core:
        files = memory_modules.module_files(core, tmp_path, messages.append)
    assert files == {}
    assert any("0x3f" in m and "libc.so.6" in m for m in messages)
    with pytest.raises(memory_modules.MemoryModuleError, match="coredump_filter"):
        memory_modules.require_modules(files, core_path)


def test_bad_field_value(tmp_path: Path) -> None:
    doc = json.loads(NOBUNDLE.read_text())
    doc[NO_MODULE_BUNDLING] = "yes"
    bad = tmp_path / "amd64" / "bad.json"
    bad.parent.mkdir()
    bad.write_text(json.dumps(doc))
    shutil.copytree(REPO_ROOT / "testdata" / "blobs", tmp_path / "blobs", dirs_exist_ok=True)
    with pytest.raises(CaseError, match="must be true or false"):
        replay_case(bad)
