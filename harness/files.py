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

from .errors import HarnessError

CHUNK = 1 << 20  # bytes per read when streaming large files (cores are gigabytes)
TEMP_SUFFIX = ".tmp"


def temp_prefix(name: str) -> str:
    """The start of a temporary name for `name`: hidden, and naming the writer's pid so
    that `clean` can tell a write in progress from one whose writer died."""
    return f".{name}.{os.getpid()}."


def temp_writer(path: Path) -> int | None:
    """The pid in a temporary file's name (see temp_prefix), None for older names."""
    parts = path.name.split(".")
    return int(parts[-3]) if len(parts) >= 5 and parts[-3].isdigit() else None


def writer_alive(pid: int) -> bool:
    """Whether a process with this pid exists (it may be a later one with the same pid)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, another user's
    return True


@contextmanager
def atomic_path(dest: str | os.PathLike[str], mode: int = 0o644) -> Iterator[Path]:
    """A temporary path beside dest; on leaving the block it becomes dest.

    For writers that need a file name (a compiler's `-o`). An exception inside the
    block (a failed build, a failed check, Ctrl-C) leaves dest untouched and
    removes the temporary file. The temporary file is created exclusively
    (mkstemp's O_EXCL), so a link planted under its name is never followed, and the
    rename replaces a link at dest rather than writing through it.
    """
    target = Path(dest)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=temp_prefix(target.name),
                                   suffix=TEMP_SUFFIX)
    except OSError as e:
        raise HarnessError(f"cannot write {target}: {e.strerror or e}"
                           f"{f' ({e.filename})' if e.filename else ''}") from None
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, mode)
        try:
            os.replace(tmp, target)
        except OSError as e:  # e.g. dest is a directory
            raise HarnessError(f"cannot write {target}: {e.strerror or e}") from None
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
