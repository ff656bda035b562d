"""Rules synthesized from instructions (harness/unwind_data/synthesize.py) and the
anonymous-code modules (harness/core/anon_code.py).

The byte strings are hand-assembled x86-64 and arm64 code: unit tests of the
walker and the pattern scan. Real code without CFI (musl, qemu's trampoline
page) is covered by the musl.* and arm64/sighandler cases and by
test_validate_deltas_on_musl below.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from harness.arch import AMD64, ARM64, sigreturn_offsets
from harness.core.anon_code import FILE_OFFSET, _image, anon_name
from harness.core.module import Module
from harness.unwind_data import (
    CFA_FP,
    CFA_SIGNAL,
    CFA_SP,
    CFA_STOP,
    FRAME_POINTER_RULE,
    UnwindRule,
)
from harness.unwind_data.synthesize import _trampolines, _x86_pieces, overlay

BASE = 0x1000


def rules(code: bytes, sized: dict[int, int] | None = None) -> dict[int, UnwindRule]:
    """{instruction address: rule} for hand-assembled code at BASE."""
    pieces, _ = _x86_pieces(code, BASE, sized or {BASE: len(code)})
    found = {}
    for start, end, rule in pieces:
        for addr in range(start, end):
            found[addr] = rule
    return found


def sp(off: int, fp: int = 0) -> UnwindRule:
    return UnwindRule(CFA_SP, off, fp_offset=fp, ra_offset=-8)


def test_push_sub_pop_ret() -> None:
    code = bytes.fromhex(
        "55"            # push rbp
        "53"            # push rbx
        "4883ec18"      # sub rsp, 0x18
        "4883c418"      # add rsp, 0x18
        "5b"            # pop rbx
        "5d"            # pop rbp
        "c3")           # ret
    got = rules(code)
    assert got[BASE] == sp(8)
    assert got[BASE + 1] == sp(16, -16)
    assert got[BASE + 2] == sp(24, -16)
    assert got[BASE + 6] == sp(48, -16)
    assert got[BASE + 10] == sp(24, -16)
    assert got[BASE + 11] == sp(16, -16)
    assert got[BASE + 12] == sp(8)  # the caller's rbp is back in rbp


def test_frame_pointer_carries_a_variable_adjustment() -> None:
    """After `and rsp, -16; sub rsp, rax` only the frame pointer knows the CFA."""
    code = bytes.fromhex(
        "55"            # push rbp
        "4889e5"        # mov rbp, rsp
        "4883e4f0"      # and rsp, -16
        "4829c4"        # sub rsp, rax
        "c9"            # leave
        "c3")           # ret
    got = rules(code)
    assert got[BASE + 4] == sp(16, -16)  # SP still known: preferred
    assert got[BASE + 8] == UnwindRule(CFA_FP, 16, fp_offset=-16, ra_offset=-8)
    assert got[BASE + 11] == UnwindRule(CFA_FP, 16, fp_offset=-16, ra_offset=-8)
    assert got[BASE + 12] == sp(8)  # after leave


def test_branches_carry_the_state() -> None:
    code = bytes.fromhex(
        "4883ec08"      # 0: sub rsp, 8
        "85ff"          # 4: test edi, edi
        "7406"          # 6: je 0xe
        "4883c408"      # 8: add rsp, 8
        "c3"            # c: ret
        "90"            # d: nop
        "4883c408"      # e: add rsp, 8
        "c3")           # 12: ret
    got = rules(code)
    assert got[BASE + 0xE] == sp(16)  # reached only through the je
    assert got[BASE + 0x12] == sp(8)


def test_noreturn_call_does_not_leak_into_the_next_function() -> None:
    """`call abort` followed by padding: what follows is another function."""
    code = bytes.fromhex(
        "50"            # 0: push rax
        "e800000000"    # 1: call (anywhere)
        "90"            # 6: nop
        "4156"          # 7: push r14 -- the next function, no symbol
        "415e"          # 9: pop r14
        "c3")           # b: ret
    got = rules(code)
    assert got[BASE + 7] == sp(8)
    assert got[BASE + 9] == sp(16)


def test_xor_ebp_marks_the_outermost_frame() -> None:
    code = bytes.fromhex(
        "31ed"          # xor ebp, ebp (rbp not saved: _start, a new thread)
        "4889e7"        # mov rdi, rsp
        "e800000000")   # call
    got = rules(code)
    assert got[BASE] == sp(8)
    assert got[BASE + 2].cfa_op == CFA_STOP


def test_xor_ebp_after_saving_it_is_just_a_zero() -> None:
    code = bytes.fromhex("55" "31ed" "5d" "c3")  # push rbp; xor ebp, ebp; pop rbp; ret
    got = rules(code)
    assert got[BASE + 3] == sp(16, -16)


def test_jump_table_cases_inherit_the_indirect_jump() -> None:
    code = bytes.fromhex(
        "4883ec28"      # 0: sub rsp, 0x28
        "ffe0"          # 4: jmp rax  (a jump table)
        "4883c428"      # 6: add rsp, 0x28  -- a case, reached by no direct branch
        "c3")           # a: ret
    got = rules(code)
    assert got[BASE + 6] == sp(48)
    assert got[BASE + 0xA] == sp(8)


@pytest.mark.parametrize("arch, code, at", [
    (AMD64, bytes.fromhex("90" "48c7c00f000000" "0f05"), 1),
    (AMD64, bytes.fromhex("c3" "b80f000000" "0f05"), 1),
    (ARM64, bytes.fromhex("1f2003d5" "681180d2" "010000d4"), 4),
])
def test_sigreturn_patterns(arch: str, code: bytes, at: int) -> None:
    assert list(sigreturn_offsets(code, arch)) == [(at, len(code))]
    # the rule starts at the byte before: a return address minus one lands there
    assert list(_trampolines(code, BASE, arch)) == [(BASE + at - 1, BASE + len(code))]


def test_overlay_resumes_the_base_rule() -> None:
    base = [(0x1000, sp(8)), (0x2000, FRAME_POINTER_RULE), (0x3000, sp(16))]
    signal = UnwindRule(CFA_SIGNAL)
    out = overlay(base, [(0x2100, 0x2108, signal), (0x2200, 0x2300, sp(24))])
    assert out == [(0x1000, sp(8)), (0x2000, FRAME_POINTER_RULE), (0x2100, signal),
                   (0x2108, FRAME_POINTER_RULE), (0x2200, sp(24)), (0x2300, FRAME_POINTER_RULE),
                   (0x3000, sp(16))]
    assert overlay([], [(0x10, 0x20, signal)]) == [(0x10, signal), (0x20, FRAME_POINTER_RULE)]


def test_anonymous_page_image(tmp_path: Path) -> None:
    """The trampoline page becomes a module whose vaddr 0 is the byte before it."""
    page = bytes.fromhex("681180d2 010000d4") + bytes(4088)
    path = tmp_path / "anon.elf"
    path.write_bytes(_image(page, 183))
    module = Module(anon_name(0x5502864000), path)
    assert module.name == "[anon@0x5502864000]"
    load = module.load_for_offset(FILE_OFFSET)
    assert load is not None and load.vaddr == 0 and load.filesz == len(page) + 1
    assert module.read_vaddr(1, 8) == page[:8]
    from harness.unwind_data import extract_unwind_data

    data = extract_unwind_data(path)
    assert data.synthesized == [(0, 9)]
    assert data.deltas[0] == (0, UnwindRule(CFA_SIGNAL))
    module.close()


MUSL_LIBC = Path("/lib/x86_64-linux-musl/libc.so")


@pytest.mark.slow
def test_validate_deltas_on_musl() -> None:
    """The emulator (validate-deltas) agrees with the synthesized rules of musl's
    libc, which has no CFI, at nearly every instruction it executes."""
    if not MUSL_LIBC.exists() or shutil.which("musl-gcc") is None:
        pytest.skip("musl is not installed (apt-get install musl-tools)")
    from harness.check.delta_check import validate_module

    result = validate_module(MUSL_LIBC)
    assert result.started > 1500
    assert len(result.distinct) > 25_000
    assert len(result.mismatches) * 200 < len(result.distinct), result.report(show=3)


def test_synthesized_ranges_from_the_cache_tail(tmp_path: Path) -> None:
    """analyze reads a module's synthesized ranges without decoding its deltas; they
    are the ones the full decode gives (and a damaged cache falls back to it)."""
    from harness.files import sha256_file
    from harness.unwind_data import FORMAT_VERSION, module_unwind_data, synthesized_ranges

    program = tmp_path / "bare"
    program.write_bytes(_image(bytes.fromhex("55 4889e5 31c0 5d c3") + bytes(4088), 62))
    content = sha256_file(program)
    full = module_unwind_data(program, content, tmp_path).synthesized
    assert full and synthesized_ranges(program, content, tmp_path) == tuple(full)
    cache = tmp_path / "unwind" / f"{content}.v{FORMAT_VERSION}.bin"
    cache.write_bytes(cache.read_bytes()[:-1] + b"\0")  # a damaged checksum
    synthesized_ranges.cache_clear()
    assert synthesized_ranges(program, content, tmp_path) == tuple(full)
