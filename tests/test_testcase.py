"""Case files: reference-tool shape, strict validation, unknown fields kept."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness.cases.case_file import load_case
from harness.errors import CaseError

REF = "ab" * 32


def _write(tmp_path: Path, doc: object) -> Path:
    p = tmp_path / "c.json"
    p.write_text(json.dumps(doc) if not isinstance(doc, str) else doc)
    return p


def test_round_trip_keeps_unknown_fields(tmp_path: Path) -> None:
    doc = {"coredump-ref": REF, "threads": [{"lwp": 5, "frames": ["a+0x1"]}],
           "modules": [{"ref": REF, "local-path": "/bin/a"}], "skip": "flaky",
           "fault-addresses": ["0x1000"], "future-field": {"x": 1}}
    case = load_case(_write(tmp_path, doc))
    assert case.fault_addresses == [0x1000] and case.skip == "flaky"
    case.save(tmp_path / "d.json")
    assert json.loads((tmp_path / "d.json").read_text()) == doc


@pytest.mark.parametrize("doc, message", [
    ("{not json", "malformed JSON at line 1"),
    ([], "JSON object"),
    ({"threads": []}, "coredump-ref"),
    ({"coredump-ref": "xyz", "threads": []}, "sha256"),
    ({"coredump-ref": REF, "threads": [{"frames": []}]}, "lwp"),
    ({"coredump-ref": REF, "threads": [{"lwp": 1, "frames": [1]}]}, "list of strings"),
    ({"coredump-ref": REF, "threads": [], "modules": [{"ref": REF}]}, "local-path"),
    ({"coredump-ref": REF, "threads": [], "fault-addresses": ["zz"]}, "not a number"),
])
def test_malformed_cases_name_the_problem(tmp_path: Path, doc: object, message: str) -> None:
    with pytest.raises(CaseError, match=message):
        load_case(_write(tmp_path, doc))


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(CaseError, match="cannot read"):
        load_case(tmp_path / "nope.json")
