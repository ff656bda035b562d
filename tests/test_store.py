"""The content-addressed store: round trip, dedup, verification, atomicity."""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pytest
import zstandard

from harness.cases.store import BlobStore
from harness.errors import StoreError


@pytest.fixture
def store(tmp_path: Path) -> BlobStore:
    return BlobStore(tmp_path / "blobs", tmp_path / "cache")


def _file(tmp_path: Path, data: bytes, name: str = "f") -> Path:
    p = tmp_path / name
    p.write_bytes(data)
    return p


def test_round_trip_and_dedup(store: BlobStore, tmp_path: Path) -> None:
    data = os.urandom(100_000) + b"\0" * 1_000_000
    blob_id = store.put_file(_file(tmp_path, data))
    assert blob_id == hashlib.sha256(data).hexdigest()
    assert store.size(blob_id) < len(data) // 5  # compressed
    mtime = store.blob_path(blob_id).stat().st_mtime_ns
    assert store.put_file(_file(tmp_path, data, "g")) == blob_id
    assert store.blob_path(blob_id).stat().st_mtime_ns == mtime  # not rewritten
    assert store.local_path(blob_id).read_bytes() == data
    assert list(store.ids()) == [blob_id]
    leftovers = [p for p in (tmp_path / "blobs").iterdir() if p.name.startswith(".")]
    assert leftovers == []


def test_corrupt_compressed_blob_is_rejected(store: BlobStore, tmp_path: Path) -> None:
    blob_id = store.put_file(_file(tmp_path, b"hello" * 1000))
    path = store.blob_path(blob_id)
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(StoreError, match="corrupt"):
        store.local_path(blob_id)
    assert not (store.cache / blob_id).exists()


def test_blob_with_wrong_content_is_rejected(store: BlobStore) -> None:
    blob_id = hashlib.sha256(b"the real content").hexdigest()
    store.root.mkdir(parents=True)
    store.blob_path(blob_id).write_bytes(zstandard.compress(b"something else"))
    with pytest.raises(StoreError, match="hashes to"):
        store.local_path(blob_id)


def test_missing_and_malformed_ids(store: BlobStore) -> None:
    with pytest.raises(StoreError, match="neither"):
        store.local_path("0" * 64)
    with pytest.raises(StoreError, match="not a blob id"):
        store.local_path("../../etc/passwd")


def _extract(args: tuple[str, str, str]) -> str:
    root, cache, blob_id = args
    return hashlib.sha256(BlobStore(root, cache).local_path(blob_id).read_bytes()).hexdigest()


def test_parallel_extraction(store: BlobStore, tmp_path: Path) -> None:
    data = os.urandom(3_000_000)
    blob_id = store.put_file(_file(tmp_path, data))
    with ProcessPoolExecutor(4) as pool:
        results = list(pool.map(_extract, [(str(store.root), str(store.cache), blob_id)] * 8))
    assert results == [blob_id] * 8
    assert sorted(p.name for p in store.cache.iterdir()) == [blob_id, f"{blob_id}.verified"]
