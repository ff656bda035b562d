"""Builds of bpf_src: the host shared object that replay drives through ctypes, and the
`clang -target bpf` object that the kernel loads. Both are cached by a hash of inputs.

The cache key covers every C source and header beside the entry file, the compiler's
version and the flags, so editing the unwinder rebuilds it on the next run and
nothing else does. Outputs are written to a temporary name and renamed
(files.atomic_path), so parallel pytest workers racing to build the same key both
end up with a complete file.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..arch import ARCH_NAMES, get_arch
from ..errors import BuildError
from ..files import atomic_path
from ..paths import cache_root, debug_build_requested, unwinder_settings

# The harness's side of every host build: helper pointers, tail calls, debug prints.
HOST_DIR = Path(__file__).resolve().parent / "host"
HOST_SOURCE = HOST_DIR / "harness_host.c"


@dataclass(frozen=True)
class UnwinderSource:
    """An unwinder's sources: one directory whose one top-level .c file is the
    translation unit (headers anywhere beneath), as most BPF unwinders are built."""

    directory: Path
    entry_program: str | None = None
    trace_struct: str = "trace"

    @property
    def main_file(self) -> Path:
        if not self.directory.is_dir():
            raise BuildError(f"unwinder sources: {self.directory} is not a directory")
        files = sorted(self.directory.glob("*.c"))
        if len(files) != 1:
            found = ", ".join(f.name for f in files) or "none"
            raise BuildError(f"unwinder sources: {self.directory} must hold exactly one .c "
                             f"file at its top level (the translation unit); found {found}")
        return files[0]

    @property
    def label(self) -> str:
        return self.directory.name


def default_source() -> UnwinderSource:
    """The configured unwinder (bpf_src/ unless -bpf-src or [tool.coredump] say otherwise)."""
    directory, entry, trace_struct = unwinder_settings()
    return UnwinderSource(directory, entry, trace_struct)

RELEASE_FLAGS = ["-O2", "-g"]
# For single-stepping the BPF C code in gdb (`coredump debug`): no optimisation
# and no inlining, not even of the unwinder's __always_inline helpers
# (bpf_src/bpf_defs.h only defines that macro when it is not defined already).
DEBUG_FLAGS = ["-O0", "-g3", "-fno-inline", "-fno-omit-frame-pointer",
               "-D__always_inline=inline"]
COMMON_FLAGS = ["-std=gnu11", "-Wall", "-Wextra", "-Werror", "-fPIC", "-shared",
                "-fno-strict-aliasing"]
# Opt-in flavour (COREDUMP_SANITIZE=1, scripts/sanitize): AddressSanitizer and
# UndefinedBehaviorSanitizer, clang, every report fatal. Python must preload the
# ASan runtime (scripts/sanitize does), as the runtime has to come first.
SANITIZE_ENV = "COREDUMP_SANITIZE"
SANITIZE_FLAGS = ["-O1", "-g", "-fsanitize=address,undefined", "-fno-sanitize-recover=all",
                  "-fno-omit-frame-pointer", "-shared-libasan"]
# -std as in the host build, so both compilers read the same dialect.
BPF_FLAGS = ["-target", "bpf", "-O2", "-g", "-std=gnu11", "-Wall", "-Wextra", "-Werror"]


def compiler() -> str:
    """The host C compiler ($CC, else cc or gcc on PATH)."""
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not cc:
        raise BuildError("no C compiler found: install gcc (apt-get install gcc) or set CC")
    return cc


def clang() -> str:
    """The clang used for BPF builds ($BPF_CC, else clang on PATH)."""
    cc = os.environ.get("BPF_CC") or shutil.which("clang")
    if not cc:
        raise BuildError("clang not found: the BPF build needs it "
                         "(scripts/bootstrap installs it; apt-get install clang)")
    return cc


def compiler_version(cc: str) -> str:
    """First line of `cc --version`: part of every build cache key."""
    try:
        out = subprocess.run([cc, "--version"], capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError) as e:
        raise BuildError(f"cannot run the C compiler {cc!r}: {e}") from e
    return out.stdout.splitlines()[0] if out.stdout else cc


def arch_flags(arch: str) -> list[str]:
    if arch not in ARCH_NAMES:
        raise BuildError(f"unsupported target architecture {arch!r}; use one of {ARCH_NAMES}")
    return [f"-D{get_arch(arch).target_macro}"]


def cached_compile(*, kind: str, label: str, cc: str, flags: Sequence[str],
                   source_dir: Path, output: str, command: Callable[[Path], list[str]],
                   check: Callable[[Path], str | None] | None = None,
                   extra_dirs: Sequence[Path] = ()) -> Path:
    """Run a compile into the cache (<cache>/<kind>/<label>-<key>/<output>) unless
    its output is there already.

    `command(tmp)` gives the argv that writes the output to tmp; `check(tmp)`
    may return a reason to reject what it wrote. The key hashes the compiler's
    version, the flags, the output name and every C file under source_dir (and
    under extra_dirs).
    """
    digest = hashlib.sha256()
    digest.update(compiler_version(cc).encode())
    digest.update("\0".join(flags).encode())
    digest.update(output.encode())
    files = sorted(source_dir.rglob("*.[ch]"))
    if not files:
        raise BuildError(f"no C sources under {source_dir}")
    for root in (source_dir, *extra_dirs):
        for path in sorted(root.rglob("*.[ch]")):
            digest.update(str(path.relative_to(root)).encode())
            digest.update(path.read_bytes())
    out = cache_root() / kind / f"{label}-{digest.hexdigest()[:16]}" / output
    if out.exists():
        return out
    with atomic_path(out) as tmp:
        cmd = command(tmp)
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise BuildError(f"building {output} failed:\n  {' '.join(cmd)}\n"
                             f"{proc.stderr.strip()}")
        problem = check(tmp) if check is not None else None
        if problem:
            raise BuildError(f"{' '.join(cmd)}: {problem}")
    return out


def host_flags(arch: str, debug: bool) -> list[str]:
    return COMMON_FLAGS + (DEBUG_FLAGS if debug else RELEASE_FLAGS) + arch_flags(arch)


def build_unwinder(arch: str, debug: bool | None = None,
                   source: UnwinderSource | None = None) -> Path:
    """The unwinder shared object for `arch` (host build), built if needed: the
    unwinder's translation unit and the harness's host glue in one object, with
    debug info (the harness reads the unwinder's layout from it)."""
    if debug is None:
        debug = debug_build_requested()
    source = source or default_source()
    cc = compiler()
    flags = [*host_flags(arch, debug), f"-I{HOST_DIR}"]
    flavor = "debug" if debug else "release"
    if os.environ.get(SANITIZE_ENV, "") not in ("", "0"):
        cc, flavor = clang(), "sanitize"
        flags = [*COMMON_FLAGS, *SANITIZE_FLAGS, *arch_flags(arch), f"-I{HOST_DIR}"]
    sources = [str(source.main_file), str(HOST_SOURCE)]
    label = f"{arch}-{flavor}" if source.label == "bpf_src" else f"{source.label}-{arch}-{flavor}"
    return cached_compile(kind="build", label=label, cc=cc, flags=flags,
                          source_dir=source.directory, output="unwinder.so",
                          extra_dirs=[HOST_DIR],
                          command=lambda tmp: [cc, *flags, "-o", str(tmp), *sources])


def btf_size(obj: Path) -> int:
    """Size of the object's .BTF section (0 if it has none)."""
    from elftools.elf.elffile import ELFFile

    with open(obj, "rb") as f:
        section = ELFFile(f).get_section_by_name(".BTF")
        return int(section["sh_size"]) if section is not None else 0


def _has_btf(obj: Path) -> str | None:
    if btf_size(obj) == 0:
        return "produced no .BTF section; libbpf needs BTF for the maps (is clang too old?)"
    return None


def build_bpf_object(source: Path, arch: str) -> Path:
    """Compile one BPF C file for `arch` with clang -target bpf (with BTF); the key
    covers every C file beside it."""
    source = Path(source).resolve()
    if not source.is_file():
        raise BuildError(f"no BPF source {source}")
    cc = clang()
    flags = BPF_FLAGS + arch_flags(arch)
    stem = source.name.removesuffix(".c").removesuffix(".bpf")
    return cached_compile(kind="bpf", label=f"{stem}-{arch}", cc=cc, flags=flags,
                          source_dir=source.parent, output=f"{stem}.bpf.o", check=_has_btf,
                          command=lambda tmp: [cc, *flags, "-c", str(source), "-o", str(tmp)])


def build_unwinder_bpf(arch: str, source: UnwinderSource | None = None) -> Path:
    """The unwinder (bpf_src/native_stack.c unless configured) as a BPF object for `arch`."""
    return build_bpf_object((source or default_source()).main_file, arch)
