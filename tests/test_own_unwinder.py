"""Bring your own unwinder: a second, different unwinder runs through the same
harness with no change to the harness's Python, and a change to bpf_src's
structs and maps reaches Python by itself.

tests/fixtures/fp_unwinder/ is a frame-pointer-only walker with its own types
(another frame layout, no stack-delta maps, an extra trace field). The harness
builds it, reads its maps and structs from the build's debug info, fills its
memory map and decodes its traces.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from harness.bpf.agent import Agent
from harness.bpf.bridge import get_unwinder
from harness.bpf.build import UnwinderSource
from harness.cases.case_file import find_cases, load_case
from harness.cases.store import store_for
from harness.cli import main
from harness.helpers import RingBufMap
from harness.paths import BPF_SRC, REPO_ROOT, TESTDATA
from harness.replay import open_case, unwind_process

FP_UNWINDER = UnwinderSource(REPO_ROOT / "tests" / "fixtures" / "fp_unwinder")
FP_ERRORS = {"fp_pc_not_mapped", "fp_read_frame_record", "fp_not_progressing",
             "fp_max_frames"}


def _is_subsequence(short: list[str], long: list[str]) -> bool:
    it = iter(long)
    return all(frame in it for frame in short)


def _fp_traces(case_path: Path) -> list[tuple[list[str], list[str]]]:
    case = load_case(case_path)
    process = open_case(case, store_for(case))
    try:
        unwinder = get_unwinder(process.arch, source=FP_UNWINDER)
        result = unwind_process(process, frozenset(), unwinder=unwinder)
        expected = {t.lwp: t.frames for t in case.threads}
        return [(t.frames, expected[t.lwp]) for t in result.threads]
    finally:
        process.close()


# Not for a frame-pointer walk: programs built without frame pointers (nofp; musl,
# built with -fomit-frame-pointer; CPython, pyenv's and Debian's), handlers
# interrupting a thread mid-function (sighandler), whose signal frame record holds
# the interrupted code's link register, stale there, instead of its pc, and Go: it
# keeps frame pointers, but its walks end at Go's stack roots (goexit, mstart,
# mcall) and a cgo callback leaves the goroutine's stack through g's saved state,
# where the frame-pointer chain runs on.
FP_CASES = [p for p in find_cases(TESTDATA)
            if "nofp" not in p.stem and not p.stem.startswith(("musl.", "py", "go."))
            and "sighandler" not in p.stem]


def test_the_walker_is_described_by_its_own_debug_info() -> None:
    unwinder = get_unwinder("arm64", source=FP_UNWINDER)
    assert set(unwinder.maps) == {"pid_mappings", "fp_scratch", "fp_traces"}
    assert isinstance(unwinder.maps["fp_traces"], RingBufMap)
    assert unwinder.abi.entry_program == "fp_walk"
    frame = unwinder.abi.frames_field.element
    assert [f.name for f in frame.fields] == ["addr", "file_id", "depth", "error", "kind",
                                              "flags"]
    assert unwinder.abi.frames_field.count == 128
    assert unwinder.layout.maps["pid_mappings"].decl.startswith(
        "tests/fixtures/fp_unwinder/fp_stack.c:")


@pytest.mark.parametrize("fp_case", FP_CASES, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_frame_pointer_walk_of_the_bundled_cases(fp_case: Path) -> None:
    """Where programs keep frame pointers, a frame-pointer walk may skip a frame
    (a leaf, a prologue, a library without frame records) but never invents one:
    its frames are the recorded ones, in order, from frame 0; it ends on one of
    its own errors or where the chain ends."""
    for got, expected in _fp_traces(fp_case):
        native = [f for f in got if not f.startswith("<")]
        assert native and native[0] == expected[0], (got, expected)
        assert _is_subsequence(native, expected), (got, expected)
        for frame in got[len(native):]:
            assert frame.removeprefix("<unwinding aborted due to error ").rstrip(">") \
                in FP_ERRORS, got


def test_frame_pointer_walk_is_exact_where_every_frame_has_a_record() -> None:
    """arm64 Debian builds keep frame records everywhere: wherever the walker skipped
    nothing, it is the recorded trace exactly, and that is most arm64 threads (of
    those that fit in its 128-frame traces)."""
    capacity = get_unwinder("arm64", source=FP_UNWINDER).abi.frames_field.count
    exact = total = 0
    for case_path in FP_CASES:
        if case_path.parent.name != "arm64":
            continue
        for got, expected in _fp_traces(case_path):
            if len(expected) >= capacity:
                continue  # deeper than the walker's trace holds
            total += 1
            exact += got == expected
    assert total and exact * 2 > total, f"{exact} of {total} arm64 threads exact"


def test_a_new_field_and_a_new_map_need_no_python_change(tmp_path: Path) -> None:
    """A scratch copy of bpf_src gains a frame field and a hash map that the C reads;
    the harness creates the map, fills it by field name and decodes the field."""
    src = tmp_path / "bpf_src"
    shutil.copytree(BPF_SRC, src)
    types_h = src / "types.h"
    types_h.write_text(types_h.read_text().replace(
        "  u32 pad;\n};\n\nstruct trace {",
        "  u32 tag;     /* added: from the frame_tags map */\n};\n\nstruct trace {").replace(
        "#endif /* UNWINDER_TYPES_H */",
        "struct tag_key {\n  u64 file_id;\n};\n\n"
        "struct tag_value {\n  u32 tag;\n  u32 hits;\n};\n\n"
        "#endif /* UNWINDER_TYPES_H */"))
    maps_h = src / "maps.h"
    maps_h.write_text(maps_h.read_text().replace(
        "#endif /* UNWINDER_MAPS_H */",
        "struct {\n  __uint(type, BPF_MAP_TYPE_HASH);\n  __type(key, struct tag_key);\n"
        "  __type(value, struct tag_value);\n  __uint(max_entries, 64);\n"
        "} frame_tags SEC(\".maps\");\n\n"
        "#endif /* UNWINDER_MAPS_H */"))
    native = src / "native_stack.c"
    text = native.read_text()
    marker = "  f->pad = 0;\n"
    assert marker in text
    native.write_text(text.replace(marker, (
        "  struct tag_key tag_key = {file_id};\n"
        "  struct tag_value *tag = bpf_map_lookup_elem(&frame_tags, &tag_key);\n"
        "  f->tag = tag ? tag->tag : 0;\n"), 1))

    case = load_case(TESTDATA / "amd64" / "chain.O2.nofp.json")
    process = open_case(case, store_for(case))
    try:
        unwinder = get_unwinder(process.arch, source=UnwinderSource(src))
        tags = unwinder.maps["frame_tags"]
        exe = process.modules[process.executable_path()]
        baseline = unwind_process(process, frozenset(), unwinder=unwinder)
        Agent(unwinder, process).attach()  # resets every map; tag after it
        assert tags.update_value({"file_id": exe.file_id}, {"tag": 0xC0FFEE}) == 0
        thread = process.threads[0]
        trace = unwinder.unwind(thread.regs, process.pid, thread.lwp, process.read)
    finally:
        process.close()
    assert [f.record.tag for f in trace.frames] == [
        0xC0FFEE if f.file_id == exe.file_id else 0 for f in trace.frames]
    assert any(f.record.tag == 0xC0FFEE for f in trace.frames)
    assert baseline.threads[0].frames == case.threads[0].frames
    assert tags.lookup_value({"file_id": exe.file_id}).tag == 0xC0FFEE


def test_cli_replays_with_another_unwinder(capsys: pytest.CaptureFixture[str]) -> None:
    case = TESTDATA / "arm64" / "sites.f5.body.json"
    assert main(["analyze", "-bpf-src", str(FP_UNWINDER.directory), "-case", str(case)]) == 0
    out = capsys.readouterr().out
    assert "sites+0x8f0" in out


@pytest.mark.bpf
def test_the_walker_passes_the_kernel_verifier(capsys: pytest.CaptureFixture[str]) -> None:
    from harness.bpf import libbpf

    if not shutil.which("clang"):
        pytest.skip("clang is not installed (scripts/bootstrap installs it)")
    reason = libbpf.bpf_unavailable_reason()
    if reason:
        pytest.skip(reason)
    assert main(["bpf-verify", "-bpf-src", str(FP_UNWINDER.directory)]) == 0
    out = capsys.readouterr().out
    assert out.count("fp_walk") >= 2 and "REJECTED" not in out
