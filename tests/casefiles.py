"""Access to the bundled cases from unit tests."""

from __future__ import annotations

import shutil
from pathlib import Path

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


def copy_case(tmp_path: Path, name: str, arch: str = "amd64") -> Path:
    """A writable copy of a bundled case in tmp_path/testdata, its blobs linked."""
    dest = tmp_path / "testdata" / arch / f"{name}.json"
    dest.parent.mkdir(parents=True)
    shutil.copy(TESTDATA / arch / f"{name}.json", dest)
    (tmp_path / "testdata" / "blobs").symlink_to(TESTDATA / "blobs")
    return dest

