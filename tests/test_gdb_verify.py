"""Each case's frames equal gdb's backtrace of the same core and modules,
unless the case file explains why not (`gdb-differences`)."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.cases.case_file import load_case
from harness.record.gdb_oracle import gdb_available, gdb_for
from harness.record.verify import verify_case

pytestmark = pytest.mark.gdb


def test_matches_gdb(case_path: Path) -> None:
    gdb = gdb_for(case_path.parent.name)
    if gdb_available(gdb) is None:
        pytest.skip(f"{gdb} with Python support is not installed (apt-get install {gdb})")
    case = load_case(case_path)
    if case.skip:
        pytest.skip(f"case says: {case.skip}")
    comparison = verify_case(case)
    assert comparison.gdb_threads, "gdb produced no threads"
    if case.gdb_differences:
        assert comparison.problems, (
            f"{case_path} explains a gdb difference ({case.gdb_differences!r}) but there is "
            "none any more: remove the explanation")
        return
    assert not comparison.problems, "\n".join(comparison.problems)
