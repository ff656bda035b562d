"""The coredump command end to end, on real processes and the bundled cases."""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from harness.cases.case_file import load_case
from harness.cli import main
from harness.paths import REPO_ROOT
from harness.record.gdb_oracle import gdb_available
from harness.replay import replay_case

CASE = REPO_ROOT / "testdata" / "amd64" / "chain.O0.fp.json"


def test_analyze_json_equals_the_case(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["analyze", "-case", str(CASE), "-json"]) == 0
    threads = json.loads(capsys.readouterr().out)
    case = load_case(CASE)
    assert threads == [{"lwp": t.lwp, "frames": t.frames} for t in case.threads]


def test_analyze_double_dash_flags(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["analyze", "--case", str(CASE)]) == 0
    assert "#0   libc.so.6+0x" in capsys.readouterr().out


def test_replay_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["replay", str(CASE)]) == 0
    out = capsys.readouterr().out
    assert "chain.O0.fp" in out and "pass" in out


def _copy_case(tmp_path: Path) -> Path:
    dest = tmp_path / "testdata" / "amd64" / CASE.name
    dest.parent.mkdir(parents=True)
    shutil.copy(CASE, dest)
    (tmp_path / "testdata" / "blobs").symlink_to(REPO_ROOT / "testdata" / "blobs")
    return dest


def test_rebase_restores_and_reports(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _copy_case(tmp_path)
    doc = json.loads(path.read_text())
    doc["threads"][0]["frames"][1] = "chain.O0.fp+0x1"
    doc["extra-field"] = "kept"
    path.write_text(json.dumps(doc))
    assert not replay_case(path).ok

    assert main(["rebase", "-dry-run", str(path)]) == 0
    assert "1 case(s) would change" in capsys.readouterr().out
    assert not replay_case(path).ok

    assert main(["rebase", str(path)]) == 0
    out = capsys.readouterr().out
    # The case file's frame #1 is one deleted line of the aligned diff.
    assert re.search(r"^\s+-\s+#1\s+chain.O0.fp\+0x1$", out, re.M) and "1 case(s) changed" in out
    assert replay_case(path).ok
    assert json.loads(path.read_text())["extra-field"] == "kept"
    assert main(["rebase", str(path)]) == 0
    assert "0 case(s) changed" in capsys.readouterr().out


@pytest.mark.parametrize("make, message", [
    (lambda p: p.write_bytes(b"hello"), "not an ELF"),
    (lambda p: shutil.copy("/bin/true", p), "not a core"),
])
def test_bad_cores_get_clear_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                     make, message: str) -> None:  # type: ignore[no-untyped-def]
    bad = tmp_path / "core"
    make(bad)
    assert main(["analyze", "-core", str(bad)]) == 2
    assert message in capsys.readouterr().err


def test_truncated_core(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    case = load_case(CASE)
    core = REPO_ROOT / ".cache" / "blobs" / case.coredump_ref
    replay_case(case)  # makes sure the core is extracted
    data = core.read_bytes()
    (tmp_path / "core").write_bytes(data[: len(data) // 2])
    assert main(["analyze", "-core", str(tmp_path / "core")]) == 2
    assert "truncated" in capsys.readouterr().err


def test_malformed_case(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "x.json").write_text("{")
    assert main(["analyze", "-case", str(tmp_path / "x.json")]) == 2
    assert "malformed JSON" in capsys.readouterr().err


@pytest.mark.gdb
@pytest.mark.slow
def test_new_from_pid_then_replay(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The issue's acceptance path: a fresh process -> `new -pid` -> a passing case."""
    if shutil.which("gcore") is None or gdb_available() is None:
        pytest.skip("gdb/gcore not installed (apt-get install gdb)")
    build = tmp_path / "build"
    subprocess.run([str(REPO_ROOT / "testsources" / "build.sh"), str(build)], check=True,
                   capture_output=True)
    proc = subprocess.Popen([str(build / "chain.O3.nofp")], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().startswith("ready")
        testdata = tmp_path / "testdata"
        assert main(["new", "-pid", str(proc.pid), "-name", "fresh",
                     "-testdata", str(testdata)]) == 0
    finally:
        proc.kill()
        proc.wait()
    assert "1 threads" in capsys.readouterr().out
    result = replay_case(testdata / "amd64" / "fresh.json")
    assert result.ok and result.frame_count >= 8
    frames = result.actual[0].frames
    assert frames[-1].startswith("chain.O3.nofp+")  # _start
    # Only the executable, the loader and libc are bundled; core + 3 modules stored.
    assert len(list((testdata / "blobs").glob("*.zst"))) == 4


def test_new_pid_errors(capsys: pytest.CaptureFixture[str]) -> None:
    if shutil.which("gcore") is None:
        pytest.skip("gcore not installed")
    assert main(["new", "-pid", "999999999", "-name", "x"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_command_groups_list_what_each_module_registers() -> None:
    """main() imports only the group of the command it runs, found in COMMAND_GROUPS."""
    import argparse
    import importlib

    from harness.cli import COMMAND_GROUPS, build_parser

    for group, commands in COMMAND_GROUPS.items():
        sub = argparse.ArgumentParser().add_subparsers()
        importlib.import_module(f"harness.cli.{group}").register(sub)
        assert tuple(sub.choices) == commands, group
    full = build_parser()
    assert full._subparsers is not None
    names = {c for commands in COMMAND_GROUPS.values() for c in commands}
    assert set(full._subparsers._group_actions[0].choices) == names  # type: ignore[union-attr]


def test_running_analyze_imports_no_emulator_or_verifier() -> None:
    import subprocess
    import sys

    code = ("import sys; from harness.cli import main; "
            "main(['analyze', '-case', 'testdata/amd64/chain.O2.nofp.json', '-json']); "
            "print(sorted(m for m in ('unicorn', 'harness.bpf.libbpf', 'harness.record.new', "
            "'elftools.elf.elffile', 'rich') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True,
                         text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "[]", out


def test_recording_progress_only_on_a_terminal() -> None:
    """Progress lines are a live status on a terminal and absent in a log; warnings
    show in both."""
    import io

    from rich.console import Console

    from harness.cli.record import progress_reporter

    for terminal in (True, False):
        out = io.StringIO()
        console = Console(file=out, force_terminal=terminal, width=100)
        err = io.StringIO()
        with contextlib.redirect_stderr(err), progress_reporter(console) as progress:
            progress("running gcore on pid 1")
            progress("warning: /lib/x.so is not available")
        shown = out.getvalue() + err.getvalue()
        assert "warning: /lib/x.so is not available" in shown
        assert ("running gcore on pid 1" in shown) == terminal


def test_analyze_core_prints_each_thread_as_it_is_unwound(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A core with thousands of threads is streamed: a thread is printed before the
    next is unwound, and nothing of it is kept (3,000 copies of recurse's thread:
    32 MB peak where keeping every trace took 366 MB)."""
    import json as json_module

    from harness.bpf.bridge import Unwinder
    from harness.cases.case_file import load_case
    from harness.cases.store import store_for
    from tests.hostile import with_thread_copies

    case = load_case(REPO_ROOT / "testdata" / "amd64" / "threads.json")
    store = store_for(case)
    core = tmp_path / "many.core"
    core.write_bytes(with_thread_copies(store.local_path(case.coredump_ref).read_bytes(), 40))
    sysroot = tmp_path / "root"
    for m in case.modules:
        dest = sysroot / m.local_path.lstrip("/")
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(store.local_path(m.ref).read_bytes())

    assert main(["analyze", "-json", "-core", str(core), "-sysroot", str(sysroot)]) == 0
    out = capsys.readouterr().out
    threads = json_module.loads(out)
    assert len(threads) == 46 and out == json_module.dumps(threads, indent=2) + "\n"

    real = Unwinder.unwind
    calls = []

    def unwind_then_fail(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Unwinder, "unwind", unwind_then_fail)
    assert main(["analyze", "-core", str(core), "-sysroot", str(sysroot)]) == 130
    printed = capsys.readouterr().out
    assert printed.count("PID: ") == 2  # the two unwound threads were out already
