"""One test per testdata/<arch>/*.json: replay it and compare frame by frame."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.cases.case_file import load_case
from harness.replay import replay_case


def test_case(case_path: Path) -> None:
    case = load_case(case_path)
    if case.skip:
        pytest.skip(f"case says: {case.skip}")
    result = replay_case(case)
    assert result.frame_count > 0
    assert result.ok, f"{case_path}:\n" + "\n".join(result.problems)


def test_bundled_cases_exist() -> None:
    from tests.conftest import CASE_FILES

    assert len([p for p in CASE_FILES if p.parent.name == "amd64"]) >= 10
    assert len([p for p in CASE_FILES if p.parent.name == "arm64"]) >= 8
