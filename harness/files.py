"""Writing files so that nobody sees half of one, and hashing them.

Parallel pytest workers build, extract and cache the same things at once, and a
run can be interrupted at any point. Everything the harness writes therefore goes
to a temporary name beside its destination and is renamed into place: readers see
the old file or the whole new one, never a part.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

CHUNK = 1 << 20  # bytes per read when streaming large files (cores are gigabytes)
TEMP_SUFFIX = ".tmp"


@contextmanager
def atomic_path(dest: str | os.PathLike[str], mode: int = 0o644) -> Iterator[Path]:
    """A temporary path beside dest; on leaving the block it becomes dest.

    For writers that need a file name (a compiler's `-o`). An exception inside the
    block (a failed build, a failed check, Ctrl-C) leaves dest untouched and
    removes the temporary file.
    """
    target = Path(dest)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.",
                               suffix=TEMP_SUFFIX)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, mode)
        os.replace(tmp, target)
    except BaseException:
        if os.path.lexists(tmp):
            os.unlink(tmp)
        raise


@contextmanager
def atomic_file(dest: str | os.PathLike[str], mode: int = 0o644) -> Iterator[BinaryIO]:
    """A binary file opened for writing that becomes dest when the block ends."""
    with atomic_path(dest, mode) as tmp, open(tmp, "wb") as out:
        yield out


def write_atomically(dest: str | os.PathLike[str], data: bytes, mode: int = 0o644) -> None:
    with atomic_file(dest, mode) as out:
        out.write(data)


def is_temp_file(path: Path) -> bool:
    """Whether a name is one of atomic_path's temporary files (left by an interrupted write)."""
    return path.name.startswith(".") and path.name.endswith(TEMP_SUFFIX)


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file's content, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()
