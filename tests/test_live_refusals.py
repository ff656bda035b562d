"""`coredump live` where it cannot run says why in one line (exit 2), before
any gcore: here, as an unprivileged user, for whom bpf() is refused."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from harness.paths import REPO_ROOT


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None,
                    reason="needs root and setpriv to run the command as nobody")
def test_live_as_nobody_is_refused_with_the_reason() -> None:
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        proc = subprocess.run(
            ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
             sys.executable, "-m", "harness.cli", "live", "-pid", str(sleeper.pid)],
            capture_output=True, text=True, cwd=REPO_ROOT, timeout=60)
    finally:
        sleeper.kill()
        sleeper.wait()
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().count("\n") == 0 and "Traceback" not in proc.stderr
    assert "coredump live cannot run here: bpf() is not permitted" in proc.stderr


def test_live_of_a_missing_process_is_one_line() -> None:
    proc = subprocess.run([sys.executable, "-m", "harness.cli", "live", "-pid", "999999999"],
                          capture_output=True, text=True, cwd=REPO_ROOT, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("coredump: error:") and "Traceback" not in proc.stderr
