"""`coredump upload`, `export-module` and `clean` on copies of the real bundled
cases, with the remote a real S3 server on 127.0.0.1 (or a directory)."""

from __future__ import annotations

import hashlib
import os
import shutil
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from harness.cases import lifecycle
from harness.cases.case_file import load_case
from harness.cases.store import BlobStore
from harness.cli import main
from harness.errors import HarnessError
from harness.paths import REPO_ROOT
from harness.replay import replay_case
from tests.s3server import S3Remote, s3_endpoint, s3_remote  # noqa: F401 (fixtures)

TESTDATA = REPO_ROOT / "testdata"
CASE = TESTDATA / "amd64" / "chain.O0.fp.json"


def _testdata_copy(tmp_path: Path, with_blobs: bool = True) -> Path:
    """A private testdata directory: cases copied, blobs copied (clean deletes files)."""
    dest = tmp_path / "testdata"
    for arch_dir in TESTDATA.iterdir():
        if arch_dir.is_dir() and arch_dir.name != "blobs":
            shutil.copytree(arch_dir, dest / arch_dir.name)
    if with_blobs:
        shutil.copytree(TESTDATA / "blobs", dest / "blobs")
    return dest


def _all_referenced() -> set[str]:
    return set(lifecycle.referenced_blobs(TESTDATA))


@pytest.mark.parametrize("text, seconds", [
    ("30d", 30 * 86400), ("12h", 12 * 3600), ("6mo", 180 * 86400), ("1y", 365 * 86400),
    ("1d12h", 36 * 3600), ("90m", 5400), ("0s", 0), ("2w", 14 * 86400), (" 1.5h ", 5400),
])
def test_parse_duration(text: str, seconds: int) -> None:
    assert lifecycle.parse_duration(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize("text", ["", "6", "six months", "5x", "1d 2h", "-1d", "h"])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(HarnessError, match="invalid duration"):
        lifecycle.parse_duration(text)


# ------------------------------------------------------------------------ upload


def test_upload_all(tmp_path: Path, s3_remote: S3Remote,  # noqa: F811
                    capsys: pytest.CaptureFixture[str]) -> None:
    testdata = _testdata_copy(tmp_path)
    referenced = _all_referenced()
    # An object already on the remote under a blob id is never overwritten, even if
    # (here, deliberately) its bytes differ from the local blob.
    kept = load_case(CASE).coredump_ref
    s3_remote.put_raw(f"{kept}.zst", b"uploaded by someone else")

    assert main(["upload", "-all", "-testdata", str(testdata)]) == 0
    out = capsys.readouterr()
    assert f"uploaded {len(referenced) - 1} blobs" in out.out and "1 already there" in out.out
    assert out.err == ""  # not a terminal: no progress bar
    listed = s3_remote.remote.list()
    assert set(listed) == referenced
    assert s3_remote.remote.fs.cat(f"{s3_remote.remote.root}/{kept}.zst") == \
        b"uploaded by someone else"
    for blob_id in referenced - {kept}:
        assert listed[blob_id].size == (testdata / "blobs" / f"{blob_id}.zst").stat().st_size

    # A second upload sends nothing: everything is there.
    assert main(["upload", "-all", "-testdata", str(testdata)]) == 0
    assert f"uploaded 0 blobs (0 B) to {s3_remote.url}" in capsys.readouterr().out


def test_upload_named_cases_only(tmp_path: Path, s3_remote: S3Remote,  # noqa: F811
                                 capsys: pytest.CaptureFixture[str]) -> None:
    testdata = _testdata_copy(tmp_path)
    case_path = testdata / "amd64" / CASE.name
    assert main(["upload", str(case_path), "-testdata", str(testdata)]) == 0
    assert set(s3_remote.remote.list()) == set(lifecycle.case_blobs(load_case(case_path)))
    assert "uploaded 4 blobs" in capsys.readouterr().out


def test_upload_progress_bar_on_a_terminal(tmp_path: Path, s3_remote: S3Remote,  # noqa: F811
                                           monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    testdata = _testdata_copy(tmp_path)
    monkeypatch.setenv("FORCE_COLOR", "1")  # rich then treats stderr as a terminal
    monkeypatch.setenv("TTY_INTERACTIVE", "1")
    assert main(["upload", str(testdata / "amd64" / CASE.name), "-testdata",
                 str(testdata)]) == 0
    err = capsys.readouterr().err
    assert "uploading" in err and "━" in err  # rich's bar


def test_upload_refuses_corrupt_and_missing_blobs(tmp_path: Path, s3_remote: S3Remote,  # noqa: F811
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    testdata = _testdata_copy(tmp_path)
    case_path = testdata / "amd64" / CASE.name
    core = testdata / "blobs" / f"{load_case(case_path).coredump_ref}.zst"
    data = bytearray(core.read_bytes())
    data[len(data) // 2] ^= 0xFF
    core.write_bytes(bytes(data))
    assert main(["upload", str(case_path), "-testdata", str(testdata)]) == 2
    assert "corrupt" in capsys.readouterr().err
    assert load_case(case_path).coredump_ref not in s3_remote.remote.list()

    core.unlink()
    assert main(["upload", str(case_path), "-testdata", str(testdata)]) == 2
    assert "neither in" in capsys.readouterr().err


def test_upload_needs_a_remote_and_a_selection(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("COREDUMP_REMOTE", "")
    assert main(["upload", "-all"]) == 2
    assert "no remote store is configured" in capsys.readouterr().err
    assert main(["upload"]) == 2
    assert "give -all or case files" in capsys.readouterr().err


# ------------------------------------------------------------------------ export


def test_export_module(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    case = load_case(CASE)
    out = tmp_path / "out" / "core"
    assert main(["export-module", "-id", case.coredump_ref, "-out", str(out)]) == 0
    assert hashlib.sha256(out.read_bytes()).hexdigest() == case.coredump_ref
    assert out.read_bytes()[:4] == b"\x7fELF" and f"wrote {out}" in capsys.readouterr().out
    module = case.modules[0]
    assert main(["export-module", "--id", module.ref, "--out", str(tmp_path)]) == 0  # a dir
    assert hashlib.sha256((tmp_path / module.ref).read_bytes()).hexdigest() == module.ref
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_export_module_from_the_remote(tmp_path: Path, s3_remote: S3Remote,  # noqa: F811
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    blob_id = load_case(CASE).modules[0].ref
    lifecycle.upload([blob_id], BlobStore(TESTDATA / "blobs"), s3_remote.remote)
    monkeypatch.setenv("COREDUMP_CACHE", str(tmp_path / "cache"))
    empty = tmp_path / "testdata"
    assert main(["export-module", "-id", blob_id, "-out", str(tmp_path / "m"),
                 "-testdata", str(empty)]) == 0
    assert hashlib.sha256((tmp_path / "m").read_bytes()).hexdigest() == blob_id


def test_export_module_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                              capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("COREDUMP_REMOTE", "")
    assert main(["export-module", "-id", "nope", "-out", str(tmp_path / "x")]) == 2
    assert "not a blob id" in capsys.readouterr().err
    assert main(["export-module", "-id", "ab" * 32, "-out", str(tmp_path / "x")]) == 2
    assert "neither in" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


# ------------------------------------------------------------------------- clean


def _add_unreferenced(testdata: Path, cache: Path) -> str:
    """An unreferenced blob in testdata/blobs, and its uncompressed copy in the cache."""
    store = BlobStore(testdata / "blobs", cache)
    extra = testdata / "extra"
    extra.write_bytes(os.urandom(5000))
    blob_id = store.put_file(extra)
    store.local_path(blob_id)
    return blob_id


def test_clean_local(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                     capsys: pytest.CaptureFixture[str]) -> None:
    testdata = _testdata_copy(tmp_path)
    cache = tmp_path / "cache" / "blobs"
    case_path = testdata / "amd64" / CASE.name
    store = BlobStore(testdata / "blobs", cache)
    assert replay_case(case_path, store).ok  # puts the case's blobs into the cache
    # Only now: COREDUMP_CACHE also holds the unwinder build, which replay needs.
    monkeypatch.setenv("COREDUMP_CACHE", str(tmp_path / "cache"))
    orphan = _add_unreferenced(testdata, cache)
    stale = cache / ".half-written.tmp"
    stale.write_bytes(b"x" * 10)
    os.utime(stale, (time.time() - 7200, time.time() - 7200))
    fresh = cache / ".being-written.tmp"  # another process may be writing it right now
    fresh.write_bytes(b"y")
    before = sorted(p.name for p in (testdata / "blobs").iterdir())

    assert main(["clean", "-dry-run", "-testdata", str(testdata)]) == 0
    out = capsys.readouterr().out
    assert f"would remove blobs: {orphan}.zst" in out
    assert f"would remove cache: {orphan}  5.0 KB" in out
    assert "would remove cache: .half-written.tmp" in out and ".being-written" not in out
    assert f"would remove cache: {orphan}.verified" in out  # the copy's stamp goes with it
    assert "4 items" in out
    assert sorted(p.name for p in (testdata / "blobs").iterdir()) == before  # dry run

    assert main(["clean", "-testdata", str(testdata)]) == 0
    assert "removed 4 items" in capsys.readouterr().out
    assert sorted(p.name for p in (testdata / "blobs").iterdir()) == sorted(
        f"{b}.zst" for b in _all_referenced())
    assert not (cache / orphan).exists() and not stale.exists() and fresh.exists()
    assert not (cache / f"{orphan}.verified").exists()
    assert all((cache / b).exists() for b in lifecycle.case_blobs(load_case(case_path)))

    assert main(["clean", "-testdata", str(testdata)]) == 0
    assert "removed 0 items" in capsys.readouterr().out
    monkeypatch.delenv("COREDUMP_CACHE")
    assert replay_case(case_path, store).ok


def test_clean_refuses_without_cases(tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "testdata" / "blobs").mkdir(parents=True)
    (tmp_path / "testdata" / "blobs" / f"{'ab' * 32}.zst").write_bytes(b"x")
    assert main(["clean", "-testdata", str(tmp_path / "testdata")]) == 2
    assert "refusing" in capsys.readouterr().err
    assert (tmp_path / "testdata" / "blobs" / f"{'ab' * 32}.zst").exists()


def test_clean_remote_s3(tmp_path: Path, s3_remote: S3Remote,  # noqa: F811
                         monkeypatch: pytest.MonkeyPatch,
                         capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("COREDUMP_CACHE", str(tmp_path / "cache"))
    testdata = _testdata_copy(tmp_path)
    orphan = _add_unreferenced(testdata, tmp_path / "cache" / "blobs")
    store = BlobStore(testdata / "blobs")
    lifecycle.upload([*_all_referenced(), orphan], store, s3_remote.remote)
    (testdata / "blobs" / f"{orphan}.zst").unlink()  # e.g. its case lives on another branch

    # Default age (6 months): a fresh upload survives.
    assert main(["clean", "-remote", "-dry-run", "-testdata", str(testdata)]) == 0
    assert "would remove remote" not in capsys.readouterr().out
    assert main(["clean", "-remote", "-testdata", str(testdata)]) == 0
    assert orphan in s3_remote.remote.list()
    capsys.readouterr()

    # The age is the object's LastModified on the server: seven months from now, the
    # unreferenced blob is old enough and the referenced ones are still kept.
    later = datetime.now(UTC) + timedelta(days=210)
    referenced = _all_referenced()
    garbage = lifecycle.remote_garbage(s3_remote.remote, referenced,
                                       lifecycle.parse_duration("6mo"), now=later)
    assert [(g.where, g.name) for g in garbage] == [("remote", orphan)]
    assert garbage[0].age is not None and garbage[0].age > timedelta(days=209)
    assert lifecycle.remote_garbage(s3_remote.remote, referenced,
                                    lifecycle.parse_duration("1y"), now=later) == []

    # -age 0s: anything unreferenced goes now.
    assert main(["clean", "-remote", "-age", "0s", "-dry-run", "-testdata",
                 str(testdata)]) == 0
    out = capsys.readouterr().out
    assert f"would remove remote: {orphan}" in out and "1 items" in out
    assert orphan in s3_remote.remote.list()
    assert main(["clean", "-remote", "-age", "0s", "-testdata", str(testdata)]) == 0
    assert set(s3_remote.remote.list()) == referenced


def test_clean_remote_directory_by_age(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    monkeypatch.setenv("COREDUMP_REMOTE", str(shared))
    monkeypatch.setenv("COREDUMP_CACHE", str(tmp_path / "cache"))
    testdata = _testdata_copy(tmp_path, with_blobs=False)
    old, new = "aa" * 32, "bb" * 32
    for blob_id, days in ((old, 200), (new, 20)):
        path = shared / f"{blob_id}.zst"
        path.write_bytes(b"z" * 100)
        stamp = time.time() - days * 86400
        os.utime(path, (stamp, stamp))
    kept = load_case(CASE).coredump_ref  # referenced: kept however old
    (shared / f"{kept}.zst").write_bytes(b"r")
    os.utime(shared / f"{kept}.zst", (0, 0))

    assert main(["clean", "-remote", "-testdata", str(testdata)]) == 0
    assert "removed 1 items (100 B)" in capsys.readouterr().out
    assert sorted(p.name for p in shared.iterdir()) == sorted([f"{new}.zst", f"{kept}.zst"])
    assert main(["clean", "-remote", "-age", "30d", "-testdata", str(testdata)]) == 0
    assert sorted(p.name for p in shared.iterdir()) == sorted([f"{new}.zst", f"{kept}.zst"])
    assert main(["clean", "-remote", "-age", "2w", "-testdata", str(testdata)]) == 0
    assert [p.name for p in shared.iterdir()] == [f"{kept}.zst"]


def test_clean_bad_age(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["clean", "-age", "soon", "-dry-run"]) == 2
    assert "invalid duration" in capsys.readouterr().err


def test_committed_blobs_are_all_referenced() -> None:
    """The repository keeps no blob that no case names (the lean-repo rule)."""
    committed = {p.name.removesuffix(".zst") for p in (TESTDATA / "blobs").glob("*.zst")}
    referenced = _all_referenced()
    assert committed - referenced == set(), "run `coredump clean` to drop unreferenced blobs"
    assert referenced - committed == set(), "cases name blobs that are not committed"
