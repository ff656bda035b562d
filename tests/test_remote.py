"""The remote store: configuration, and fetching missing blobs into the cache with
their hash checked, against a real S3 server on 127.0.0.1, a directory and HTTP."""

from __future__ import annotations

import functools
import hashlib
import http.server
import json
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import zstandard

from harness.cases import lifecycle
from harness.cases.case_file import load_case
from harness.cases.remote import FsspecRemote, RemoteError, configured_remote, remote_config
from harness.cases.store import BlobStore
from harness.errors import StoreError
from harness.paths import REPO_ROOT
from harness.replay import replay_case
from tests.s3server import S3Remote, s3_endpoint, s3_remote  # noqa: F401 (fixtures)

CASE = REPO_ROOT / "testdata" / "amd64" / "chain.O2.fp.json"
REPO_BLOBS = BlobStore(REPO_ROOT / "testdata" / "blobs")


def _pyproject(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "pyproject.toml"
    path.write_text(body)
    return path


# ------------------------------------------------------------------ configuration


def test_config_from_pyproject(tmp_path: Path) -> None:
    pyproject = _pyproject(tmp_path, '[tool.coredump]\nremote = "s3://team/blobs"\n'
                                     '[tool.coredump.remote-options]\n'
                                     'endpoint_url = "http://127.0.0.1:9000"\n')
    config = remote_config(pyproject, environ={})
    assert config is not None
    assert config.url == "s3://team/blobs"
    assert config.options == {"endpoint_url": "http://127.0.0.1:9000"}


def test_environment_wins(tmp_path: Path) -> None:
    pyproject = _pyproject(tmp_path, '[tool.coredump]\nremote = "s3://team/blobs"\n')
    env = {"COREDUMP_REMOTE": "gs://other/x", "COREDUMP_REMOTE_OPTIONS": '{"token": "anon"}'}
    config = remote_config(pyproject, environ=env)
    assert config is not None and config.url == "gs://other/x"
    assert config.options == {"token": "anon"}
    # Set but empty: explicitly offline, whatever pyproject.toml says.
    assert remote_config(pyproject, environ={"COREDUMP_REMOTE": ""}) is None


def test_relative_directory_is_relative_to_pyproject(tmp_path: Path) -> None:
    pyproject = _pyproject(tmp_path, '[tool.coredump]\nremote = "../shared-blobs"\n')
    config = remote_config(pyproject, environ={})
    assert config is not None and config.url == str(tmp_path.parent / "shared-blobs")


def test_no_remote_by_default_and_bad_options(tmp_path: Path) -> None:
    assert remote_config(REPO_ROOT / "pyproject.toml", environ={}) is None
    with pytest.raises(RemoteError, match="JSON"):
        remote_config(tmp_path / "none.toml",
                      environ={"COREDUMP_REMOTE": "/x", "COREDUMP_REMOTE_OPTIONS": "{"})
    with pytest.raises(RemoteError, match="JSON object"):
        remote_config(tmp_path / "none.toml",
                      environ={"COREDUMP_REMOTE": "/x", "COREDUMP_REMOTE_OPTIONS": "[1]"})


def test_offline_missing_blob_says_how_to_configure(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COREDUMP_REMOTE", "")
    store = BlobStore(tmp_path / "blobs", tmp_path / "cache")
    with pytest.raises(StoreError, match="none is configured: set COREDUMP_REMOTE"):
        store.local_path("ab" * 32)


# ----------------------------------------------------------------- S3 (moto server)


def _case_copy_without_blobs(tmp_path: Path) -> Path:
    """The case file alone: its blobs must come from the remote."""
    dest = tmp_path / "testdata" / "amd64" / CASE.name
    dest.parent.mkdir(parents=True)
    shutil.copy(CASE, dest)
    return dest


def test_s3_fetch_verifies_and_caches(tmp_path: Path, s3_remote: S3Remote) -> None:  # noqa: F811
    case = load_case(CASE)
    ids = lifecycle.case_blobs(case)
    report = lifecycle.upload(ids, REPO_BLOBS, s3_remote.remote)
    assert sorted(b for b, _ in report.uploaded) == sorted(ids)

    copy = _case_copy_without_blobs(tmp_path)
    store = BlobStore(tmp_path / "testdata" / "blobs", tmp_path / "cache")
    result = replay_case(copy, store)
    assert result.ok, result.problems
    # Fetched into the cache, verified, decompressed; nothing added to testdata.
    copies = [p.name for p in (tmp_path / "cache").iterdir() if not p.name.endswith(".verified")]
    assert sorted(copies) == sorted(ids)  # each beside its stamp (cases/store.py)
    assert not (tmp_path / "testdata" / "blobs").exists()
    for blob_id in ids:
        assert hashlib.sha256((tmp_path / "cache" / blob_id).read_bytes()).hexdigest() == blob_id


def test_s3_blob_with_wrong_content_is_rejected(tmp_path: Path,
                                                s3_remote: S3Remote) -> None:  # noqa: F811
    blob_id = hashlib.sha256(b"what the case expects").hexdigest()
    s3_remote.put_raw(f"{blob_id}.zst", zstandard.compress(b"something else"))
    store = BlobStore(tmp_path / "blobs", tmp_path / "cache")
    with pytest.raises(StoreError, match=f"downloaded from {s3_remote.url} was rejected"):
        store.local_path(blob_id)
    assert list((tmp_path / "cache").iterdir()) == []  # neither the download nor a copy


def test_s3_garbage_object_is_rejected(tmp_path: Path, s3_remote: S3Remote) -> None:  # noqa: F811
    blob_id = "cd" * 32
    s3_remote.put_raw(f"{blob_id}.zst", b"not zstd at all")
    with pytest.raises(StoreError, match="not valid zstd"):
        BlobStore(tmp_path / "blobs", tmp_path / "cache").local_path(blob_id)


def test_s3_missing_blob_names_the_remote(tmp_path: Path,
                                          s3_remote: S3Remote) -> None:  # noqa: F811
    with pytest.raises(StoreError, match=f"nor in {s3_remote.url}"):
        BlobStore(tmp_path / "blobs", tmp_path / "cache").local_path("ef" * 32)


def test_s3_listing_ignores_foreign_objects(s3_remote: S3Remote) -> None:  # noqa: F811
    blob_id = "01" * 32
    s3_remote.put_raw(f"{blob_id}.zst", b"x")
    s3_remote.put_raw("README", b"not a blob")
    s3_remote.put_raw("12.zst", b"short name")
    listed = s3_remote.remote.list()
    assert list(listed) == [blob_id]
    assert listed[blob_id].size == 1 and listed[blob_id].mtime is not None


def test_unreachable_remote_is_a_clear_error(tmp_path: Path,
                                             s3_remote: S3Remote,  # noqa: F811
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COREDUMP_REMOTE_OPTIONS",
                       json.dumps({"endpoint_url": "http://127.0.0.1:9",
                                   "config_kwargs": {"retries": {"max_attempts": 1}}}))
    remote = configured_remote()
    assert remote is not None
    with pytest.raises(RemoteError, match="127.0.0.1:9"):
        remote.list()


# ------------------------------------------------------------ directory and HTTP


def test_directory_remote(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    shared = tmp_path / "shared"
    monkeypatch.setenv("COREDUMP_REMOTE", str(shared))
    monkeypatch.delenv("COREDUMP_REMOTE_OPTIONS", raising=False)
    remote = configured_remote()
    assert isinstance(remote, FsspecRemote) and remote.local
    ids = lifecycle.case_blobs(load_case(CASE))
    lifecycle.upload(ids, REPO_BLOBS, remote)
    # Same layout as testdata/blobs, byte for byte, and no temp files left.
    assert sorted(p.name for p in shared.iterdir()) == sorted(f"{b}.zst" for b in ids)
    for blob_id in ids:
        assert (shared / f"{blob_id}.zst").read_bytes() == REPO_BLOBS.blob_path(
            blob_id).read_bytes()
    copy = _case_copy_without_blobs(tmp_path)
    assert replay_case(copy, BlobStore(tmp_path / "testdata" / "blobs", tmp_path / "cache")).ok


@pytest.fixture
def http_dir(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A directory served read-only over HTTP on 127.0.0.1 (a free port)."""
    root = tmp_path / "www"
    root.mkdir()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

    handler = functools.partial(Quiet, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/blobs", root
    finally:
        server.shutdown()
        server.server_close()


def test_http_remote_reads_and_refuses_writes(tmp_path: Path, http_dir: tuple[str, Path],
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("aiohttp", reason="fsspec's HTTP filesystem needs aiohttp")
    url, root = http_dir
    case = load_case(CASE)
    (root / "blobs").mkdir()
    for blob_id in lifecycle.case_blobs(case):
        shutil.copy(REPO_BLOBS.blob_path(blob_id), root / "blobs" / f"{blob_id}.zst")
    monkeypatch.setenv("COREDUMP_REMOTE", url)
    monkeypatch.delenv("COREDUMP_REMOTE_OPTIONS", raising=False)
    copy = _case_copy_without_blobs(tmp_path)
    assert replay_case(copy, BlobStore(tmp_path / "testdata" / "blobs", tmp_path / "cache")).ok
    remote = configured_remote()
    assert remote is not None and remote.read_only
    with pytest.raises(RemoteError, match="read-only"):
        remote.put(case.coredump_ref, REPO_BLOBS.blob_path(case.coredump_ref))
    with pytest.raises(StoreError, match="neither"):
        BlobStore(tmp_path / "b", tmp_path / "c").local_path("ab" * 32)
