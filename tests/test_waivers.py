"""gdb waivers are per difference: each one names its thread, frame and the frames
on both sides, and covers that difference only (record/verify.py)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from harness.cases.case_file import GdbWaiver, ThreadFrames, load_case, parse_case
from harness.cli import main
from harness.errors import CaseError, HarnessError
from harness.record import new
from harness.record.gdb_oracle import gdb_available
from harness.record.verify import judge, verify_case
from tests.casefiles import copy_case

CORE_REF = "0" * 64
GDB = {1: ["a+0x1", "b+0x2", "c+0x3", "d+0x4"], 2: ["e+0x5", "f+0x6", "g+0x7"]}


def _ours(one: list[str] | None = None, two: list[str] | None = None) -> list[ThreadFrames]:
    return [ThreadFrames(1, one or list(GDB[1])), ThreadFrames(2, two or list(GDB[2]))]


def test_a_waiver_covers_its_difference_only() -> None:
    changed = ["a+0x1", "X+0x9", "c+0x3", "d+0x4"]
    found = judge(_ours(changed), GDB)
    assert [d.describe() for d in found.differences] == [
        "thread 1 frame #1: gdb b+0x2; ours X+0x9"]
    waivers = [d.waiver("gdb reads the CFI of b differently") for d in found.differences]
    assert not judge(_ours(changed), GDB, waivers).problems

    # Another thread changes: the waiver of thread 1 does not cover it.
    other = judge(_ours(changed, ["e+0x5", "f+0x7", "g+0x7"]), GDB, waivers)
    assert len(other.problems) == 1 and other.problems[0].startswith("thread 2 differs")
    # Another frame of the same thread changes: not covered either.
    more = judge(_ours(["a+0x1", "X+0x9", "c+0x3", "Y+0x4"]), GDB, waivers)
    assert len(more.problems) == 1 and "frame #3: gdb d+0x4; ours Y+0x4" in more.problems[0]


def test_a_waiver_that_matches_nothing_is_stale() -> None:
    stale = GdbWaiver(1, 1, ["b+0x2"], ["X+0x9"], "was different once")
    problems = judge(_ours(), GDB, [stale]).problems
    assert len(problems) == 1 and problems[0].startswith("stale gdb waiver: thread 1 frame #1")


def test_an_aborted_walk_is_one_difference() -> None:
    aborted = ["a+0x1", "b+0x2", "<unwinding aborted due to error native_no_rule>"]
    found = judge(_ours(aborted), GDB)
    assert [d.describe() for d in found.differences] == [
        "thread 1 frame #2: gdb c+0x3, d+0x4; ours <unwinding aborted due to error "
        "native_no_rule>"]


def test_an_inserted_frame_is_one_hunk() -> None:
    found = judge(_ours(["a+0x1", "b+0x2", "Z+0x1", "c+0x3", "d+0x4"]), GDB)
    assert [d.describe() for d in found.differences] == [
        "thread 1 frame #2: gdb nothing; ours Z+0x1"]


def test_case_file_waivers_round_trip_and_the_old_string_is_refused(tmp_path: Path) -> None:
    waiver = {"lwp": 7, "frame": 2, "gdb": ["a+0x1"], "ours": [], "why": "gdb shows a "
              "virtual inline frame"}
    doc = {"coredump-ref": CORE_REF, "threads": [], "gdb-differences": [waiver]}
    case = parse_case(doc, tmp_path / "x.json")
    assert case.gdb_differences == [GdbWaiver(7, 2, ["a+0x1"], [], waiver["why"])]
    assert case.to_json()["gdb-differences"] == [waiver]
    with pytest.raises(CaseError, match="not one string for the whole case"):
        parse_case({**doc, "gdb-differences": "why"}, tmp_path / "x.json")
    with pytest.raises(CaseError, match='"why" must say why'):
        parse_case({**doc, "gdb-differences": [{**waiver, "why": " "}]}, tmp_path / "x.json")
    with pytest.raises(CaseError, match="frame index"):
        parse_case({**doc, "gdb-differences": [{**waiver, "frame": -1}]}, tmp_path / "x.json")


@pytest.mark.gdb
def test_verify_fails_on_an_unexplained_frame_in_another_thread(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The issue's scenario against real gdb: one explained difference, then an
    unrelated frame of another thread changes; verify and the suite's test fail."""
    if gdb_available() is None:
        pytest.skip("gdb with Python support is not installed (apt-get install gdb)")
    path = copy_case(tmp_path, "threads")
    doc = json.loads(path.read_text())
    first, second = doc["threads"][0], doc["threads"][1]
    first["frames"][1] = "threads+0x1"
    path.write_text(json.dumps(doc))
    found = verify_case(load_case(path))
    assert len(found.differences) == 1
    doc["gdb-differences"] = [found.differences[0].waiver("a test").to_json()]
    path.write_text(json.dumps(doc))
    assert main(["verify", str(path)]) == 0
    assert "apart from 1 explained difference(s)" in capsys.readouterr().out

    second["frames"][2] = "threads+0x2"
    path.write_text(json.dumps(doc))
    assert main(["verify", str(path)]) == 1
    out = capsys.readouterr().out
    assert f"thread {second['lwp']} differs from gdb (1 unexplained" in out
    assert f"thread {first['lwp']} differs" not in out
    # The oracle's diff shows symbols beside the frames, and is aligned: one `+` line.
    assert re.search(r"^\s+#\d+\s+#\d+\s+libc\.so\.6\+0x\w+\s+\w+\+0x\w+$", out, re.M), out
    assert len(re.findall(r"^  \+ ", out, re.M)) == 1, out


def test_a_taken_name_fails_before_gcore(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = copy_case(tmp_path, "chain.O2.nofp")

    def no_gcore(*_: object) -> Path:
        raise AssertionError("gcore ran although the name is taken")

    monkeypatch.setattr(new, "gcore", no_gcore)
    with pytest.raises(HarnessError, match="exists; choose another name or pass -force"):
        new.record_case("chain.O2.nofp", pid=1, testdata=path.parent.parent)
