"""End-to-end tests of harness.record.gdb_oracle on real processes.

Each test builds a program from testsources/, lets it reach its frozen state, snapshots it
with gcore, kills it and asks gdb_backtraces for the stacks.  The sysroot is built from
/proc/<pid>/maps, which stands in for the core's NT_FILE list: the mapped (resolved) file
names, so the soname and merged-/usr aliases of make_sysroot are exercised too.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.programs import ready_line

REPO = Path(__file__).resolve().parent.parent
# The package is not necessarily installed into the venv; import it from the tree.
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from harness.record.gdb_oracle import (  # noqa: E402
    GdbThread,
    gdb_available,
    gdb_backtraces,
    make_sysroot,
)

BUILD_SH = REPO / "testsources" / "build.sh"
READY_TIMEOUT = 10.0


def _missing_tool() -> str | None:
    if gdb_available() is None:
        return "gdb with Python support not found"
    for tool in ("gcore", "gcc", "g++"):
        if shutil.which(tool) is None:
            return f"{tool} not found"
    return None


pytestmark = [pytest.mark.gdb,
              pytest.mark.skipif(_missing_tool() is not None, reason=str(_missing_tool()))]


@pytest.fixture(scope="module")
def bindir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """All test programs, built once per module by the real build script."""
    out = tmp_path_factory.mktemp("testsources")
    subprocess.run(["bash", str(BUILD_SH), str(out)], check=True, capture_output=True, text=True)
    return out


@dataclass
class Snapshot:
    pid: int
    core: str
    executable: str
    sysroot: str


def _wait_ready(proc: subprocess.Popen[bytes]) -> None:
    """Wait for the program's single 'ready <pid>' line (or fail on timeout)."""
    assert ready_line(proc, READY_TIMEOUT) == f"ready {proc.pid}".encode()


def _mapped_files(pid: int) -> dict[str, str]:
    """File-backed mappings of pid: original path -> local path (the same file here)."""
    files: dict[str, str] = {}
    with open(f"/proc/{pid}/maps") as fh:
        for line in fh:
            parts = line.split(None, 5)
            if len(parts) == 6 and parts[5].startswith("/"):
                path = parts[5].rstrip("\n")
                if os.path.isfile(path):
                    files[path] = path
    return files


Snapshotter = Callable[[str], Snapshot]


@pytest.fixture
def snapshot(bindir: Path, tmp_path: Path) -> Iterator[Snapshotter]:
    """snapshot(name) -> Snapshot: run bindir/name, gcore it once ready, then kill it."""
    procs: list[subprocess.Popen[bytes]] = []

    def take(name: str) -> Snapshot:
        exe = str(bindir / name)
        proc = subprocess.Popen([exe], stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
        procs.append(proc)
        _wait_ready(proc)
        files = _mapped_files(proc.pid)
        prefix = str(tmp_path / name)
        subprocess.run(
            ["gcore", "-o", prefix, str(proc.pid)], check=True, capture_output=True, timeout=60
        )
        proc.kill()
        proc.wait()
        sysroot = make_sysroot(str(tmp_path / f"sysroot-{name}"), files)
        return Snapshot(proc.pid, f"{prefix}.{proc.pid}", exe, sysroot)

    yield take
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


def _describe(threads: list[GdbThread]) -> str:
    """A readable dump for assertion messages."""
    lines = []
    for t in threads:
        lines.append(f"lwp {t.lwp} error={t.error}")
        lines += [f"  {f.pc:#x} {f.kind} caller={f.caller} {f.function}" for f in t.frames]
    return "\n".join(lines)


def _backtraces(snap: Snapshot) -> list[GdbThread]:
    return gdb_backtraces(snap.core, snap.executable, snap.sysroot, timeout=60)


def test_chain_O0_fp(snapshot: Snapshotter) -> None:
    snap = snapshot("chain.O0.fp")
    threads = _backtraces(snap)
    dump = _describe(threads)
    assert [t.lwp for t in threads] == [snap.pid], dump
    (thread,) = threads
    assert thread.error is None, dump
    names = [f.function for f in thread.frames]
    # d, c, b, a, main appear in this order (libc frames may sit between the ends).
    positions = [names.index(fn) for fn in ("d", "c", "b", "a", "main")]
    assert positions == sorted(positions) and positions[0] > 0, dump
    assert names[-1] == "_start", dump
    assert [f.caller for f in thread.frames] == [False] + [True] * (len(names) - 1), dump
    assert all(f.kind == "normal" for f in thread.frames), dump


def test_threads(snapshot: Snapshotter) -> None:
    snap = snapshot("threads")
    threads = _backtraces(snap)
    dump = _describe(threads)
    lwps = [t.lwp for t in threads]
    assert len(threads) >= 5 and len(set(lwps)) == len(lwps), dump
    assert snap.pid in lwps, dump
    by_function = {f.function for t in threads for f in t.frames}
    for fn in ("main", "cond_thread", "sleep_thread", "read_thread", "spin_inner"):
        assert fn in by_function, dump
    assert all(t.error is None for t in threads), dump


def test_sigframe(snapshot: Snapshotter) -> None:
    snap = snapshot("sigframe")
    (thread,) = _backtraces(snap)
    dump = _describe([thread])
    kinds = [f.kind for f in thread.frames]
    assert "sigtramp" in kinds, dump
    i = kinds.index("sigtramp")
    assert i + 1 < len(thread.frames) and thread.frames[i + 1].caller is False, dump
    names = [f.function for f in thread.frames]
    assert names.index("handler_work") < i < names.index("outer"), dump


def test_make_sysroot_aliases(tmp_path: Path) -> None:
    """Merged-/usr and soname aliases, and that a second call changes nothing."""
    libc = "/usr/lib/x86_64-linux-gnu/libc.so.6"
    if not os.path.isfile(libc):
        pytest.skip(f"{libc} not present")
    lib = tmp_path / "libfoo.so.1.2.3"
    shutil.copy(libc, lib)  # any ELF with DT_SONAME will do; libc's is libc.so.6
    files = {"/usr/lib/x86_64-linux-gnu/libfoo.so.1.2.3": str(lib)}
    dest = tmp_path / "root"
    for _ in range(2):
        assert make_sysroot(str(dest), files) == str(dest)
        assert (dest / "lib").is_symlink() and os.readlink(dest / "lib") == "usr/lib"
        assert (dest / "lib/x86_64-linux-gnu/libfoo.so.1.2.3").resolve() == lib.resolve()
        assert (dest / "usr/lib/x86_64-linux-gnu/libc.so.6").resolve() == lib.resolve()
        assert not (dest / "bin").exists()
