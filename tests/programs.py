"""Starting the test programs from tests: the one `ready` line each prints."""

from __future__ import annotations

import os
import select
import subprocess
import time

import pytest


def ready_line(proc: subprocess.Popen[bytes], timeout: float) -> bytes:
    """The program's first stdout line (its `ready [pid]`), or the test fails: on a
    timeout, or when the program exits first."""
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    buf = b""
    while b"\n" not in buf:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([proc.stdout], [], [], left)[0]:
            pytest.fail(f"no 'ready' line within {timeout}s (got {buf!r})")
        chunk = os.read(proc.stdout.fileno(), 256)
        if not chunk:
            pytest.fail(f"program exited before 'ready' (status {proc.wait()}, got {buf!r})")
        buf += chunk
    return buf.split(b"\n")[0]
