"""One test per testdata/<arch>/*.json: replay it and compare frame by frame."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.cases.case_file import load_case
from harness.replay import failure_report, replay_case


def test_case(case_path: Path) -> None:
    case = load_case(case_path)
    if case.skip:
        pytest.skip(f"case says: {case.skip}")
    result = replay_case(case)
    if result.frame_count == 0:
        pytest.fail(f"{case_path}: the unwinder produced no frame at all", pytrace=False)
    if not result.ok:
        # The diff and the reproduce command, not a traceback with dataclass reprs.
        pytest.fail(failure_report(result), pytrace=False)


def test_bundled_cases_exist() -> None:
    from tests.conftest import CASE_FILES

    assert len([p for p in CASE_FILES if p.parent.name == "amd64"]) >= 10
    assert len([p for p in CASE_FILES if p.parent.name == "arm64"]) >= 8
