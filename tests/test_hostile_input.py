"""Hostile input (issue 20): nothing outside its place is touched, bad input is a clear
one-line error (HarnessError), nothing hangs, and nothing wrong is used silently.

Each test is the reproducer of one finding; the inputs are real cases and cores with
one thing made hostile (tests/hostile.py), or small files a parser must refuse.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import zstandard

from harness.cases import store as store_module
from harness.cases.case_file import load_case
from harness.cases.lifecycle import export_blob, local_garbage
from harness.cases.store import BlobStore, store_for
from harness.confine import place_under, resolve_under
from harness.core.discovery import discover_modules
from harness.core.elfcore import CoreFile
from harness.core.module import Module
from harness.errors import (
    CaseError,
    CoreError,
    HarnessError,
    ModuleError,
    StoreError,
    UnsafePathError,
)
from harness.paths import MAX_BLOB_ENV, REPO_ROOT
from harness.record.gdb_oracle import make_sysroot
from tests.casefiles import bundled_case
from tests.hostile import with_file_paths, with_thread_copies

CASE = "chain.O2.nofp"
COREDUMP = [sys.executable, "-m", "harness.cli"]


def _case_files() -> tuple[Path, dict[str, Path]]:
    """The bundled case's core and {original path: local file} of its modules."""
    case = bundled_case(CASE)
    store = store_for(case)
    return (store.local_path(case.coredump_ref),
            {m.local_path: store.local_path(m.ref) for m in case.modules})


def _sysroot(root: Path, files: dict[str, Path]) -> Path:
    for original, local in files.items():
        dest = root / original.lstrip("/")
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(local, dest)
    return root


def _victim(tmp_path: Path) -> Path:
    victim = tmp_path / "outside" / "victim"
    victim.parent.mkdir()
    victim.write_text("precious\n")
    return victim


def _climbing(victim: Path) -> str:
    return "/.." * 12 + str(victim)


# --------------------------------------------------------------- 1. path traversal


def test_a_case_whose_local_path_climbs_out_is_refused(tmp_path: Path) -> None:
    victim = _victim(tmp_path)
    doc = bundled_case(CASE).to_json()
    doc["modules"][1]["local-path"] = _climbing(victim)
    path = tmp_path / "evil.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(CaseError, match=r"modules\[1\]\.local-path climbs above /"):
        load_case(path)
    assert victim.read_text() == "precious\n"


def test_the_gdb_sysroot_never_writes_outside_itself(tmp_path: Path) -> None:
    """make_sysroot (verify, gdb -case, new's gdb check) replaced the file a hostile
    name resolved to with a link and left library links beside it."""
    victim = _victim(tmp_path)
    _core, files = _case_files()
    libc = next(p for name, p in files.items() if name.endswith("libc.so.6"))
    with pytest.raises(UnsafePathError, match="climbs above"):
        make_sysroot(str(tmp_path / "root"), {_climbing(victim): str(libc)})
    assert victim.read_text() == "precious\n"
    assert sorted(p.name for p in victim.parent.iterdir()) == ["victim"]


def test_place_under_follows_no_link(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "usr").mkdir(parents=True)
    (root / "lib").symlink_to(tmp_path)  # a link between root and the file
    with pytest.raises(UnsafePathError, match="symbolic link"):
        place_under(root, "/lib/libc.so.6")
    assert place_under(root, "/usr/./lib/../lib/x.so") == root / "usr/lib/x.so"


@pytest.mark.gdb
def test_new_on_a_core_naming_a_file_outside_refuses_and_deletes_nothing(
        tmp_path: Path) -> None:
    """`coredump new -core` on a core whose NT_FILE climbs out of the sysroot deleted
    the file it named (the gdb cross-check's sysroot) and died with a traceback."""
    if shutil.which("gdb") is None:
        pytest.skip("gdb is not installed")
    victim = _victim(tmp_path)
    core, files = _case_files()
    libc = next(name for name in files if name.endswith("libc.so.6"))
    sysroot = _sysroot(tmp_path / "sysroot", files)
    # The name, folded inside the sysroot as a chroot would, is a real libc there.
    inside = sysroot / str(victim).lstrip("/")
    inside.parent.mkdir(parents=True)
    shutil.copyfile(files[libc], inside)
    evil = tmp_path / "evil.core"
    evil.write_bytes(with_file_paths(core.read_bytes(), lambda p: _climbing(victim).encode()
                                     if p == libc.encode() else p))
    run = subprocess.run([*COREDUMP, "new", "-core", str(evil), "-name", "evil",
                          "-sysroot", str(sysroot), "-testdata", str(tmp_path / "td")],
                         capture_output=True, text=True, cwd=REPO_ROOT, timeout=300)
    assert run.returncode == 2 and "Traceback" not in run.stderr, run.stderr
    assert "climbs above" in run.stderr
    assert victim.read_text() == "precious\n"
    assert sorted(p.name for p in victim.parent.iterdir()) == ["victim"]


def test_analyze_reads_no_file_outside_the_sysroot(tmp_path: Path) -> None:
    victim = tmp_path / "outside" / "libc.so.6"
    core, files = _case_files()
    libc = next(name for name in files if name.endswith("libc.so.6"))
    victim.parent.mkdir()
    shutil.copyfile(files[libc], victim)
    sysroot = _sysroot(tmp_path / "sysroot", {k: v for k, v in files.items() if k != libc})
    (sysroot / "escape").symlink_to(victim.parent)            # absolute link out
    (sysroot / "up").symlink_to("../../../../../../../../..")  # relative link out
    names = {b"/escape/libc.so.6", _climbing(victim).encode(),
             ("/up" + str(victim)).encode()}
    for name in names:
        evil = tmp_path / "evil.core"
        evil.write_bytes(with_file_paths(core.read_bytes(),
                                         lambda p, n=name: n if p == libc.encode() else p))
        with CoreFile(evil) as parsed:
            found = discover_modules(parsed, [str(sysroot)])
        assert all(Path(local).resolve().is_relative_to(sysroot.resolve())
                   for local, _ in found.values()), (name, found)
        assert name.decode() not in found


# ------------------------------------------------------------------- 2. sysroot links


def test_links_in_a_sysroot_resolve_inside_it_only(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "lib").mkdir(parents=True)
    (root / "lib/passwd").symlink_to("/etc/passwd")              # absolute, to a host file
    (root / "lib/host-libc").symlink_to("../../../../../../usr/lib/x86_64-linux-gnu/libc.so.6")
    (root / "etc").mkdir()
    assert resolve_under(root, "/lib/passwd") is None  # root/etc/passwd does not exist
    assert resolve_under(root, "/lib/host-libc") is None
    (root / "etc/passwd").write_text("the sysroot's\n")
    assert resolve_under(root, "/lib/passwd") == str(root / "etc/passwd")


# ------------------------------------------------------------------- 3. export -out


def test_export_refuses_an_out_that_is_a_link(tmp_path: Path) -> None:
    case = bundled_case(CASE)
    store = store_for(case)
    ref = case.modules[0].ref
    target_dir = tmp_path / "elsewhere"
    target_dir.mkdir()
    (tmp_path / "dirlink").symlink_to(target_dir)
    (tmp_path / "file").write_text("keep\n")
    (tmp_path / "filelink").symlink_to(tmp_path / "file")
    for out in ("dirlink", "filelink"):
        with pytest.raises(HarnessError, match="symbolic link"):
            export_blob(store, ref, tmp_path / out)
    assert list(target_dir.iterdir()) == [] and (tmp_path / "file").read_text() == "keep\n"
    written = export_blob(store, ref, tmp_path / "plain")
    assert written.stat().st_size == store.local_path(ref).stat().st_size


def test_export_under_an_existing_file_is_a_clear_error(tmp_path: Path) -> None:
    case = bundled_case(CASE)
    (tmp_path / "file").write_text("x")
    with pytest.raises(HarnessError, match="cannot write"):
        export_blob(store_for(case), case.modules[0].ref, tmp_path / "file" / "sub" / "out")


# --------------------------------------------------------------- 4. case files

REF = "ab" * 32


@pytest.mark.parametrize("raw, message", [
    (b'{"coredump-ref": "\xff"}', "not UTF-8 text: byte 18"),
    ('{"threads": []}'.encode("utf-16"), "looks like UTF-16"),
    (b"[" * 1000 + b"]" * 1000, "nested too deeply"),
    (b'{"x": ' + b"9" * 5000 + b"}", "integer of 5000 digits"),
    (f'{{"coredump-ref": "{REF}", "threads": [], "fault-addresses": null}}'.encode(),
     '"fault-addresses" must be a list'),
    (f'{{"coredump-ref": "{REF}", "threads": [], "fault-addresses": [Infinity]}}'.encode(),
     "Infinity is not JSON"),
    (f'{{"coredump-ref": "{REF}", "threads": [], "fault-addresses": [1e999]}}'.encode(),
     r"fault-addresses\[0\]: fault address inf is not a number"),
    (f'{{"coredump-ref": "{REF}", "threads": [], "fault-addresses": ["0x1{"0" * 16}"]}}'
     .encode(), r"fault-addresses\[0\] must be in"),
    (f'{{"coredump-ref": "{REF}", "threads": [{{"lwp": 1, "frames": []}}, '
     '{"lwp": 1, "frames": []}]}'.encode(), r"threads\[1\]\.lwp 1 is the lwp of threads\[0\]"),
    (f'{{"coredump-ref": "{REF}", "threads": [{{"lwp": 1, "frames": ["{"a" * 5000}"]}}]}}'
     .encode(), r"threads\[0\]\.frames\[0\].*more than the limit of 4096"),
    (f'{{"coredump-ref": "{REF}", "threads": [], "modules": [{{"ref": "{REF}", '
     '"local-path": "/a\\u0000b"}]}'.encode(), r"modules\[0\]\.local-path contains a NUL"),
    (f'{{"coredump-ref": "{REF}", "threads": [], "x": {"[" * 40 + "]" * 40}}}'.encode(),
     '"x" is nested more than 32 levels'),
])
def test_hostile_case_files_name_the_wrong_field(tmp_path: Path, raw: bytes,
                                                 message: str) -> None:
    path = tmp_path / "c.json"
    path.write_bytes(raw)
    with pytest.raises(CaseError, match=message):
        load_case(path)


def test_a_case_path_that_is_not_a_regular_file_is_refused(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for path, kind in ((fifo, "a FIFO"), (Path("/dev/zero"), "a character device")):
        with pytest.raises(CaseError, match=f"not a regular file \\({kind}\\)"):
            load_case(path)


# ------------------------------------------------------------- 5. blobs and store


def test_a_directory_where_a_blob_should_be_is_a_clear_error(tmp_path: Path) -> None:
    blob_id = "cd" * 32
    (tmp_path / "blobs" / f"{blob_id}.zst").mkdir(parents=True)
    with pytest.raises(StoreError, match="is a directory"):
        BlobStore(tmp_path / "blobs", tmp_path / "cache").local_path(blob_id)
    (tmp_path / "cache" / blob_id).mkdir(parents=True)
    with pytest.raises(StoreError, match="is a directory; remove it"):
        BlobStore(tmp_path / "blobs", tmp_path / "cache").local_path(blob_id)


def test_a_module_ref_that_is_a_core_is_refused() -> None:
    core, _files = _case_files()
    with pytest.raises(ModuleError, match="is a core file, not an executable"):
        Module("/usr/lib/libc.so.6", core)


# ------------------------------------------------------------- 7. -core kinds


def test_a_core_that_is_a_fifo_is_refused_without_hanging(tmp_path: Path) -> None:
    fifo = tmp_path / "core"
    os.mkfifo(fifo)
    run = subprocess.run([*COREDUMP, "analyze", "-core", str(fifo)], capture_output=True,
                         text=True, cwd=REPO_ROOT, timeout=60)
    assert run.returncode == 2 and "not a regular file (a FIFO)" in run.stderr, run.stderr
    with pytest.raises(CoreError, match="a character device"):
        CoreFile("/dev/zero")


# ------------------------------------------------------------- 8. the blob cache


def _one_blob(tmp_path: Path, content: bytes) -> tuple[BlobStore, str]:
    src = tmp_path / "content"
    src.write_bytes(content)
    store = BlobStore(tmp_path / "blobs", tmp_path / "cache", fetcher=lambda _i, _d: False)
    return store, store.put_file(src)


@pytest.mark.parametrize("damage", ["swapped", "flipped", "truncated", "linked"])
def test_a_bad_cache_copy_is_rebuilt_not_used(tmp_path: Path, damage: str) -> None:
    content = os.urandom(1 << 16)
    store, blob_id = _one_blob(tmp_path, content)
    copy = store.local_path(blob_id)
    os.chmod(copy, 0o644)
    if damage == "swapped":  # another file put in its place (a new inode)
        other = tmp_path / "other"
        other.write_bytes(os.urandom(len(content)))
        os.replace(other, copy)
    elif damage == "flipped":  # edited in place, same size and inode
        with open(copy, "r+b") as f:
            f.seek(100)
            f.write(bytes([content[100] ^ 1]))
    elif damage == "truncated":
        os.truncate(copy, 10)
    else:
        copy.unlink()
        copy.symlink_to(tmp_path / "content")
    store_module._VERIFIED.clear()  # as in a new process
    assert store.local_path(blob_id).read_bytes() == content
    # a good copy is trusted by its stamp in later processes: not hashed again
    store_module._VERIFIED.clear()
    hashed = []
    real = store_module.sha256_file
    store_module.sha256_file = lambda p: hashed.append(p) or real(p)  # type: ignore
    try:
        assert store.local_path(blob_id).read_bytes() == content
    finally:
        store_module.sha256_file = real  # type: ignore
    assert hashed == []
    assert not store.local_path(blob_id).is_symlink()


# ------------------------------------------------------------- 9. zstd bombs


def test_a_zstd_bomb_is_stopped_at_the_limit(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    blob_id = "ee" * 32
    blobs = tmp_path / "blobs"
    blobs.mkdir()
    zeros = bytes(8 << 20)
    (blobs / f"{blob_id}.zst").write_bytes(zstandard.ZstdCompressor().compress(zeros))
    monkeypatch.setenv(MAX_BLOB_ENV, str(1 << 20))
    store = BlobStore(blobs, tmp_path / "cache", fetcher=lambda _i, _d: False)
    with pytest.raises(StoreError, match="declares 8388608 bytes of content, more than"):
        store.local_path(blob_id)
    # A frame that does not declare its size is cut off while streaming.
    undeclared = zstandard.ZstdCompressor(write_content_size=False).compress(zeros)
    (blobs / f"{blob_id}.zst").write_bytes(undeclared)
    with pytest.raises(StoreError, match="decompresses to more than the 1048576 bytes"):
        store.local_path(blob_id)
    assert not any((tmp_path / "cache").iterdir())


# ------------------------------------------------------------- 10. dead writers


def test_clean_removes_temp_files_of_dead_writers_at_once(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "blobs", tmp_path / "cache")
    store.cache.mkdir()
    gone_pid = _exited_pid()
    orphan = store.cache / f".{'ab' * 32}.{gone_pid}.x1y2z3.tmp"
    mine = store.cache / f".{'ab' * 32}.{os.getpid()}.a1b2c3.tmp"
    live = store.cache / f".{'ab' * 32}.1.q1w2e3.tmp"
    for path in (orphan, mine, live):
        path.write_bytes(b"partial")
    assert [g.path for g in local_garbage(store, set())] == [orphan]


def _exited_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


# ------------------------------------------------------------- 6. undecodable names


def test_undecodable_module_names_are_printed_escaped(tmp_path: Path) -> None:
    """A core naming lib\\xffc.so.6 (bytes that are not UTF-8) died in print() with a
    UnicodeEncodeError under a strict UTF-8 stdout."""
    core, files = _case_files()
    root = tmp_path / "sysroot"
    for original, local in files.items():
        dest = os.path.join(os.fsencode(root), original.replace("libc.so.6", "LIBC").encode()
                            .lstrip(b"/")).replace(b"LIBC", b"lib\xffc.so.6")
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        shutil.copyfile(local, dest)
    evil = tmp_path / "core"
    evil.write_bytes(with_file_paths(core.read_bytes(),
                                     lambda p: p.replace(b"libc.so.6", b"lib\xffc.so.6")))
    run = subprocess.run([*COREDUMP, "analyze", "-core", str(evil), "-sysroot", str(root)],
                         capture_output=True, cwd=REPO_ROOT, timeout=120,
                         env={**os.environ, "PYTHONIOENCODING": "utf-8"})
    assert run.returncode == 0, run.stderr.decode(errors="replace")
    assert b"lib\\udcffc.so.6+0x" in run.stdout


# ------------------------------------------------------------- 14. bounded loops


def test_counts_a_core_controls_are_bounded_and_the_bound_is_named(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from harness.core import elfcore
    core, _files = _case_files()
    path = tmp_path / "core"
    path.write_bytes(with_thread_copies(core.read_bytes(), 3))
    with CoreFile(path) as parsed:
        assert len(parsed.threads) == 4  # the copies are real threads to the parser
    for limit, value, source, message in (
            ("MAX_THREADS", 3, path, "more than 3 threads"),
            ("MAX_NOTES", 5, core, "more than 5 notes"),
            ("MAX_FILE_MAPPINGS", 2, core, "NT_FILE lists .* mappings, more than the limit of 2"),
            ("MAX_PROGRAM_HEADERS", 2, core, "program headers, more than the limit of 2")):
        with monkeypatch.context() as patch:
            patch.setattr(elfcore, limit, value)
            with pytest.raises(CoreError, match=message):
                CoreFile(source)


def test_the_link_map_walk_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    from harness.core import linkmap
    from harness.replay import open_case
    case = bundled_case("threads", "arm64")
    monkeypatch.setattr(linkmap, "MAX_LINK_MAP_ENTRIES", 2)
    with pytest.raises(CoreError, match="link_map has more than 2 entries"):
        open_case(case, store_for(case)).close()


def test_the_cfi_walk_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    from harness import unwind_data
    from harness.errors import UnwindDataError
    from harness.unwind_data import cfi, eh_frame
    _core, files = _case_files()
    exe = next(p for name, p in files.items() if name.endswith(CASE))
    # the direct decoder hands an over-long section to pyelftools', which names the limit
    monkeypatch.setattr(eh_frame, "MAX_CFI_ENTRIES", 4)
    monkeypatch.setattr(cfi, "MAX_CFI_ENTRIES", 4)
    with pytest.raises(UnwindDataError, match="more than 4 CFI entries"):
        unwind_data.extract_unwind_data(exe)


def test_a_core_name_that_climbs_above_root_is_left_out_with_a_warning(
        tmp_path: Path) -> None:
    """`new -no-gdb-check` bundled it under that name and wrote a case that no
    command could load (its local-path is refused)."""
    core, files = _case_files()
    libc = next(name for name in files if name.endswith("libc.so.6"))
    sysroot = _sysroot(tmp_path / "sysroot", files)
    climbing = "/../.." + libc  # folded inside the sysroot, it is the real libc there
    evil = tmp_path / "evil.core"
    evil.write_bytes(with_file_paths(core.read_bytes(), lambda p: climbing.encode()
                                     if p == libc.encode() else p))
    said: list[str] = []
    with CoreFile(evil) as parsed:
        found = discover_modules(parsed, [str(sysroot)], progress=said.append)
    assert climbing not in found and len(found) == len(files) - 1
    assert any("climbs above /" in line and "left out" in line for line in said)
