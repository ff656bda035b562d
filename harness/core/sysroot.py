"""Finding a core's mapped files under a sysroot (`coredump new -sysroot DIR`).

A sysroot is a copy of another machine's file tree (an extracted image, a
container's root). Joining the prefix is not enough: its symbolic links are
that machine's, and an absolute one (Debian's /lib64/ld-linux-x86-64.so.2 ->
/lib/x86_64-linux-gnu/...) followed naively leads to this machine's file,
which bundles the wrong module silently. Links are therefore resolved one
component at a time, with absolute targets taken relative to the sysroot.
"""

from __future__ import annotations

import os

_MAX_LINKS = 40  # as the kernel's MAXSYMLINKS


def resolve_in_sysroot(sysroot: str, path: str) -> str | None:
    """The file under `sysroot` that `path` names on the sysroot's machine, or None."""
    root = os.path.abspath(sysroot)
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
        candidate = os.path.join(root, *parts, name)
        if os.path.islink(candidate):
            links += 1
            if links > _MAX_LINKS:
                return None
            target = os.readlink(candidate)
            if target.startswith("/"):
                parts = []
            pending = [p for p in target.split("/") if p] + pending
            continue
        parts.append(name)
    resolved = os.path.join(root, *parts)
    return resolved if os.path.isfile(resolved) else None
