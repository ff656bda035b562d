"""Aligned, folded frame diffs (harness/diffing.py) and where people read them:
pytest's failure of a case, `replay`, `analyze`."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from harness.cli import main
from harness.diffing import frame_diff, hunks
from harness.paths import REPO_ROOT

FRAMES = [f"m+{0x100 + i:#x}" for i in range(30)]


def test_a_missing_frame_is_one_line() -> None:
    actual = FRAMES[:10] + FRAMES[11:]
    diff = frame_diff(FRAMES, actual)
    changed = [line for line in diff.splitlines()[1:] if line.startswith(("  -", "  +"))]
    assert len(changed) == 1 and re.fullmatch(r"  -\s+#10\s+m\+0x10a", changed[0])
    assert [(h.exp_start, h.exp_end, h.act_start, h.act_end) for h in hunks(FRAMES, actual)] \
        == [(10, 11, 10, 10)]


def test_long_equal_runs_fold() -> None:
    actual = list(FRAMES)
    actual[15] = "x+0x1"
    lines = frame_diff(FRAMES, actual).splitlines()
    assert "  ... 13 equal frames" in lines and "  ... 12 equal frames" in lines
    assert any(re.fullmatch(r"  -\s+#15\s+m\+0x10f", line) for line in lines)
    assert any(re.fullmatch(r"  \+\s{6,}#15\s+x\+0x1", line) for line in lines)
    assert len(lines) == 1 + 2 + 2 + 2 + 2  # header, two folds, context, the change


def test_annotations_sit_beside_frames() -> None:
    diff = frame_diff(["a+0x1"], ["b+0x2"], annotate=lambda f: f"sym_of_{f[0]}")
    assert re.search(r"-\s+#0\s+a\+0x1\s+sym_of_a$", diff, re.M)
    assert re.search(r"\+\s+#0\s+b\+0x2\s+sym_of_b$", diff, re.M)


def _tampered_case(tmp_path: Path) -> Path:
    dest = tmp_path / "testdata" / "amd64" / "recurse.json"
    dest.parent.mkdir(parents=True)
    doc = json.loads((REPO_ROOT / "testdata" / "amd64" / "recurse.json").read_text())
    del doc["threads"][0]["frames"][3]
    dest.write_text(json.dumps(doc))
    (tmp_path / "testdata" / "blobs").symlink_to(REPO_ROOT / "testdata" / "blobs")
    return dest


def test_pytest_failure_ends_with_the_diff_and_the_command(tmp_path: Path) -> None:
    """The suite's own case test, run by pytest on a case missing one frame."""
    case = _tampered_case(tmp_path)
    test = tmp_path / "test_one.py"
    test.write_text("from pathlib import Path\nfrom tests.test_cases import test_case\n\n"
                    f"def test_tampered():\n    test_case(Path({str(case)!r}))\n")
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           "-p", "no:xdist", str(test)], capture_output=True, text=True,
                          env=env, cwd=tmp_path, timeout=300)
    out = proc.stdout
    assert proc.returncode == 1, out
    failure = out.split("FAILURES", 1)[1].split("short test summary", 1)[0]
    body = [line for line in failure.splitlines() if line.strip() and not line.startswith("_")
            and not line.startswith("=")]
    assert "CaseResult(" not in out and "where False" not in out
    assert body[-1] == f"reproduce: .venv/bin/coredump replay {case}"
    assert re.fullmatch(r"\s+\+\s+#3\s+recurse\+0x11c4\s+recurse\+0x17", body[-5]), body
    assert body[-2] == "  ... 220 equal frames"


def test_replay_prints_the_diff_after_its_table(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    case = _tampered_case(tmp_path)
    assert main(["replay", str(case)]) == 1
    out = capsys.readouterr().out
    assert out.index("coredump replay") < out.index("FAIL") < out.index("frames differ:")
    assert out.rstrip().endswith("1 case(s) failed")


def test_analyze_shows_symbols_and_json_keeps_the_format(
        capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["analyze", "-case", "amd64/chain.O2.nofp"]) == 0
    lines = capsys.readouterr().out.splitlines()
    # pause from libc's .dynsym, d from the executable's .symtab
    assert re.fullmatch(r"  #0\s+libc\.so\.6\+0xd3dd0\s+pause\+0x10", lines[1])
    assert re.fullmatch(r"  #1\s+chain\.O2\.nofp\+0x\w+\s+d\+0x\w+", lines[2])
    assert main(["analyze", "-case", "amd64/chain.O2.nofp", "-json"]) == 0
    frames = json.loads(capsys.readouterr().out)[0]["frames"]
    assert frames[0] == "libc.so.6+0xd3dd0"


def test_a_closed_pipe_ends_quietly() -> None:
    coredump = Path(sys.executable).parent / "coredump"
    if not coredump.exists():
        pytest.skip(f"{coredump} is not installed (scripts/bootstrap)")
    if shutil.which("head") is None:
        pytest.skip("head not found")
    # `true` has exited long before the first write, so the write meets a closed pipe.
    for command in ("analyze -case amd64/recurse", "list", "replay amd64/threads"):
        proc = subprocess.run(f"'{coredump}' {command} | true; echo status=${{PIPESTATUS[0]}}",
                              shell=True, executable="/bin/bash", capture_output=True,
                              text=True, timeout=120, cwd=REPO_ROOT)
        # No traceback; rich's console ends its own writes with status 1.
        assert proc.stderr == "", command
        assert proc.stdout in ("status=141\n", "status=1\n"), command
