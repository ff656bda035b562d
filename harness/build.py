"""Host build of bpf_src into a shared object, cached by a hash of inputs.

The cache key covers every source and header, the compiler's version and the
flags, so editing the unwinder rebuilds it on the next run and nothing else
does. Builds are written to a temporary name and renamed, so parallel pytest
workers that race to build the same key both end up with a complete file.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from .bpf_abi import ARCH_AMD64, ARCH_ARM64
from .errors import BuildError

REPO_ROOT = Path(__file__).resolve().parent.parent
BPF_SRC = REPO_ROOT / "bpf_src"
HOST_SOURCES = ["native_stack.c", "host/shim.c"]

ARCH_MACROS = {ARCH_AMD64: "TARGET_ARCH_X86_64", ARCH_ARM64: "TARGET_ARCH_ARM64"}

RELEASE_FLAGS = ["-O2", "-g"]
# For single-stepping the BPF C code in gdb (`coredump debug`): no optimisation
# and no inlining, not even of the unwinder's __always_inline helpers
# (bpf_src/bpf_defs.h only defines that macro when it is not defined already).
DEBUG_FLAGS = ["-O0", "-g3", "-fno-inline", "-fno-omit-frame-pointer",
               "-D__always_inline=inline"]
COMMON_FLAGS = ["-std=gnu11", "-Wall", "-Wextra", "-Werror", "-fPIC", "-shared",
                "-fno-strict-aliasing"]


def cache_root() -> Path:
    """Git-ignored directory for everything derived (builds, blobs, unwind data)."""
    return Path(os.environ.get("COREDUMP_CACHE", REPO_ROOT / ".cache"))


def debug_build_requested() -> bool:
    return os.environ.get("COREDUMP_DEBUG_BUILD", "") not in ("", "0")


def compiler() -> str:
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not cc:
        raise BuildError("no C compiler found: install gcc (apt-get install gcc) or set CC")
    return cc


def compiler_version(cc: str) -> str:
    """First line of `cc --version`: part of every build cache key."""
    try:
        out = subprocess.run([cc, "--version"], capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError) as e:
        raise BuildError(f"cannot run the C compiler {cc!r}: {e}") from e
    return out.stdout.splitlines()[0] if out.stdout else cc


def _source_files() -> list[Path]:
    files = sorted(BPF_SRC.rglob("*.[ch]"))
    if not files:
        raise BuildError(f"no unwinder sources under {BPF_SRC}")
    return files


def build_flags(arch: str, debug: bool) -> list[str]:
    if arch not in ARCH_MACROS:
        raise BuildError(f"unsupported target architecture {arch!r}")
    return COMMON_FLAGS + (DEBUG_FLAGS if debug else RELEASE_FLAGS) + [f"-D{ARCH_MACROS[arch]}"]


def build_unwinder(arch: str, debug: bool | None = None) -> Path:
    """Return the path of the unwinder shared object for `arch`, building it if needed."""
    if debug is None:
        debug = debug_build_requested()
    cc = compiler()
    flags = build_flags(arch, debug)
    digest = hashlib.sha256()
    digest.update(compiler_version(cc).encode())
    digest.update("\0".join(flags).encode())
    for path in _source_files():
        digest.update(str(path.relative_to(BPF_SRC)).encode())
        digest.update(path.read_bytes())
    flavor = "debug" if debug else "release"
    out_dir = cache_root() / "build" / f"{arch}-{flavor}-{digest.hexdigest()[:16]}"
    out = out_dir / "unwinder.so"
    if out.exists():
        return out

    out_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out_dir, prefix=".unwinder-", suffix=".so")
    os.close(fd)
    cmd = [cc, *flags, "-o", tmp, *(str(BPF_SRC / s) for s in HOST_SOURCES)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        os.unlink(tmp)
        raise BuildError(
            f"building the {arch} unwinder failed:\n  {' '.join(cmd)}\n{proc.stderr.strip()}"
        )
    os.replace(tmp, out)
    return out
