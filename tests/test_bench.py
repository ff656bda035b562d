"""coredump bench runs end to end (one round, no timing asserted: speed is read from
its table, never from a test)."""

from __future__ import annotations

import json
import shutil

import pytest

from harness.bench import OURS, bench
from harness.cli import main
from harness.paths import TESTDATA


def test_bench_smoke_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "-repeat", "1", "-case", "amd64/chain.O2.nofp", "-json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    (case,) = doc["cases"]
    assert case["case"] == "amd64/chain.O2.nofp" and case["threads"] == 1
    assert case["frames"] == 9
    for name in (f"{OURS} (warm)", f"{OURS} (cold)"):
        tool = case["tools"][name]
        assert len(tool["samples"]) == 1 and tool["median_s"] > 0
    gdb = case["tools"]["gdb"]
    if shutil.which("gdb"):
        assert len(gdb["samples"]) == 1, gdb
    else:
        assert gdb["skipped"]
    assert case["replay_s"] > 0 and case["attach_s"] > 0


def test_bench_table_and_fit(capsys: pytest.CaptureFixture[str]) -> None:
    report = bench([TESTDATA / "amd64" / "chain.O2.nofp.json", TESTDATA / "amd64" / "threads.json"],
                   repeat=1, peers=False)
    assert report.per_frame_us is not None and report.per_thread_us is not None
    assert main(["bench", "-repeat", "1", "-no-peers", "-case", "arm64/threads"]) == 0
    out = capsys.readouterr().out
    assert "coredump analyze (warm)" in out and "us per frame" not in out  # one case: no fit


def test_bench_refuses_a_bad_baseline(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:  # type: ignore[no-untyped-def]
    assert main(["bench", "-repeat", "1", "-baseline", str(tmp_path), "-case",
                 "amd64/chain.O2.nofp"]) == 2
    assert "is not a checkout of the harness" in capsys.readouterr().err
