"""Shared fixtures. Case tests are parametrized by case file path, so
`pytest -k chain.O2` and node ids like
`tests/test_cases.py::test_case[testdata/amd64/chain.O2.nofp.json]` select one."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.cases.case_file import find_cases
from harness.paths import REPO_ROOT

CASE_FILES = find_cases(REPO_ROOT / "testdata")


def case_id(path: Path) -> str:
    return str(path.relative_to(REPO_ROOT))


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "case_path" in metafunc.fixturenames:
        metafunc.parametrize("case_path", CASE_FILES, ids=[case_id(p) for p in CASE_FILES])
