"""scripts/bootstrap is cheap to re-run: with nothing changed it skips pip."""

from __future__ import annotations

import subprocess
import time

import pytest

from harness.paths import REPO_ROOT

BOOTSTRAP = REPO_ROOT / "scripts" / "bootstrap"


@pytest.mark.slow
def test_bootstrap_reruns_in_about_a_second() -> None:
    if not (REPO_ROOT / ".venv" / "bin" / "python").exists():
        pytest.skip("no .venv: run scripts/bootstrap first")
    subprocess.run([str(BOOTSTRAP)], check=True, capture_output=True, timeout=600)
    start = time.perf_counter()
    proc = subprocess.run([str(BOOTSTRAP)], check=True, capture_output=True, text=True,
                          timeout=600)
    took = time.perf_counter() - start
    assert "bootstrap: ready" in proc.stderr
    assert took < 3.0, f"a re-run with nothing changed took {took:.1f} s"
