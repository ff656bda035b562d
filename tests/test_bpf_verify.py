"""The unwinder is real BPF: clang -target bpf builds it and the running
kernel's verifier accepts every program of both architectures, and the same
check rejects a program the kernel must not run."""

from __future__ import annotations

import re
import shutil

import pytest

from harness.arch import AMD64, ARCH_NAMES, ARM64
from harness.bpf import build as bpf_build
from harness.bpf import libbpf, verifier
from harness.bpf.bridge import get_unwinder
from harness.bpf.debuginfo import read_layout
from harness.cli import main
from harness.paths import BPF_SRC, REPO_ROOT

FIXTURE = REPO_ROOT / "tests" / "fixtures" / "unbounded_loop.bpf.c"
BPF_PERF_EVENT_ARRAY = 4


def _need_clang() -> None:
    if not shutil.which("clang"):
        pytest.skip("clang is not installed (scripts/bootstrap installs it)")


def _need_libbpf() -> None:
    try:
        libbpf.libbpf()
    except libbpf.LibbpfUnavailable as e:
        pytest.skip(str(e))


@pytest.fixture
def bpf_allowed() -> None:
    """Skip, with the kernel's reason, where bpf() may not load programs."""
    _need_clang()
    reason = libbpf.bpf_unavailable_reason()
    if reason:
        pytest.skip(reason)


def _programs(arch: str) -> list[str]:
    return sorted(get_unwinder(arch).layout.programs)


def _kernel_only(arch: str) -> tuple[set[str], set[str]]:
    """Programs and maps of the BPF build declared under bpf_src/kernel/ (coredump
    live's entry), which the host build leaves out, from the BPF object's DWARF."""
    layout = read_layout(bpf_build.build_unwinder_bpf(arch), BPF_SRC)
    return ({p.name for p in layout.programs.values() if p.decl.startswith("bpf_src/kernel/")},
            {m.name for m in layout.maps.values() if m.decl.startswith("bpf_src/kernel/")})


@pytest.mark.parametrize("arch", ARCH_NAMES)
def test_bpf_build_has_the_programs_and_maps_the_host_build_declares(arch: str) -> None:
    """Two readers of the same C agree: libbpf on the BPF object's BTF, and the
    harness on the host build's DWARF (which is what the emulated maps are made from)."""
    _need_clang()
    _need_libbpf()
    obj = bpf_build.build_unwinder_bpf(arch)
    assert bpf_build.btf_size(obj) > 0
    layout = get_unwinder(arch).layout
    kernel_programs, kernel_maps = _kernel_only(arch)
    assert kernel_programs == {"live_syscall_entry"} and kernel_maps == {"live_targets"}
    assert sorted(libbpf.program_names(str(obj))) == sorted({*layout.programs,
                                                             *kernel_programs})
    # libbpf sizes the perf event array by CPU count at load time.
    specs = {m.name: m for m in libbpf.map_specs(str(obj))}
    assert set(specs) == {*layout.maps, *kernel_maps}
    for name, decl in layout.maps.items():
        m = specs[name]
        assert (m.type, m.key_size, m.value_size, m.flags) == (
            decl.map_type, decl.key_size, decl.value_size, decl.flags), name
        if decl.map_type != BPF_PERF_EVENT_ARRAY:
            assert m.max_entries == decl.max_entries, name
    assert specs["pid_mappings"].flags == 1  # BPF_F_NO_PREALLOC, required for LPM tries


@pytest.mark.bpf
@pytest.mark.parametrize("arch", ARCH_NAMES)
def test_unwinder_programs_pass_the_kernel_verifier(arch: str, bpf_allowed: None) -> None:
    verdicts = verifier.verify_unwinder([arch])
    assert sorted(v.program for v in verdicts) == sorted({*_programs(arch),
                                                          *_kernel_only(arch)[0]})
    for v in verdicts:
        assert v.verified, f"{arch} {v.program} rejected:\n" + "\n".join(v.log_tail(20))
        assert v.processed_insns and v.processed_insns > 0
        if v.verified_insns is not None:
            assert v.verified_insns == v.processed_insns
        assert v.stack_depths and 0 < v.stack_depth <= verifier.MAX_STACK
    by_name = {v.program: v for v in verdicts}
    # unwind_native touches no ctx field: it is a perf_event program everywhere.
    assert by_name["unwind_native"].prog_type == "perf_event"
    entry = by_name["native_tracer_entry"]
    if verifier.kernel_arch() == arch:
        assert entry.prog_type == "perf_event" and not entry.note
    else:
        assert entry.prog_type == "tracepoint" and "ctx offset" in entry.note
    # coredump live's entry is verified as the raw tracepoint program it runs as
    assert by_name["live_syscall_entry"].prog_type == "raw_tracepoint"


@pytest.mark.bpf
def test_unbounded_loop_is_rejected(bpf_allowed: None, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bpf-verify", "-source", str(FIXTURE), "-arch", "amd64"]) == 1
    out = capsys.readouterr().out
    assert "REJECTED" in out and "unbounded_loop: rejected" in out
    assert re.search(r"BPF program is too large|infinite loop detected|back-edge", out), out


@pytest.mark.bpf
def test_cli_bpf_verify_reports_counts(bpf_allowed: None,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bpf-verify", "-arch", ARM64]) == 0
    out = capsys.readouterr().out
    for program in _programs(ARM64):
        assert re.search(rf"arm64 +│ {program} +│ \S+ +│ verified +│ +\d+ │ +\d+ │ +[\d+]+ │", out)


def test_bpf_build_cli(capsys: pytest.CaptureFixture[str]) -> None:
    _need_clang()
    assert main(["bpf-build", "-arch", AMD64]) == 0
    assert re.search(r"^amd64: .*native_stack\.bpf\.o \(\d+ bytes, \.BTF \d+ bytes\)$",
                     capsys.readouterr().out, re.MULTILINE)


def test_ctx_sizes_match_the_kernel_uapi() -> None:
    """The fallback to tracepoint trusts these sizes: the unwinder's context struct,
    as its debug info describes it, is the kernel's struct bpf_perf_event_data."""
    for arch, size in verifier.PERF_EVENT_CTX_SIZE.items():
        assert get_unwinder(arch).abi.context.size == size


def test_only_the_ctx_layout_mismatch_falls_back_to_tracepoint() -> None:
    log = "invalid bpf_context access off={} size={}\n"
    fca = verifier.foreign_ctx_access
    assert fca(log.format(256, 8), ARM64, AMD64) == 256   # arm64 pc on x86_64
    assert fca(log.format(256, 8), ARM64, ARM64) is None  # native: a real error
    assert fca(log.format(288, 8), ARM64, AMD64) is None  # past arm64's ctx too
    assert fca(log.format(120, 8), ARM64, AMD64) is None  # inside x86_64's ctx
    assert fca(log.format(256, 4), ARM64, AMD64) is None  # narrow reg read
    assert fca("R1 invalid mem access 'scalar'\n", ARM64, AMD64) is None


_ALLOWED_CONDITIONS = re.compile(
    # `#ifndef __always_inline` lets the debug build (coredump debug) turn forced
    # inlining off; it changes no logic.
    r"#\s*(ifndef UNWINDER_\w+_H|ifndef __always_inline|endif|else"
    r"|if defined\(TARGET_ARCH_X86_64\)( == defined\(TARGET_ARCH_ARM64\))?"
    r"|if defined\(__bpf__\))")


def test_one_source_no_host_only_conditionals() -> None:
    """bpf_src chooses only the target architecture and, in bpf_defs.h, how
    helpers are reached; no other #if may split host and BPF code, except to
    include a kernel-only header of bpf_src/kernel/ (the live entry program,
    which runs in the kernel only) and nothing else."""
    for path in sorted(BPF_SRC.glob("*.[ch]")):
        lines = path.read_text().splitlines()
        for number, line in enumerate(lines, 1):
            stripped = re.sub(r"/\*.*?\*/", "", line).strip()
            if not re.match(r"#\s*(if|ifdef|ifndef|elif|else|endif)\b", stripped):
                continue
            assert _ALLOWED_CONDITIONS.fullmatch(stripped), f"{path.name}:{number}: {stripped}"
            if "__bpf__" in stripped and path.name != "bpf_defs.h":
                body = [re.sub(r"/\*.*?\*/", "", x).strip() for x in lines[number:number + 2]]
                assert re.fullmatch(r'#include "kernel/\w+\.h"', body[0]) and \
                    body[1] == "#endif", f"{path.name}:{number}: {stripped} {body}"

