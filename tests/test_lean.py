"""Lean bundles (record/lean.py): a module stored without DWARF reads the same."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from harness.bpf.build import compiler
from harness.core.module import Module
from harness.core.symbols import build_id, named_symbols
from harness.paths import REPO_ROOT
from harness.record.lean import has_debug_sections, strip_debug

SOURCE = REPO_ROOT / "testsources" / "chain.c"


def test_a_stripped_copy_keeps_what_unwinding_reads(tmp_path: Path) -> None:
    program = tmp_path / "chain.O2.fp"  # built here, with DWARF (-g)
    subprocess.run([compiler(), "-g", "-O2", "-fno-omit-frame-pointer", "-o", str(program),
                    str(SOURCE)], check=True, capture_output=True)
    if shutil.which("objcopy") is None:
        pytest.skip("objcopy (binutils) is not installed")
    assert has_debug_sections(program)  # built with -g
    lean = strip_debug(program, tmp_path)
    assert lean != program and not has_debug_sections(lean)
    assert lean.stat().st_size < program.stat().st_size
    original, copy = Module(str(program), program), Module(str(program), lean)
    try:
        assert [(s.vaddr, s.memsz) for s in copy.loads] == \
            [(s.vaddr, s.memsz) for s in original.loads]
        for seg in original.loads:  # every loaded byte, .eh_frame included...
            ours, theirs = (m.read_vaddr(seg.vaddr, seg.filesz) for m in (copy, original))
            assert ours is not None and theirs is not None
            if seg.offset == 0:  # ...but the ELF header's section-table fields
                # (e_shoff at 40, e_shnum and e_shstrndx at 60): the sections moved
                assert ours[:40] == theirs[:40] and ours[48:60] == theirs[48:60]
                ours, theirs = ours[64:], theirs[64:]
            assert ours == theirs
        assert build_id(copy.read) == build_id(original.read)
        assert named_symbols(copy.read, ["main"]) == named_symbols(original.read, ["main"])
    finally:
        original.close()
        copy.close()
    assert strip_debug(lean, tmp_path / "again") == lean  # nothing left to strip
