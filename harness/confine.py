"""Where a path from input may lead, and what it may be: the one place that decides.

Cases and cores name files of the machine they were recorded on
(`modules[].local-path`, the NT_FILE list, link_map names). Such a name is data,
not a place on this machine: it is only ever looked up or laid out *under a root*
(a `-sysroot`, the temporary sysroot gdb is given), and a hostile one
(`/../../../tmp/victim`, or a link in the sysroot to `/etc`) must not reach
outside that root, or `verify` would replace a file of the user's with a link.
Every such join goes through `resolve_under` (reading: the sysroot machine's
links followed inside the root, as chroot does) or `place_under` (writing: no link
is followed at all).

Inputs are also opened here (`open_regular`): a core, a case or a blob that is a
FIFO would block forever and `/dev/zero` would be read until memory runs out, so
anything but a regular file is refused before a byte is read.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from .errors import HarnessError, UnsafePathError

MAX_PATH = 4096  # PATH_MAX: longer names cannot have come from a Linux process
MAX_LINKS = 40  # symbolic links followed in one lookup, as the kernel's MAXSYMLINKS


def original_path_problem(path: object) -> str | None:
    """Why `path` cannot be a file name of the recorded machine, or None if it can be:
    it must be an absolute string without NUL, at most PATH_MAX long, and its `..`
    must not climb above `/`."""
    if not isinstance(path, str):
        return f"must be a string, got {type(path).__name__}"
    if not path.startswith("/"):
        return f"must be an absolute path, got {path[:80]!r}"
    if "\0" in path:
        return "contains a NUL character"
    if len(path) > MAX_PATH:
        return f"is {len(path)} characters long (at most {MAX_PATH})"
    if _climbs_out(path):
        return "climbs above / with '..'"
    return None


def _climbs_out(path: str) -> bool:
    depth = 0
    for part in path.split("/"):
        if part == "..":
            depth -= 1
            if depth < 0:
                return True
        elif part not in ("", "."):
            depth += 1
    return False


def _lexical_parts(path: str) -> list[str]:
    """The components of an absolute path with `.`, `..` and empty ones folded;
    UnsafePathError if `..` climbs above its start."""
    parts: list[str] = []
    for part in path.split("/"):
        if part == "..":
            if not parts:
                raise UnsafePathError(f"{path[:200]!r} climbs above its root with '..'; refused")
            parts.pop()
        elif part not in ("", "."):
            parts.append(part)
    return parts


def place_under(root: str | os.PathLike[str], path: str) -> Path:
    """Where the file `path` of the recorded machine is laid out under `root`, for
    writing there (the temporary sysroot gdb reads).

    The path is folded lexically and must stay inside root, and no component
    between root and the file may be a symbolic link or a non-directory, so that
    whatever is written there lands inside root. UnsafePathError otherwise.
    """
    problem = original_path_problem(path)
    if problem:
        raise UnsafePathError(f"file name {path[:200]!r} {problem}; refused")
    parts = _lexical_parts(path)
    if not parts:
        raise UnsafePathError(f"file name {path!r} names the root itself; refused")
    base = Path(root)
    here = base
    for part in parts[:-1]:
        here = here / part
        try:
            mode = os.lstat(here).st_mode
        except FileNotFoundError:
            break  # the rest is created by the caller, below a real directory
        except OSError as e:
            raise UnsafePathError(f"cannot place {path!r} under {root}: {e.strerror}") from e
        if not stat.S_ISDIR(mode):
            kind = "a symbolic link" if stat.S_ISLNK(mode) else "not a directory"
            raise UnsafePathError(f"cannot place {path!r} under {root}: {here} is {kind}")
    return base.joinpath(*parts)


def resolve_under(root: str | os.PathLike[str], path: str) -> str | None:
    """The regular file under `root` that `path` names on the root's machine, or None.

    Links are resolved one component at a time, with absolute targets taken
    relative to root and `..` stopping at root (as inside a chroot), so neither
    the name nor a link in the tree leads outside it; a lookup that follows more
    than MAX_LINKS links finds nothing.
    """
    if not (isinstance(path, str) and path.startswith("/") and "\0" not in path
            and len(path) <= MAX_PATH):
        return None  # names no file (`..` above / is folded below, as chroot does)
    top = os.path.abspath(root)
    pending = [p for p in path.split("/") if p]
    parts: list[str] = []
    links = 0
    while pending:
        name = pending.pop(0)
        if name == ".":
            continue
        if name == "..":
            if parts:
                parts.pop()
            continue
        candidate = os.path.join(top, *parts, name)
        if os.path.islink(candidate):
            links += 1
            if links > MAX_LINKS:
                return None
            target = os.readlink(candidate)
            if target.startswith("/"):
                parts = []
            pending = [p for p in target.split("/") if p] + pending
            continue
        parts.append(name)
    resolved = os.path.join(top, *parts)
    if not os.path.isfile(resolved) or os.path.islink(resolved):
        return None
    # Defence in depth: whatever happened above, the answer is inside root.
    real_root = os.path.realpath(top)
    if os.path.commonpath([real_root, os.path.realpath(resolved)]) != real_root:
        return None
    return resolved


def open_regular(path: str | os.PathLike[str], what: str,
                 error: type[HarnessError] = HarnessError, max_size: int | None = None) -> int:
    """A read-only descriptor of `path`, which must be a regular file (at most
    max_size bytes if given); `error` naming `what` otherwise. Opened without
    blocking, so a FIFO with no writer is refused instead of hanging."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise error(f"{what} {path}: no such file") from None
    except IsADirectoryError:
        raise error(f"{what} {path}: is a directory, not a file") from None
    except OSError as e:
        raise error(f"{what} {path}: cannot open: {e.strerror or e}") from None
    except ValueError as e:  # an embedded NUL
        raise error(f"{what} {path!r}: {e}") from None
    try:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            raise error(f"{what} {path}: is a directory, not a file")
        if not stat.S_ISREG(info.st_mode):
            raise error(f"{what} {path}: is not a regular file ({_kind(info.st_mode)}); "
                        "refused")
        if max_size is not None and info.st_size > max_size:
            raise error(f"{what} {path}: is {info.st_size} bytes, more than the "
                        f"{max_size} a {what} may have")
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "a special file"
