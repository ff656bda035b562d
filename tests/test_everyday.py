"""Everyday commands: `coredump list`, cases named by arch/name or name wherever a
path is accepted, and `rebase` re-checking what it changes against gdb."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from harness.cases.selection import resolve_case, resolve_one
from harness.cli import main
from harness.errors import CaseError
from harness.paths import TESTDATA
from harness.record.gdb_oracle import gdb_available
from tests.casefiles import copy_case


def test_names_resolve_exactly() -> None:
    assert resolve_case("amd64/chain.O2.nofp", TESTDATA) == [
        TESTDATA / "amd64" / "chain.O2.nofp.json"]
    # Exact, unlike pytest -k: the .nobundle case is not selected.
    assert resolve_case("chain.O2.nofp", TESTDATA) == [
        TESTDATA / "amd64" / "chain.O2.nofp.json", TESTDATA / "arm64" / "chain.O2.nofp.json"]
    assert resolve_case("amd64/cxx.json", TESTDATA) == [TESTDATA / "amd64" / "cxx.json"]
    with pytest.raises(CaseError, match=r"'cxx' names 2 cases \(amd64/cxx, arm64/cxx\)"):
        resolve_one("cxx", TESTDATA)
    with pytest.raises(CaseError, match="did you mean .*threads"):
        resolve_case("thread", TESTDATA)
    with pytest.raises(CaseError, match="case file /nope/x.json does not exist"):
        resolve_case("/nope/x.json", TESTDATA)


def test_commands_take_names(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["replay", "amd64/threads", "arm64/static"]) == 0
    out = capsys.readouterr().out
    assert "amd64/threads" in out and "arm64/static" in out and "arm64/threads" not in out
    assert main(["analyze", "-case", "cxx"]) == 0
    out = capsys.readouterr().out
    assert out.index("== amd64/cxx") < out.index("== arm64/cxx")
    assert main(["analyze", "-case", "cxx", "-json"]) == 2
    assert "say which" in capsys.readouterr().err
    assert main(["analyze", "-case", "arm64/cxx", "-json"]) == 0
    assert len(json.loads(capsys.readouterr().out)) == 2


def test_list(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["list", "amd64/threads.sigill", "arm64/threads", "amd64/chain.O2.nofp.nobundle",
                 "amd64/recurse"]) == 0
    rows = {line.split("│")[1].strip(): [c.strip() for c in line.split("│")[2:-1]]
            for line in capsys.readouterr().out.splitlines() if line.startswith("│")}
    # columns after the case: threads, frames, modules, core, size, recorded, skip
    assert rows["amd64/threads.sigill"][:3] == ["6", "30", "3"]
    assert rows["amd64/threads.sigill"][5] == "kernel (SIGILL)"
    assert rows["arm64/threads"][5] == "qemu-user"
    nobundle = rows["amd64/chain.O2.nofp.nobundle"]
    assert nobundle[2] == "0" and nobundle[5:] == ["gcore, modules from memory", ""]
    assert nobundle[3].removesuffix(" skinny") == nobundle[4]  # the core is all it stores
    assert rows["amd64/recurse"][1] == "226" and re.fullmatch(r"\d+ KB", rows["amd64/recurse"][4])
    assert re.fullmatch(r"\d+ KB (skinny|full)", rows["amd64/recurse"][3])


@pytest.mark.gdb
def test_rebase_rechecks_gdb(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    if gdb_available() is None:
        pytest.skip("gdb with Python support is not installed (apt-get install gdb)")
    path = copy_case(tmp_path, "chain.O2.nofp")
    doc = json.loads(path.read_text())
    good = list(doc["threads"][0]["frames"])
    # The "unwinder change" to rebase onto: a fault at frame 0's return address
    # makes the walk stop after one frame, which gdb does not do.
    from tests.test_case_fields import _return_address_slot
    doc["fault-addresses"] = [hex(_return_address_slot())]
    path.write_text(json.dumps(doc))
    assert main(["rebase", str(path)]) == 1
    out = capsys.readouterr().out
    assert "gdb disagrees with 1 change(s) of this rebase:" in out
    assert "1 of them disagree with gdb" in out
    assert re.search(r"frame #1: gdb .*; ours <unwinding aborted due to error "
                     r"native_read_return_address>", out)

    # Back to the good frames: rebase says gdb agrees.
    doc = json.loads(path.read_text())
    del doc["fault-addresses"]
    path.write_text(json.dumps(doc))
    assert main(["rebase", str(path)]) == 0
    out = capsys.readouterr().out
    assert "gdb agrees with the new frames" in out
    assert json.loads(path.read_text())["threads"][0]["frames"] == good

    doc = json.loads(path.read_text())
    doc["threads"][0]["frames"][2] = "chain.O2.nofp+0x1"
    path.write_text(json.dumps(doc))
    assert main(["rebase", "-no-verify", str(path)]) == 0
    assert "agrees" not in capsys.readouterr().out
