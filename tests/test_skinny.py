"""Skinny cores (harness/core/skinny.py, harness/record/skinny.py): what they keep,
that they replay and gdb-backtrace like the full core, and that a read of memory
they left out is loud."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from harness.bpf.bridge import get_unwinder
from harness.bpf.build import UnwinderSource
from harness.cases.case_file import load_case
from harness.cases.store import BlobStore, full_store, store_for
from harness.core.elfcore import CoreFile
from harness.core.skinny import page_ranges, write_skinny_core
from harness.paths import TESTDATA
from harness.record.skinny import kept_ranges, make_skinny, reskinny_case, start_logging
from harness.replay import dropped_reads_problem, process_from, thread_frames, unwind_process
from tests.casefiles import copy_case

BPF_SRC = Path(__file__).resolve().parent.parent / "bpf_src"
THREADS = TESTDATA / "amd64" / "threads.json"


def _core(case_path: Path) -> Path:
    """The case's full core where this machine has it, else its (skinny) core: either
    is a core to make a skinny one from."""
    case = load_case(case_path)
    if case.full_ref and full_store().has(case.full_ref):
        return full_store().local_path(case.full_ref)
    return store_for(case).local_path(case.coredump_ref)


def _files(case_path: Path) -> dict[str, tuple[str | Path, str | None]]:
    case = load_case(case_path)
    store = store_for(case)
    return {m.local_path: (store.local_path(m.ref), m.ref) for m in case.modules}


def test_page_ranges_merge_and_widen() -> None:
    assert page_ranges([(0x1010, 0x1020), (0x1ff0, 0x2010), (0x5000, 0x5001), (7, 7)],
                       0x1000) == [(0x1000, 0x3000), (0x5000, 0x6000)]
    assert page_ranges([], 0x1000) == []


def test_skinny_core_keeps_exactly_the_kept_pages(tmp_path: Path) -> None:
    full = CoreFile(_core(THREADS))
    try:
        stored = [s for s in full.segments if s.filesz]
        first, last = stored[0], stored[-1]
        keep = page_ranges([(first.vaddr, first.vaddr + 1), (last.vaddr, last.vaddr + 1)],
                           full.page_size)
        out = tmp_path / "skinny.core"
        sizes = write_skinny_core(full, keep, out)
        assert sizes["kept"] <= 2 * full.page_size
        with CoreFile(out) as skinny:
            # the notes are the same: threads and registers, file list, aux vector
            assert [t.regs for t in skinny.threads] == [t.regs for t in full.threads]
            assert skinny.mappings == full.mappings and skinny.auxv == full.auxv
            for lo, hi in keep:
                assert skinny.read(lo, hi - lo) == full.read(lo, hi - lo)
            middle = stored[len(stored) // 2].vaddr
            assert full.read(middle, 8) is not None and skinny.read(middle, 8) is None
            assert skinny.was_dropped(middle, 8) and skinny.dropped_reads == [(middle, 8)]
            assert not skinny.was_dropped(0x10, 8)  # never in the core: an ordinary fault
            assert out.stat().st_size < Path(full.path).stat().st_size
    finally:
        full.close()


def test_kept_ranges_cover_each_thread_stack_from_sp() -> None:
    core = CoreFile(_core(THREADS))
    start_logging(core)
    process = process_from(core, _files(THREADS))
    try:
        unwind_process(process)
        keep = kept_ranges(process)
        for thread in process.threads:
            sp = thread.regs["rsp"]
            assert any(lo <= sp < hi for lo, hi in keep), hex(sp)
        if not core.dropped:  # a full core: the skinny one is a small part of it
            assert sum(hi - lo for lo, hi in keep) < sum(s.filesz for s in core.segments) // 20
    finally:
        process.close()


@pytest.mark.gdb
def test_make_skinny_proves_replay_and_gdb(tmp_path: Path) -> None:
    from harness.record.verify import gdb_frames_of

    case = load_case(THREADS)
    core = CoreFile(_core(THREADS))
    start_logging(core)
    files = _files(THREADS)
    process = process_from(core, files)
    try:
        threads = thread_frames(unwind_process(process))
        assert threads == case.threads
        gdb = gdb_frames_of(process, core.path)
        outcome = make_skinny(process, files, threads, gdb, tmp_path)
    finally:
        process.close()
    assert outcome.skinny, outcome.why_full
    assert outcome.size <= outcome.full_size


def test_a_read_the_skinny_core_left_out_is_loud(tmp_path: Path) -> None:
    """The unwinder is changed to read one word more (8 KiB below the SP, a part
    of the stack no recording kept): the replay names the address and the remedy."""
    case = load_case(THREADS)
    with CoreFile(store_for(case).local_path(case.coredump_ref)) as core:
        if not core.dropped:
            pytest.skip("amd64/threads has a full core here: nothing was left out")
    src = tmp_path / "bpf_src"
    shutil.copytree(BPF_SRC, src)
    c_file = src / "native_stack.c"
    text = c_file.read_text()
    hook = "  begin_trace(scratch, bpf_get_current_pid_tgid(), &ctx->regs);\n"
    assert hook in text
    c_file.write_text(text.replace(hook, hook + (
        "  u64 extra_word;\n"
        "  bpf_probe_read_user(&extra_word, sizeof(extra_word),\n"
        "                      (void *)(scratch->state.sp - 0x2000));\n")))
    process = process_from(CoreFile(store_for(case).local_path(case.coredump_ref)),
                           _files(THREADS))
    try:
        baseline = dropped_reads_problem(process)
        unwind_process(process, unwinder=get_unwinder("amd64", source=UnwinderSource(src)))
        message = dropped_reads_problem(process)
    finally:
        process.close()
    assert baseline is None
    assert message is not None and "skinny core left out" in message
    assert "reskinny" in message
    sp = next(t.regs["rsp"] for t in process.threads)
    assert f"{sp - 0x2000:#x}" in message


@pytest.mark.gdb
@pytest.mark.slow
def test_reskinny_rebuilds_a_case(tmp_path: Path) -> None:
    """From the full core, the same skinny core again: the case file is unchanged."""
    path = copy_case(tmp_path, "threads")
    before = path.read_text()
    case = load_case(path)
    if case.full_ref is None:
        pytest.skip("amd64/threads has no skinny core yet")
    if not full_store().has(case.full_ref):
        pytest.skip("the full core of amd64/threads is not on this machine (.cache/full-blobs "
                    "holds the full cores recorded here; `coredump upload -full` shares them)")
    done = reskinny_case(case)
    assert done.size * 20 < done.full_size
    assert path.read_text() == before and not done.changed
    assert BlobStore(path.parent.parent / "blobs").has(case.coredump_ref)


def test_a_corrupt_left_out_note_is_a_clear_error(tmp_path: Path) -> None:
    """The skinny note is input like any other: a count past its data, or ranges out
    of order, is a one-line CoreError, never a wrong memory map."""
    from harness.core.elfcore import NT_SKINNY_DROPPED, SKINNY_NOTE_OWNER
    from harness.errors import CoreError

    full = CoreFile(_core(THREADS))
    try:
        stored = [s for s in full.segments if s.filesz]
        keep = page_ranges([(stored[0].vaddr, stored[0].vaddr + 1)], full.page_size)
        out = tmp_path / "skinny.core"
        write_skinny_core(full, keep, out)
    finally:
        full.close()
    blob = bytearray(out.read_bytes())
    owner = SKINNY_NOTE_OWNER.encode() + b"\0"
    at = blob.index(owner)
    desc = at + len(owner) + (-len(owner)) % 4
    assert int.from_bytes(blob[at - 4:at], "little") == NT_SKINNY_DROPPED
    too_many = bytearray(blob)
    too_many[desc:desc + 8] = (1 << 30).to_bytes(8, "little")  # a count past the note
    backwards = bytearray(blob)
    backwards[desc + 8:desc + 24] = (10).to_bytes(8, "little") + (5).to_bytes(8, "little")
    for bad in (too_many, backwards):
        path = tmp_path / "bad.core"
        path.write_bytes(bytes(bad))
        with pytest.raises(CoreError, match="skinny-core"):
            CoreFile(path)
