"""The optional case fields through the CLI: `skip` and `fault-addresses`, and
fields of the reference format this code does not interpret, kept on rewrite."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness.cases.case_file import load_case
from harness.cases.store import store_for
from harness.cli import main
from harness.paths import REPO_ROOT
from harness.replay import open_case, unwind_process

CASE = REPO_ROOT / "testdata" / "amd64" / "chain.O2.nofp.json"


def _copy(tmp_path: Path, **fields: object) -> Path:
    dest = tmp_path / "testdata" / "amd64" / CASE.name
    dest.parent.mkdir(parents=True)
    doc = json.loads(CASE.read_text())
    doc.update(fields)
    dest.write_text(json.dumps(doc))
    (tmp_path / "testdata" / "blobs").symlink_to(REPO_ROOT / "testdata" / "blobs")
    return dest


def _return_address_slot() -> int:
    """Where frame 0's return address sits on the stack (the unwinder reads it)."""
    case = load_case(CASE)
    process = open_case(case, store_for(case))
    try:
        trace = unwind_process(process).threads[0].trace
    finally:
        process.close()
    return trace.frames[0].cfa - 8


def test_skip_is_reported(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _copy(tmp_path, skip="needs the arm64 build")
    assert main(["replay", str(path)]) == 0
    assert "skip: needs the arm64 build" in capsys.readouterr().out
    assert main(["rebase", str(path)]) == 0
    assert json.loads(path.read_text())["skip"] == "needs the arm64 build"


def test_fault_addresses(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    slot = _return_address_slot()
    path = _copy(tmp_path, **{"fault-addresses": [hex(slot)], "comment": "from elsewhere"})
    # The read of the return address now fails, so the expected frames change.
    assert main(["replay", str(path)]) == 1
    assert "native_read_return_address" in capsys.readouterr().out
    assert main(["rebase", "-no-verify", str(path)]) == 0
    capsys.readouterr()
    doc = json.loads(path.read_text())
    assert doc["threads"][0]["frames"] == [
        "libc.so.6+0xd3dd0", "<unwinding aborted due to error native_read_return_address>"]
    assert doc["fault-addresses"] == [hex(slot)] and doc["comment"] == "from elsewhere"
    assert main(["replay", str(path)]) == 0
    assert "pass" in capsys.readouterr().out

    # A listed address the unwinder never reads fails the case: the entry is stale.
    doc["fault-addresses"].append("0x10")
    path.write_text(json.dumps(doc))
    assert main(["replay", str(path)]) == 1
    assert "fault-addresses never read (stale entries?): 0x10" in capsys.readouterr().out


def test_bad_fault_address(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _copy(tmp_path, **{"fault-addresses": ["0xzz"]})
    assert main(["replay", str(path)]) == 2
    assert "fault address '0xzz' is not a number" in capsys.readouterr().err
