"""Each case's frames equal gdb's backtrace of the same core and modules, apart
from the differences the case file explains one by one (`gdb-differences`)."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.cases.case_file import load_case
from harness.record.gdb_oracle import gdb_available, gdb_for
from harness.record.pystack_oracle import pystack_command
from harness.record.verify import has_python_frames, verify_case

pytestmark = pytest.mark.gdb


def test_matches_gdb(case_path: Path) -> None:
    gdb = gdb_for(case_path.parent.name)
    if gdb_available(gdb) is None:
        pytest.skip(f"{gdb} with Python support is not installed (apt-get install {gdb})")
    case = load_case(case_path)
    if case.skip:
        pytest.skip(f"case says: {case.skip}")
    if has_python_frames(case.threads) and pystack_command() is None:
        pytest.skip("the case has Python frames and pystack, their oracle, is not installed "
                    "(.venv/bin/pip install pystack)")
    comparison = verify_case(case)
    assert comparison.gdb_threads, "gdb produced no threads"
    # Unexplained differences and stale waivers are both problems.
    if comparison.problems:
        pytest.fail(f"{case_path}:\n" + "\n".join(comparison.problems)
                    + f"\nreproduce: .venv/bin/coredump verify {case_path}", pytrace=False)
