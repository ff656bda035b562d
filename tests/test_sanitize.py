"""The sanitizer flavour (COREDUMP_SANITIZE=1, scripts/sanitize): the unwinder built
with ASan and UBSan, and proof that a report really fails the run.

The case suite under that build is `scripts/sanitize` (run by .ci/run); here we check
the flavour is what it claims: the build links the ASan runtime, and a memory error
or undefined behaviour in a library built with the same flags and loaded the same
way (ctypes, runtime preloaded) kills the process with a report.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from elftools.elf.dynamic import DynamicSection
from elftools.elf.elffile import ELFFile

from harness.bpf import build

pytestmark = pytest.mark.slow

BUGGY = r"""
#include <stdlib.h>
#include <string.h>
int heap_overflow(int n) {
  char *p = malloc(8);
  memset(p, 1, (size_t)n);
  int v = p[n - 1];
  free(p);
  return v;
}
int shift_overflow(int n) { return 1 << n; }
"""


def _runtime() -> str:
    try:
        clang = build.clang()
    except Exception as e:  # noqa: BLE001 - BuildError: clang missing
        pytest.skip(f"no clang: {e}")
    path = subprocess.run([clang, "-print-file-name=libclang_rt.asan-x86_64.so"],
                          capture_output=True, text=True).stdout.strip()
    if not os.path.isfile(path):
        pytest.skip(f"clang's ASan runtime is not installed ({path})")
    return path


def _env(runtime: str) -> dict[str, str]:
    return {**os.environ, "LD_PRELOAD": runtime, "COREDUMP_SANITIZE": "1",
            "ASAN_OPTIONS": "detect_leaks=0:halt_on_error=1:verify_asan_link_order=0:symbolize=0",
            "UBSAN_OPTIONS": "halt_on_error=1"}


def test_the_sanitize_build_links_the_asan_runtime(monkeypatch: pytest.MonkeyPatch) -> None:
    _runtime()
    monkeypatch.setenv(build.SANITIZE_ENV, "1")
    so = build.build_unwinder("amd64")
    assert "sanitize" in so.parent.name
    with open(so, "rb") as f:
        dynamic = next(s for s in ELFFile(f).iter_sections() if isinstance(s, DynamicSection))
        needed = [t.needed for t in dynamic.iter_tags("DT_NEEDED")]
    assert any("asan" in n for n in needed), needed


@pytest.mark.parametrize("call, report", [("heap_overflow(16)", "heap-buffer-overflow"),
                                          ("shift_overflow(40)", "shift exponent 40")])
def test_a_sanitizer_report_kills_the_process(tmp_path: Path, call: str, report: str) -> None:
    runtime = _runtime()
    src = tmp_path / "buggy.c"
    src.write_text(BUGGY)
    lib = tmp_path / "buggy.so"
    flags = [f for f in build.COMMON_FLAGS if f != "-Werror"] + build.SANITIZE_FLAGS
    subprocess.run([build.clang(), *flags, "-o", str(lib), str(src)], check=True)
    script = f"import ctypes; print(ctypes.CDLL({str(lib)!r}).{call})"
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         env=_env(runtime), timeout=120)
    assert run.returncode != 0 and report in run.stderr, run.stderr[-2000:]
