"""Lean bundles: a module stored without its DWARF sections.

A build with full debug info (pyenv's libpython is 23 MB, 7 MB compressed) is
mostly .debug_* sections that neither the unwinder (.eh_frame, .text, .data),
gdb's backtrace (.eh_frame, .symtab) nor pystack (.dynsym, .symtab, .data) reads.
`objcopy --strip-debug` removes only those: loaded segments (but for the ELF
header's section-table fields, as the sections move), .eh_frame, symbol tables and
the build id are kept byte for byte (tests/test_lean.py), so the stripped copy
replays and verifies like the original. Recording checks that (replay of the
bundled files must equal the recorded frames), and `verify` runs gdb and pystack
on the stored copy; case files still name the original path.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from ..core.symbols import _sections
from ..errors import HarnessError

__all__ = ["has_debug_sections", "strip_debug"]


def has_debug_sections(path: str | Path) -> bool:
    """Whether the ELF file has .debug_* sections (DWARF)."""
    with open(path, "rb") as f:
        def read(offset: int, size: int) -> bytes | None:
            f.seek(offset)
            data = f.read(size)
            return data if len(data) == size else None
        headers, names = _sections(read)
    for sh in headers:
        end = names.find(b"\0", sh.name)
        if names[sh.name:end if end >= 0 else None].startswith(b".debug_"):
            return True
    return False


def strip_debug(path: str | Path, out_dir: str | Path) -> Path:
    """A copy of `path` in out_dir without DWARF (or `path` itself if it has none)."""
    if not has_debug_sections(path):
        return Path(path)
    objcopy = shutil.which("objcopy")
    if objcopy is None:
        raise HarnessError("objcopy is needed to store modules without debug info: "
                           "apt-get install binutils (or record without -strip-debug)")
    out = Path(out_dir) / (Path(path).name + ".nodebug")
    proc = subprocess.run([objcopy, "--strip-debug", str(path), str(out)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise HarnessError(f"objcopy --strip-debug {path} failed: {proc.stderr.strip()}")
    return out
