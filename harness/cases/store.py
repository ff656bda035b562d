"""Content-addressed blob store for cores and modules.

Blobs are identified by the sha256 of their uncompressed bytes and kept
zstd-compressed in the repository (`testdata/blobs/<id>.zst`) so the bundled
cases replay offline. Readers get an uncompressed copy in the git-ignored
cache, extracted once, verified against its id, and renamed into place so
parallel pytest workers and interrupted runs never see a partial file.
"""

from __future__ import annotations

import os
import stat
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from ..errors import HarnessError, StoreError
from ..files import TEMP_SUFFIX, atomic_file, sha256_file, temp_prefix, write_atomically
from ..paths import BLOBS, cache_root
from .blobs import (
    BLOB_ID,
    FRAME_HEADER_MAX,
    SUFFIX,
    check_id,
    compress_file,
    declared_size,
    verify_blob,
)
from .case_file import TestCase
from .remote import configured_remote

# Called with (blob id, destination path) to fetch a blob the store lacks
# (a remote store); returns True if it wrote the compressed blob there.
Fetcher = Callable[[str, Path], bool]


def _no_remote(_blob_id: str, _dest: Path) -> bool:
    return False


# Pass as fetcher to use the local blobs only, whatever remote is configured.
OFFLINE: Fetcher = _no_remote


def _configured_fetcher() -> Fetcher | None:
    """The configured remote's fetch, if any (read on a miss only)."""
    remote = configured_remote()
    return remote.fetch if remote is not None else None


# Cache copies hashed by this process: path -> their stamp when they were.
_VERIFIED: dict[Path, tuple[int, int, int, int]] = {}
# Beside each verified copy, its stamp, so that later processes need not hash it
# again (a core is tens of megabytes: hashing it was most of a warm analyze).
STAMP_SUFFIX = ".verified"


def _stamp(info: os.stat_result) -> tuple[int, int, int, int]:
    """What changes when a copy is swapped, edited, truncated or relinked: the inode,
    size, modification time and change time (which no one can set back)."""
    return info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns


def _stamp_path(dest: Path) -> Path:
    return dest.with_name(dest.name + STAMP_SUFFIX)


def _stamped(dest: Path, info: os.stat_result) -> bool:
    """Whether a process verified dest as it is now (its stamp file says so)."""
    try:
        text = _stamp_path(dest).read_text()
    except (OSError, UnicodeDecodeError):
        return False
    return text.split() == [str(v) for v in _stamp(info)]


def _remember(dest: Path) -> None:
    """dest was just verified (hashed, or written from a verified blob): no need to
    hash it again, in this process or later ones."""
    info = dest.lstat()
    _VERIFIED[dest] = _stamp(info)
    try:
        write_atomically(_stamp_path(dest), " ".join(str(v) for v in _stamp(info)).encode())
    except (OSError, HarnessError):
        pass  # no stamp: the next process hashes the copy again, nothing worse


class BlobStore:
    """Compressed blobs under `root`, uncompressed copies under `cache`.

    A blob missing from `root` is fetched with `fetcher`, by default from the
    configured remote store (cases/remote.py), into the cache, and used only if
    its content hashes to its id.
    """

    def __init__(self, root: str | os.PathLike[str] | None = None,
                 cache: str | os.PathLike[str] | None = None,
                 fetcher: Fetcher | None = None) -> None:
        self.root = Path(root) if root is not None else BLOBS
        self.cache = Path(cache) if cache is not None else cache_root() / "blobs"
        self.fetcher = fetcher

    def blob_path(self, blob_id: str) -> Path:
        return self.root / f"{check_id(blob_id)}{SUFFIX}"

    def has(self, blob_id: str) -> bool:
        return self.blob_path(blob_id).exists()

    def ids(self) -> Iterator[str]:
        for path in sorted(self.root.glob(f"*{SUFFIX}")):
            if BLOB_ID.match(path.stem):
                yield path.stem

    def put_file(self, path: str | os.PathLike[str]) -> str:
        """Add a file; returns its id. Adding a blob that exists is a no-op."""
        blob_id = sha256_file(path)
        dest = self.blob_path(blob_id)
        if dest.exists():
            return blob_id
        with atomic_file(dest) as out:
            compress_file(Path(path), out)
        return blob_id

    def local_path(self, blob_id: str) -> Path:
        """An uncompressed, verified copy of the blob (extracted on first use).

        A copy already in the cache is hashed before it is used unless a stamp
        beside it says it was verified as it is now (same inode, size, mtime and
        ctime): the cache is a directory anyone can write to, and a swapped or
        damaged copy must never give wrong frames silently. A bad copy is
        removed and extracted again."""
        dest = self.cache / check_id(blob_id)
        if self._cached_copy_ok(blob_id, dest):
            return dest
        src = self.blob_path(blob_id)
        if src.exists():
            self._extract(blob_id, src, dest)
        else:
            self._fetch(blob_id, dest)
        _remember(dest)
        return dest

    def _cached_copy_ok(self, blob_id: str, dest: Path) -> bool:
        """Whether dest is a good copy of the blob; a bad one is removed."""
        try:
            info = dest.lstat()
        except FileNotFoundError:
            return False
        except OSError as e:
            raise StoreError(f"cache copy {dest}: {e.strerror or e}") from None
        if stat.S_ISDIR(info.st_mode):
            raise StoreError(f"cache copy {dest} is a directory; remove it (the cache "
                             f"{self.cache} holds only files)")
        if _VERIFIED.get(dest) == _stamp(info):
            return True
        if stat.S_ISREG(info.st_mode) and _stamped(dest, info):
            _VERIFIED[dest] = _stamp(info)
            return True
        if stat.S_ISREG(info.st_mode):
            try:
                expected = self._expected_size(blob_id)
                if expected in (None, info.st_size) and sha256_file(dest) == blob_id:
                    _remember(dest)
                    return True
            except OSError as e:
                raise StoreError(f"cache copy {dest}: cannot read: {e.strerror}") from None
        try:  # a link, a special file, or the wrong bytes: rebuild it
            dest.unlink()
        except FileNotFoundError:
            pass
        except OSError as e:
            raise StoreError(f"cache copy {dest} is not blob {blob_id} and cannot be "
                             f"removed: {e.strerror}") from None
        return False

    def _expected_size(self, blob_id: str) -> int | None:
        """The content size the compressed blob declares (None if unknown or absent),
        so that a copy of the wrong size is rejected without hashing it."""
        src = self.blob_path(blob_id)
        try:
            with open(src, "rb") as f:
                return declared_size(src, f.read(FRAME_HEADER_MAX))
        except (OSError, StoreError):
            return None

    def _fetch(self, blob_id: str, dest: Path) -> None:
        """Download the compressed blob beside the cache, verify it, extract it."""
        fetcher = self.fetcher if self.fetcher is not None else _configured_fetcher()
        if fetcher is None:
            raise StoreError(
                f"blob {blob_id} is neither in {self.root} nor in a remote store (none is "
                "configured: set COREDUMP_REMOTE or [tool.coredump] remote in pyproject.toml); "
                "was the case added without committing or uploading its blobs?")
        label = getattr(fetcher, "__self__", "the remote store")
        # The download is a temporary file that never becomes a blob: only its
        # verified content does (in dest).
        self.cache.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=self.cache, prefix=temp_prefix(blob_id + SUFFIX),
                                         suffix=TEMP_SUFFIX) as download:
            tmp = Path(download.name)
            if not fetcher(blob_id, tmp):
                raise StoreError(f"blob {blob_id} is neither in {self.root} nor in {label}; "
                                 "was the case added without uploading its blobs?")
            try:
                self._extract(blob_id, tmp, dest)
            except StoreError as e:
                raise StoreError(f"blob {blob_id} downloaded from {label} was rejected and "
                                 f"not used: {e}") from e

    def _extract(self, blob_id: str, src: Path, dest: Path) -> None:
        # 0o444: derived from an immutable input, never edited in place
        with atomic_file(dest, 0o444) as out:
            verify_blob(src, blob_id, out)

    def size(self, blob_id: str) -> int:
        return self.blob_path(blob_id).stat().st_size


def full_store() -> BlobStore:
    """Where the full cores of skinny cases live on this machine (never committed;
    `upload -full` shares them), fetched from the remote store when missing."""
    return BlobStore(cache_root() / "full-blobs")


def store_for(case: TestCase) -> BlobStore:
    """The store beside a case file (testdata/<arch>/x.json -> testdata/blobs)."""
    if case.path is not None:
        return BlobStore(case.path.resolve().parent.parent / "blobs")
    return BlobStore()
