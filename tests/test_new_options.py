"""`coredump new` options on real processes and cores: -no-module-bundling,
-sysroot, and the errors of -pid."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.cases import lifecycle
from harness.cases.case_file import NO_MODULE_BUNDLING, load_case
from harness.cases.store import store_for
from harness.cli import main
from harness.confine import resolve_under
from harness.errors import HarnessError
from harness.paths import REPO_ROOT
from harness.record.gdb_oracle import gdb_available
from harness.replay import replay_case

CASE = REPO_ROOT / "testdata" / "amd64" / "chain.O2.nofp.json"
BUILD = REPO_ROOT / "testsources" / "build" / "amd64"


def _need_gcore() -> None:
    if shutil.which("gcore") is None or gdb_available() is None:
        pytest.skip("gdb/gcore not installed (apt-get install gdb)")


def _gdb_flags() -> list[str]:
    return [] if gdb_available() else ["-no-gdb-check"]


def _seed_blobs(testdata: Path, blob_ids: list[str]) -> None:
    """Hard-link committed blobs into a test's store so `new` finds them stored and
    skips compressing them again (a second of zstd -19 each for libc)."""
    blobs = testdata / "blobs"
    blobs.mkdir(parents=True, exist_ok=True)
    for blob_id in blob_ids:
        src = REPO_ROOT / "testdata" / "blobs" / f"{blob_id}.zst"
        try:
            os.link(src, blobs / src.name)
        except OSError:
            shutil.copy(src, blobs / src.name)


@pytest.fixture
def chain_process() -> Iterator[subprocess.Popen[str]]:
    """A running chain.O2.nofp, blocked in pause() five calls deep."""
    _need_gcore()
    subprocess.run([str(REPO_ROOT / "testsources" / "build.sh"), str(BUILD)], check=True,
                   capture_output=True)
    proc = subprocess.Popen([str(BUILD / "chain.O2.nofp")], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().startswith("ready")
        yield proc
    finally:
        proc.kill()
        proc.wait()


# ------------------------------------------------------------- -no-module-bundling


@pytest.mark.gdb
def test_no_module_bundling_from_pid(tmp_path: Path, chain_process: subprocess.Popen[str],
                                     capsys: pytest.CaptureFixture[str]) -> None:
    pid = chain_process.pid
    filter_before = Path(f"/proc/{pid}/coredump_filter").read_text()
    testdata = tmp_path / "testdata"
    assert main(["new", "-pid", str(pid), "-name", "nb", "-no-module-bundling",
                 "-testdata", str(testdata), *_gdb_flags()]) == 0
    assert "modules read from the core" in capsys.readouterr().out
    assert Path(f"/proc/{pid}/coredump_filter").read_text() == filter_before  # restored

    path = testdata / "amd64" / "nb.json"
    doc = json.loads(path.read_text())
    assert doc["modules"] == [] and doc[NO_MODULE_BUNDLING] is True
    case = load_case(path)
    assert [p.name for p in (testdata / "blobs").iterdir()] == [f"{case.coredump_ref}.zst"]
    result = replay_case(path)
    assert result.ok and result.frame_count >= 8

    # The same core with the modules bundled from disk unwinds to the same frames.
    core = lifecycle.export_blob(store_for(case), case.coredump_ref, tmp_path / "core")
    _seed_blobs(testdata, [m.ref for m in load_case(CASE).modules])  # this machine's libc
    assert main(["new", "-core", str(core), "-name", "bundled", "-testdata", str(testdata),
                 "-no-gdb-check"]) == 0
    bundled = load_case(testdata / "amd64" / "bundled.json")
    assert len(bundled.modules) == 3 and not bundled.no_module_bundling
    assert [t.frames for t in bundled.threads] == [t.frames for t in case.threads]


def test_no_module_bundling_needs_file_pages(tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    case = load_case(CASE)  # a default gcore: no code pages in the core
    core = lifecycle.export_blob(store_for(case), case.coredump_ref, tmp_path / "core")
    assert main(["new", "-core", str(core), "-name", "x", "-no-module-bundling",
                 "-testdata", str(tmp_path / "testdata"), "-no-gdb-check"]) == 2
    err = capsys.readouterr().err
    assert "echo 0x3f > /proc/PID/coredump_filter" in err
    assert not (tmp_path / "testdata" / "amd64" / "x.json").exists()


# ------------------------------------------------------------------------- -sysroot


def test_resolve_under(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "usr" / "lib").mkdir(parents=True)
    (root / "usr" / "lib" / "libz.so.1.3").write_bytes(b"z")
    (root / "lib").symlink_to("usr/lib")  # merged /usr, relative
    (root / "usr" / "lib" / "libz.so.1").symlink_to("/usr/lib/libz.so.1.3")  # absolute
    (root / "loop").symlink_to("/loop")
    real = str(root / "usr" / "lib" / "libz.so.1.3")
    assert resolve_under(str(root), "/lib/libz.so.1") == real
    assert resolve_under(str(root), "/usr/lib/../lib/./libz.so.1.3") == real
    assert resolve_under(str(root), "/../../lib/libz.so.1") == real  # never escapes
    assert resolve_under(str(root), "/loop") is None
    assert resolve_under(str(root), "/usr/lib") is None  # a directory
    assert resolve_under(str(root), "/missing") is None


def _sysroot_for(case_path: Path, root: Path) -> dict[str, str]:
    """Lay out a case's bundled modules under root as another machine would have them:
    libc behind an absolute symlink that, followed outside the sysroot, leads nowhere."""
    case = load_case(case_path)
    store = store_for(case)
    refs = {}
    for m in case.modules:
        dest = root / m.local_path.lstrip("/")
        dest.parent.mkdir(parents=True, exist_ok=True)
        if m.local_path.endswith("/libc.so.6"):
            hidden = root / "opt" / "glibc-2.36" / "libc.so.6"
            hidden.parent.mkdir(parents=True)
            lifecycle.export_blob(store, m.ref, hidden)
            dest.symlink_to("/opt/glibc-2.36/libc.so.6")
        else:
            lifecycle.export_blob(store, m.ref, dest)
        refs[m.local_path] = m.ref
    assert not Path("/opt/glibc-2.36/libc.so.6").exists()
    return refs


def test_new_with_sysroot(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    case = load_case(CASE)
    refs = _sysroot_for(CASE, tmp_path / "sysroot")
    core = lifecycle.export_blob(store_for(case), case.coredump_ref, tmp_path / "core")
    testdata = tmp_path / "testdata"
    _seed_blobs(testdata, lifecycle.case_blobs(case))
    assert main(["new", "-core", str(core), "-name", "s", "-sysroot", str(tmp_path / "sysroot"),
                 "-testdata", str(testdata), *_gdb_flags()]) == 0
    new = load_case(testdata / "amd64" / "s.json")
    # Exactly the sysroot's files were bundled (the executable is also on this machine,
    # possibly rebuilt: a different file, which must not be picked).
    assert {m.local_path: m.ref for m in new.modules} == refs
    assert [t.frames for t in new.threads] == [t.frames for t in case.threads]
    assert replay_case(testdata / "amd64" / "s.json").ok


def test_sysroot_missing_module_warns(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    case = load_case(CASE)
    _sysroot_for(CASE, tmp_path / "sysroot")
    exe = next(m.local_path for m in case.modules if m.local_path.endswith("chain.O2.nofp"))
    (tmp_path / "sysroot" / exe.lstrip("/")).unlink()
    core = lifecycle.export_blob(store_for(case), case.coredump_ref, tmp_path / "core")
    assert main(["analyze", "-core", str(core), "-sysroot", str(tmp_path / "sysroot")]) == 0
    captured = capsys.readouterr()
    assert f"warning: {exe} is not available at {tmp_path / 'sysroot'}" in captured.err
    frames = captured.out.splitlines()
    assert frames[1].split()[1] == "libc.so.6+0xd3dd0"  # libc, from the sysroot, still unwinds
    assert frames[2].endswith("<unwinding aborted due to error native_pc_not_mapped>")


# ---------------------------------------------------------------------- -pid errors


def test_pid_without_gcore(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                           capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no gcore anywhere
    assert main(["new", "-pid", str(os.getpid()), "-name", "x",
                 "-testdata", str(tmp_path)]) == 2
    assert "gcore not found: install gdb (apt-get install gdb)" in capsys.readouterr().err


def test_pid_of_exited_process(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _need_gcore()
    proc = subprocess.Popen(["true"])
    try:
        for _ in range(200):  # not reaped yet: a zombie
            if Path(f"/proc/{proc.pid}/stat").read_text().split(") ")[1].startswith("Z"):
                break
            os.sched_yield()
        assert main(["new", "-pid", str(proc.pid), "-name", "x",
                     "-testdata", str(tmp_path)]) == 2
        assert "has exited" in capsys.readouterr().err
    finally:
        proc.wait()
    assert main(["new", "-pid", str(proc.pid), "-name", "x", "-testdata", str(tmp_path)]) == 2
    assert "does not exist (has it exited?)" in capsys.readouterr().err


TRACED_CHILD = """
import ctypes, sys, time
libc = ctypes.CDLL(None, use_errno=True)
if libc.ptrace(0, 0, None, None) != 0:  # PTRACE_TRACEME: the parent becomes the tracer
    sys.exit("ptrace(PTRACE_TRACEME) failed")
print("ready", flush=True)
time.sleep(60)
"""


@pytest.mark.gdb
def test_pid_already_traced(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """ptrace refuses a second tracer: the error names the tracer and what to do."""
    _need_gcore()
    proc = subprocess.Popen([sys.executable, "-c", TRACED_CHILD], stdout=subprocess.PIPE,
                            text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().startswith("ready")
        assert main(["new", "-pid", str(proc.pid), "-name", "x",
                     "-testdata", str(tmp_path)]) == 2
        err = capsys.readouterr().err
        assert f"already being traced by pid {os.getpid()}" in err and "detach" in err
    finally:
        proc.kill()
        proc.wait()


def test_ptrace_refusals_name_the_fix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The checks for non-root users and Yama, on real /proc entries (this machine runs the
    suite as root without Yama, so the caller's uid and the Yama setting are substituted)."""
    from harness.record import gcore

    monkeypatch.setattr(gcore.os, "geteuid", lambda: 65534)
    init = gcore.attach_problem(1)
    assert init is not None and "belongs to uid 0" in init and "sudo" in init

    scope = tmp_path / "ptrace_scope"
    monkeypatch.setattr(gcore, "YAMA_SCOPE", scope)
    scope.write_text("3\n")
    disabled = gcore.attach_problem(os.getpid())
    assert disabled is not None and "ptrace_scope=3" in disabled and "new -core" in disabled


# ------------------------------------------------- causes, not symptoms (issue 16)


@pytest.mark.gdb
def test_new_names_the_file_the_sysroot_lacks_and_keeps_the_core(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    if gdb_available() is None:
        pytest.skip("gdb with Python support is not installed (apt-get install gdb)")
    case = load_case(CASE)
    _sysroot_for(CASE, tmp_path / "sysroot")
    libc = next(m.local_path for m in case.modules if m.local_path.endswith("libc.so.6"))
    (tmp_path / "sysroot" / libc.lstrip("/")).unlink()
    core = lifecycle.export_blob(store_for(case), case.coredump_ref, tmp_path / "core")
    assert main(["new", "-core", str(core), "-name", "x", "-sysroot",
                 str(tmp_path / "sysroot"), "-testdata", str(tmp_path / "testdata")]) == 2
    err = capsys.readouterr().err
    assert f"the core maps files that the sysroot lacks, so frames in them cannot be " \
           f"unwound: {libc}" in err
    # What to run next, with the same sysroot.
    assert f"coredump analyze -core {core} -sysroot {tmp_path / 'sysroot'}" in err
    assert not (tmp_path / "testdata" / "amd64" / "x.json").exists()


def test_a_wrong_sysroot_is_an_error_not_a_page_of_warnings(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    case = load_case(CASE)
    core = lifecycle.export_blob(store_for(case), case.coredump_ref, tmp_path / "core")
    (tmp_path / "empty").mkdir()
    assert main(["analyze", "-core", str(core), "-sysroot", str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err
    assert "none of the" in err and "is it the right -sysroot?" in err
    assert main(["analyze", "-core", str(core), "-sysroot", str(tmp_path / "nonexistent")]) == 2
    assert "is not a directory" in capsys.readouterr().err


def test_missing_files_are_reported_once(tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    case = load_case(CASE)
    _sysroot_for(CASE, tmp_path / "sysroot")
    libc = next(m.local_path for m in case.modules if m.local_path.endswith("libc.so.6"))
    (tmp_path / "sysroot" / libc.lstrip("/")).unlink()
    core = lifecycle.export_blob(store_for(case), case.coredump_ref, tmp_path / "core")
    assert main(["analyze", "-core", str(core), "-sysroot", str(tmp_path / "sysroot")]) == 0
    err = capsys.readouterr().err
    assert err.count(f"warning: {libc} is not available") == 1


def test_ptrace_advice_fits_the_machine(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from harness.record import gcore

    monkeypatch.setattr(gcore, "YAMA_SCOPE", tmp_path / "no-yama")
    monkeypatch.setattr(gcore.os, "geteuid", lambda: 0)
    root_no_yama = gcore.refusal_advice()
    assert "sudo" not in root_no_yama and "yama" not in root_no_yama
    assert "CAP_SYS_PTRACE" in root_no_yama
    monkeypatch.setattr(gcore.os, "geteuid", lambda: 1000)
    assert gcore.refusal_advice() == "run as root (sudo)"
    (tmp_path / "yama").write_text("1\n")
    monkeypatch.setattr(gcore, "YAMA_SCOPE", tmp_path / "yama")
    assert "ptrace_scope=0` (it is 1)" in gcore.refusal_advice()


@pytest.mark.gdb
def test_a_failed_recording_from_pid_keeps_its_core(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, chain_process: subprocess.Popen[str],
        capsys: pytest.CaptureFixture[str]) -> None:
    from harness.record import new

    monkeypatch.setenv("COREDUMP_CACHE", str(tmp_path / "cache"))

    def disagree(*_: object, **__: object) -> object:
        raise HarnessError("the unwinder disagrees with gdb (simulated)")

    monkeypatch.setattr(new, "_check_replay", disagree)
    assert main(["new", "-pid", str(chain_process.pid), "-name", "kept",
                 "-testdata", str(tmp_path / "testdata"), *_gdb_flags()]) == 2
    err = capsys.readouterr().err
    kept = tmp_path / "cache" / "failed" / f"kept.{chain_process.pid}.core"
    assert kept.is_file() and f"the core is kept at {kept}" in err
    assert f".venv/bin/coredump analyze -core {kept}\n" in err
    assert main(["analyze", "-core", str(kept)]) == 0
    assert "libc.so.6+0xd3dd0" in capsys.readouterr().out
