"""Where things are: the repository and its parts, the cache of derived data, and the
project's settings (`[tool.coredump]` in pyproject.toml).

Every module that needs a path or a setting asks here, so moving the cache
(`COREDUMP_CACHE`) or the test data is one change, and no module has to import a
compiler or a store just to learn where the repository is.
"""

from __future__ import annotations

import os
import tomllib
from functools import lru_cache
from pathlib import Path
from typing import Any

from .errors import ConfigError

REPO_ROOT = Path(__file__).resolve().parent.parent
BPF_SRC = REPO_ROOT / "bpf_src"
TESTDATA = REPO_ROOT / "testdata"
BLOBS = TESTDATA / "blobs"
PYPROJECT = REPO_ROOT / "pyproject.toml"

CACHE_ENV = "COREDUMP_CACHE"
DEBUG_BUILD_ENV = "COREDUMP_DEBUG_BUILD"
MAX_BLOB_ENV = "COREDUMP_MAX_BLOB_BYTES"
# No blob decompresses to more than this (the largest bundled core is 77 MB): a zstd
# bomb is stopped here instead of filling the disk before its hash is checked.
DEFAULT_MAX_BLOB_BYTES = 4 << 30


def cache_root() -> Path:
    """Git-ignored directory for everything derived (builds, blobs, unwind data)."""
    return Path(os.environ.get(CACHE_ENV, REPO_ROOT / ".cache"))


def debug_build_requested() -> bool:
    """Whether the unwinder should be the unoptimised build (`coredump debug`, gdb)."""
    return os.environ.get(DEBUG_BUILD_ENV, "") not in ("", "0")


def max_blob_bytes() -> int:
    """The most bytes one blob may decompress to ($COREDUMP_MAX_BLOB_BYTES, default 4 GiB)."""
    text = os.environ.get(MAX_BLOB_ENV, "")
    if not text:
        return DEFAULT_MAX_BLOB_BYTES
    try:
        value = int(text, 0)
    except ValueError:
        value = -1
    if value <= 0:
        raise ConfigError(f"{MAX_BLOB_ENV}={text!r} must be a positive number of bytes")
    return value


def tool_config(pyproject: Path = PYPROJECT) -> dict[str, Any]:
    """The `[tool.coredump]` table of pyproject.toml ({} if the file or table is absent).
    Parsed once per version of the file (settings are read on every replay)."""
    try:
        stamp = pyproject.stat().st_mtime_ns
    except OSError:
        return {}
    return _parsed_config(pyproject, stamp)


@lru_cache(maxsize=8)
def _parsed_config(pyproject: Path, stamp: int) -> dict[str, Any]:
    try:
        with open(pyproject, "rb") as f:
            doc = tomllib.load(f)
    except FileNotFoundError:
        return {}
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{pyproject}: {e}") from e
    tool = doc.get("tool", {}).get("coredump", {})
    if not isinstance(tool, dict):
        raise ConfigError(f"{pyproject}: [tool.coredump] must be a table")
    return tool


BPF_SRC_ENV = "COREDUMP_BPF_SRC"


def unwinder_settings(pyproject: Path = PYPROJECT) -> tuple[Path, str | None, str]:
    """Which unwinder the harness builds: (source directory, entry program or None,
    trace struct name).

    `$COREDUMP_BPF_SRC` (what `-bpf-src DIR` sets) wins over `bpf-src` in
    `[tool.coredump]`, which is relative to the repository; the default is bpf_src/.
    `entry-program` and `trace-struct` come from the same table.
    """
    tool = tool_config(pyproject)
    directory = os.environ.get(BPF_SRC_ENV) or tool.get("bpf-src") or BPF_SRC
    entry = tool.get("entry-program")
    trace_struct = tool.get("trace-struct", "trace")
    for key, value in (("bpf-src", directory), ("entry-program", entry or ""),
                       ("trace-struct", trace_struct)):
        if not isinstance(value, (str, Path)):
            raise ConfigError(f"{pyproject}: [tool.coredump] {key} must be a string")
    return (REPO_ROOT / directory).resolve(), entry or None, str(trace_struct)
