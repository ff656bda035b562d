"""Access to the bundled cases from unit tests."""

from __future__ import annotations

import pytest

from harness.cases.case_file import TestCase, load_case
from harness.paths import REPO_ROOT

TESTDATA = REPO_ROOT / "testdata"


def bundled_case(name: str, arch: str = "amd64") -> TestCase:
    """testdata/<arch>/<name>.json; skips (with the path) if it is not there."""
    path = TESTDATA / arch / f"{name}.json"
    if not path.exists():
        pytest.skip(f"bundled case {path} is missing")
    return load_case(path)
