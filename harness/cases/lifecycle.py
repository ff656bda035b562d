"""The test-data lifecycle: upload blobs to the remote, export one, clean unused ones.

A blob is in use while some case file under the testdata directory names it
(`coredump-ref` or a module `ref`). Locally, unused blobs can go at once: they
are this checkout's leftovers. On the remote, a blob no case of *this*
checkout names may belong to a case on another branch, so only blobs older
than an age limit (6 months by default) are removed.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from ..errors import HarnessError, StoreError
from ..files import CHUNK, atomic_file, is_temp_file, temp_writer, writer_alive
from .blobs import BLOB_ID, SUFFIX, check_id, verify_blob
from .case_file import TestCase, find_cases, load_case
from .remote import RemoteStore
from .store import STAMP_SUFFIX, BlobStore

DEFAULT_REMOTE_AGE = "6mo"
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(mo|[smhdwy])")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400,
                 "mo": 30 * 86400, "y": 365 * 86400}
UPLOAD_JOBS = 4
STALE_TEMP_SECONDS = 3600  # temp files of interrupted writes older than this are garbage

# Called after each blob with (bytes done so far, bytes in all).
ByteProgress = Callable[[int, int], None]


def parse_duration(text: str) -> timedelta:
    """'30d', '12h', '6mo', '1y', '1d12h', '0s' -> timedelta (mo = 30 days, y = 365 days)."""
    cleaned = text.strip().lower()
    pos, seconds = 0, 0.0
    for match in _DURATION_PART.finditer(cleaned):
        if match.start() != pos:
            break
        seconds += float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
        pos = match.end()
    if not cleaned or pos != len(cleaned):
        raise HarnessError(f"invalid duration {text!r}: use a number and a unit, e.g. 30d, "
                           "12h, 6mo, 1y (s m h d w mo y; m is minutes, mo is 30 days)")
    return timedelta(seconds=seconds)


def case_blobs(case: TestCase) -> list[str]:
    twin = [case.gdb_executable] if case.gdb_executable else []
    return [case.coredump_ref, *(m.ref for m in case.modules), *twin]


def referenced_blobs(testdata: Path, full_cores: bool = False) -> dict[str, list[str]]:
    """{blob id: names of the cases that use it} over every case under testdata;
    with full_cores, the full-ref of skinny cases too (on the remote they are what
    `reskinny` starts from)."""
    refs: dict[str, list[str]] = {}
    for path in find_cases(testdata):
        case = load_case(path)
        full = [case.full_ref] if full_cores and case.full_ref else []
        for blob_id in [*case_blobs(case), *full]:
            refs.setdefault(blob_id, []).append(f"{path.parent.name}/{path.stem}")
    return refs


def verify_compressed(path: Path, blob_id: str) -> None:
    """Check that a compressed blob decompresses to content with its id, before sharing it."""
    try:
        verify_blob(path, blob_id)
    except StoreError as e:
        raise StoreError(f"{e}; not uploading it") from e


# ------------------------------------------------------------------------ upload


@dataclass
class UploadReport:
    uploaded: list[tuple[str, int]] = field(default_factory=list)  # (id, compressed bytes)
    already_there: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def uploaded_bytes(self) -> int:
        return sum(size for _, size in self.uploaded)


def plan_upload(blob_ids: Iterable[str], store: BlobStore,
                remote: RemoteStore) -> tuple[list[str], list[str]]:
    """(blobs to upload, blobs the remote has); errors for blobs that are nowhere."""
    present = remote.list()
    to_send, there = [], []
    for blob_id in dict.fromkeys(blob_ids):  # dedup, keep order
        if blob_id in present:
            there.append(blob_id)
        elif store.has(blob_id):
            to_send.append(blob_id)
        else:
            raise StoreError(f"blob {blob_id} is neither in {store.root} nor on {remote.url}; "
                             "it cannot be uploaded (was it recorded on another machine?)")
    return to_send, there


def upload(blob_ids: Iterable[str], store: BlobStore, remote: RemoteStore,
           progress: ByteProgress | None = None, jobs: int = UPLOAD_JOBS) -> UploadReport:
    """Push the blobs the remote lacks; never re-uploads or overwrites an object.

    Each blob is verified before it leaves (a corrupt local blob must not reach
    the team), and a few go at once: object stores are latency-bound.
    """
    start = time.perf_counter()
    to_send, there = plan_upload(blob_ids, store, remote)
    report = UploadReport(already_there=there)
    total = sum(store.size(b) for b in to_send)

    def send(blob_id: str) -> tuple[str, int, bool]:
        path = store.blob_path(blob_id)
        verify_compressed(path, blob_id)
        return blob_id, path.stat().st_size, remote.put(blob_id, path)

    done = 0
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        for blob_id, size, sent in pool.map(send, to_send):
            if sent:
                report.uploaded.append((blob_id, size))
            else:  # someone uploaded it in the meantime
                report.already_there.append(blob_id)
            done += size
            if progress is not None:
                progress(done, total)
    report.seconds = time.perf_counter() - start
    return report


def blobs_of_cases(case_paths: Iterable[Path]) -> list[str]:
    ids: list[str] = []
    for path in case_paths:
        ids.extend(case_blobs(load_case(path)))
    return ids


def full_cores_of_cases(case_paths: Iterable[Path]) -> list[str]:
    """The full-ref of each skinny case (the full core behind its skinny one)."""
    return [ref for path in case_paths if (ref := load_case(path).full_ref)]


# ------------------------------------------------------------------------ export


def export_blob(store: BlobStore, blob_id: str, out: Path) -> Path:
    """Write a blob (core or module), decompressed, to out (atomically), or into out
    if it is a directory.

    An `out` that is a symbolic link is refused, whatever it points to: following
    it would write somewhere the command line does not name, and replacing it
    would destroy a link the user made. The temporary file is created beside the
    destination exclusively (files.atomic_path), so no link is followed for it."""
    check_id(blob_id)
    if out.is_symlink():
        raise HarnessError(f"-out {out} is a symbolic link (to {os.readlink(out)}); give "
                           "the file or directory it points to, or another name")
    if out.is_dir():
        out = out / blob_id
        if out.is_symlink():
            raise HarnessError(f"{out} is a symbolic link; refusing to replace it")
    if out.exists() and not out.is_file():
        raise HarnessError(f"-out {out} exists and is not a regular file")
    src = store.local_path(blob_id)
    with open(src, "rb") as f, atomic_file(out) as dst:
        shutil.copyfileobj(f, dst, CHUNK)
    return out


# ------------------------------------------------------------------------- clean


@dataclass(frozen=True)
class Garbage:
    """One thing `clean` removes."""

    where: str  # "blobs", "cache" or "remote"
    name: str  # blob id (or temp file name)
    size: int
    path: Path | None = None  # local file; None on the remote
    age: timedelta | None = None  # remote only


def _stale_temp(path: Path, now: float) -> bool:
    """A temp file whose writer is gone: its pid (in the name) names no process, or it
    is older than STALE_TEMP_SECONDS (a later process may have the same pid)."""
    if not is_temp_file(path):
        return False
    writer = temp_writer(path)
    if writer is not None and writer != os.getpid() and not writer_alive(writer):
        return True
    return now - path.stat().st_mtime > STALE_TEMP_SECONDS


def local_garbage(store: BlobStore, referenced: set[str]) -> list[Garbage]:
    """Unreferenced blobs in the blob directory and uncompressed copies in the cache,
    plus temp files left by interrupted writes."""
    items = []
    now = time.time()
    for where, directory, suffix in (("blobs", store.root, SUFFIX), ("cache", store.cache, "")):
        if not directory.is_dir():
            continue
        for path in sorted(directory.iterdir()):
            if not path.is_file():
                continue
            stem = path.name[: -len(suffix)] if suffix and path.name.endswith(suffix) else \
                path.name
            if where == "cache" and stem.endswith(STAMP_SUFFIX):
                stem = stem[: -len(STAMP_SUFFIX)]  # a copy's stamp goes with the copy
                suffix_here = STAMP_SUFFIX
            else:
                suffix_here = suffix
            if (BLOB_ID.match(stem) and path.name == stem + suffix_here
                    and stem not in referenced) or _stale_temp(path, now):
                items.append(Garbage(where, path.name, path.stat().st_size, path))
    return items


def remote_garbage(remote: RemoteStore, referenced: set[str], max_age: timedelta,
                   now: datetime | None = None) -> list[Garbage]:
    """Unreferenced remote blobs uploaded more than max_age ago (unknown age: kept)."""
    now = now or datetime.now(UTC)
    items = []
    for blob_id, blob in sorted(remote.list().items()):
        if blob_id in referenced or blob.mtime is None:
            continue
        age = now - blob.mtime
        if age >= max_age:
            items.append(Garbage("remote", blob_id, blob.size, None, age))
    return items


def remove(items: Iterable[Garbage], remote: RemoteStore | None = None) -> int:
    """Delete what local_garbage/remote_garbage found; returns the bytes freed."""
    freed = 0
    for item in items:
        if item.path is not None:
            try:
                item.path.unlink()
            except FileNotFoundError:
                continue
        elif remote is not None:
            remote.delete(item.name)
        else:
            raise HarnessError("remote garbage given without a remote store")
        freed += item.size
    return freed
