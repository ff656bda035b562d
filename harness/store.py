"""Content-addressed blob store for cores and modules.

Blobs are identified by the sha256 of their uncompressed bytes and kept
zstd-compressed in the repository (`testdata/blobs/<id>.zst`) so the bundled
cases replay offline. Readers get an uncompressed copy in the git-ignored
cache, extracted once, verified against its id, and renamed into place so
parallel pytest workers and interrupted runs never see a partial file.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

import zstandard

from .build import REPO_ROOT, cache_root
from .errors import StoreError

BLOB_ID = re.compile(r"^[0-9a-f]{64}$")
CHUNK = 1 << 20
COMPRESSION_LEVEL = 19

# Called with (blob id, destination path) to fetch a blob the store lacks
# (a remote store); returns True if it wrote the compressed blob there.
Fetcher = Callable[[str, Path], bool]


def _no_remote(_blob_id: str, _dest: Path) -> bool:
    return False


# Pass as fetcher to use the local blobs only, whatever remote is configured.
OFFLINE: Fetcher = _no_remote


def _configured_fetcher() -> Fetcher | None:
    """The configured remote's fetch, if any (harness.remote; imported only on a miss)."""
    from .remote import configured_remote

    remote = configured_remote()
    return remote.fetch if remote is not None else None


def sha256_file(path: str | os.PathLike[str]) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def check_id(blob_id: str) -> str:
    if not isinstance(blob_id, str) or not BLOB_ID.match(blob_id):
        raise StoreError(f"{blob_id!r} is not a blob id (64 lowercase hex digits of a sha256)")
    return blob_id


def _atomic_target(dest: Path) -> tuple[int, str]:
    dest.parent.mkdir(parents=True, exist_ok=True)
    return tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp")


@contextmanager
def atomic_file(dest: Path, mode: int = 0o644) -> Iterator[BinaryIO]:
    """Write dest all at once: parallel pytest workers and interrupted runs see
    the old file or the whole new one, never a part. An exception inside the
    block (a failed check, Ctrl-C) leaves dest untouched."""
    fd, tmp = _atomic_target(dest)
    try:
        with os.fdopen(fd, "wb") as out:
            yield out
        os.chmod(tmp, mode)
        os.replace(tmp, dest)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


class BlobStore:
    """Compressed blobs under `root`, uncompressed copies under `cache`.

    A blob missing from `root` is fetched with `fetcher`, by default from the
    configured remote store (harness.remote), into the cache, and used only if
    its content hashes to its id.
    """

    def __init__(self, root: str | os.PathLike[str] | None = None,
                 cache: str | os.PathLike[str] | None = None,
                 fetcher: Fetcher | None = None) -> None:
        self.root = Path(root) if root is not None else REPO_ROOT / "testdata" / "blobs"
        self.cache = Path(cache) if cache is not None else cache_root() / "blobs"
        self.fetcher = fetcher

    def blob_path(self, blob_id: str) -> Path:
        return self.root / f"{check_id(blob_id)}.zst"

    def has(self, blob_id: str) -> bool:
        return self.blob_path(blob_id).exists()

    def ids(self) -> Iterator[str]:
        for path in sorted(self.root.glob("*.zst")):
            if BLOB_ID.match(path.stem):
                yield path.stem

    def put_file(self, path: str | os.PathLike[str]) -> str:
        """Add a file; returns its id. Adding a blob that exists is a no-op."""
        blob_id = sha256_file(path)
        dest = self.blob_path(blob_id)
        if dest.exists():
            return blob_id
        compressor = zstandard.ZstdCompressor(level=COMPRESSION_LEVEL, threads=-1)
        with open(path, "rb") as src, atomic_file(dest) as out:
            compressor.copy_stream(src, out, size=os.fstat(src.fileno()).st_size)
        return blob_id

    def local_path(self, blob_id: str) -> Path:
        """An uncompressed, verified copy of the blob (extracted on first use)."""
        dest = self.cache / check_id(blob_id)
        if dest.exists():
            return dest
        src = self.blob_path(blob_id)
        if src.exists():
            self._extract(blob_id, src, dest)
        else:
            self._fetch(blob_id, dest)
        return dest

    def _fetch(self, blob_id: str, dest: Path) -> None:
        """Download the compressed blob beside the cache, verify it, extract it."""
        fetcher = self.fetcher if self.fetcher is not None else _configured_fetcher()
        if fetcher is None:
            raise StoreError(
                f"blob {blob_id} is neither in {self.root} nor in a remote store (none is "
                "configured: set COREDUMP_REMOTE or [tool.coredump] remote in pyproject.toml); "
                "was the case added without committing or uploading its blobs?")
        label = getattr(fetcher, "__self__", "the remote store")
        fd, tmp = _atomic_target(self.cache / f"{blob_id}.zst")
        os.close(fd)
        try:
            if not fetcher(blob_id, Path(tmp)):
                raise StoreError(f"blob {blob_id} is neither in {self.root} nor in {label}; "
                                 "was the case added without uploading its blobs?")
            try:
                self._extract(blob_id, Path(tmp), dest)
            except StoreError as e:
                raise StoreError(f"blob {blob_id} downloaded from {label} was rejected and "
                                 f"not used: {e}") from e
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    def _extract(self, blob_id: str, src: Path, dest: Path) -> None:
        digest = hashlib.sha256()
        try:
            # 0o444: derived from an immutable input, never edited in place
            with open(src, "rb") as f, atomic_file(dest, 0o444) as out:
                reader = zstandard.ZstdDecompressor().stream_reader(f)
                while chunk := reader.read(CHUNK):
                    digest.update(chunk)
                    out.write(chunk)
                if digest.hexdigest() != blob_id:
                    raise StoreError(
                        f"blob {src} is corrupt: its content hashes to {digest.hexdigest()}, "
                        f"not to its id {blob_id}")
        except zstandard.ZstdError as e:
            raise StoreError(f"blob {src} is corrupt (not valid zstd data: {e})") from e

    def size(self, blob_id: str) -> int:
        return self.blob_path(blob_id).stat().st_size
