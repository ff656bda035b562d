"""The unwinder as the kernel sees it: the `clang -target bpf` build of bpf_src
(bpf/build.py) loaded into the running kernel's verifier, and its verdicts.

The host build proves the C unwinds correctly; this module
proves the same C is a BPF program the kernel accepts: bounded loops, checked
map values, at most 512 bytes of stack, every pointer checked. Both target
architectures are built and verified on any host.

The one check that depends on the kernel's own architecture is the program
context: a perf_event program reads registers from `struct
bpf_perf_event_data`, whose `regs` member is the running kernel's
bpf_user_pt_regs_t (x86_64: struct pt_regs, 168 bytes; arm64: struct
user_pt_regs, 272 bytes). An arm64 program reading `regs.pc` (offset 256) is
out of bounds for an x86_64 kernel. When a program is rejected for exactly
that -- a ctx access beyond the running kernel's context but inside the
target's -- it is verified again as a tracepoint program, the same
instructions with the same helpers, whose context is bounds-checked against
8..2048 bytes instead. The report says so for every program it applies to.
"""

from __future__ import annotations

import os
import platform
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from ..arch import AMD64, ARCH_NAMES, ARM64, host_arch
from . import libbpf
from .build import build_unwinder_bpf

# sizeof(struct bpf_perf_event_data) per kernel architecture: the register
# block (bpf_user_pt_regs_t) plus sample_period and addr. Kernel uapi facts;
# tests/test_bpf_verify.py checks the ctx mirror of bpf/abi.py against them.
PERF_EVENT_CTX_SIZE = {AMD64: 168 + 16, ARM64: 272 + 16}

MAX_STACK = 512  # bytes of BPF stack per program

_CTX_ACCESS = re.compile(r"invalid bpf_context access off=(\d+) size=(\d+)")


def kernel_arch() -> str | None:
    """The running kernel's architecture as a target name, None if neither."""
    return host_arch()


@dataclass(frozen=True)
class Verdict:
    """One program of one architecture, as the verifier judged it."""

    arch: str
    program: str
    prog_type: str
    verified: bool
    errno: int
    insn_count: int                 # instructions of the program as loaded
    processed_insns: int | None     # "processed N insns" of the verifier log
    verified_insns: int | None      # bpf_prog_info.verified_insns (kernel 5.16+)
    stack_depths: tuple[int, ...]   # per BPF subprogram, from "stack depth A+B"
    verification_usec: int | None
    log: str
    note: str = ""

    @property
    def stack_depth(self) -> int:
        """Stack bytes of the program, subprograms added up (an upper bound
        of what any call chain in it uses)."""
        return sum(self.stack_depths)

    @property
    def stack_text(self) -> str:
        return "+".join(str(d) for d in self.stack_depths) or "?"

    @property
    def error(self) -> str:
        return "" if self.verified else os.strerror(self.errno)

    def log_tail(self, lines: int) -> list[str]:
        return self.log.rstrip("\n").splitlines()[-lines:]


def _int_after(pattern: str, log: str) -> int | None:
    m = re.search(pattern, log)
    return int(m.group(1)) if m else None


def _verdict(arch: str, result: libbpf.LoadResult, note: str = "") -> Verdict:
    depths = re.search(r"^stack depth ([\d+]+)$", result.log, re.MULTILINE)
    log = result.log
    if not result.loaded and not log.strip():
        log = "".join(result.libbpf_messages)  # failed before the verifier ran
    return Verdict(
        arch=arch, program=result.program, prog_type=result.prog_type,
        verified=result.loaded, errno=result.errno, insn_count=result.insn_count,
        processed_insns=_int_after(r"processed (\d+) insns", result.log),
        verified_insns=result.verified_insns,
        stack_depths=tuple(int(d) for d in depths.group(1).split("+")) if depths else (),
        verification_usec=_int_after(r"verification time (\d+) usec", result.log),
        log=log, note=note,
    )


def foreign_ctx_access(log: str, arch: str, kernel: str | None) -> int | None:
    """The ctx offset a rejection is about, if it is only the layout mismatch:
    the access lies beyond the running kernel's perf_event context and inside
    the target architecture's. None for every other rejection."""
    m = _CTX_ACCESS.search(log)
    if not m or kernel == arch:
        return None
    off, size = int(m.group(1)), int(m.group(2))
    kernel_size = PERF_EVENT_CTX_SIZE.get(kernel or "", 0)
    if off >= kernel_size and off + size <= PERF_EVENT_CTX_SIZE[arch] and size == 8:
        return off
    return None


def _stats_load(obj: Path, program: str, prog_type: int) -> libbpf.LoadResult:
    """Load at the stats log level: the counts, the stack depth and the error."""
    return libbpf.load_program(str(obj), program, prog_type, libbpf.LOG_LEVEL_STATS)


def _with_trace(obj: Path, result: libbpf.LoadResult, prog_type: int) -> libbpf.LoadResult:
    """A rejected program's result with the instruction-level log, whose tail
    shows the path that failed. The verdict stays the stats-level one: a trace
    that overflows its buffer fails with ENOSPC by itself. (Kernels since 6.4
    keep the end of an overflowing log, older ones its start.)"""
    if result.loaded:
        return result
    traced = libbpf.load_program(str(obj), result.program, prog_type,
                                 libbpf.LOG_LEVEL_TRACE | libbpf.LOG_LEVEL_STATS, 16 << 20)
    return replace(result, log=traced.log)


# Program types verified as their section says; every other program is
# verified as perf_event, the type a profiler attaches the unwinder as.
SECTION_TYPES = (libbpf.BPF_PROG_TYPE_RAW_TRACEPOINT,)


def verify_program(obj: Path, program: str, arch: str, trace: bool = False,
                   section_type: int | None = None) -> Verdict:
    """Load one program (with all maps at their declared sizes) as a perf_event
    program (or as `section_type`, one of SECTION_TYPES, for `coredump live`'s
    raw_tp entry); on the ctx-layout mismatch only, again as a tracepoint (see
    the module docstring). `trace`: rejected programs carry the instruction log."""
    prog_type = section_type if section_type in SECTION_TYPES else \
        libbpf.BPF_PROG_TYPE_PERF_EVENT
    assert prog_type is not None
    result = _stats_load(obj, program, prog_type)
    kernel = kernel_arch()
    off = None if result.loaded else foreign_ctx_access(result.log, arch, kernel)
    note = ""
    if off is not None:
        note = (f"perf_event rejects ctx offset {off} on this {kernel or platform.machine()} "
                f"kernel (its context has {PERF_EVENT_CTX_SIZE.get(kernel or '', 0)} bytes, "
                f"{arch}'s {PERF_EVENT_CTX_SIZE[arch]}); verified as tracepoint: same code and "
                "helpers, ctx bounds 8..2048")
        prog_type = libbpf.BPF_PROG_TYPE_TRACEPOINT
        result = _stats_load(obj, program, prog_type)
    if trace:
        result = _with_trace(obj, result, prog_type)
    return _verdict(arch, result, note)


def require_bpf() -> None:
    """Raise LibbpfUnavailable (with the reason) if programs cannot be loaded."""
    reason = libbpf.bpf_unavailable_reason()
    if reason:
        raise libbpf.LibbpfUnavailable(reason)


def verify_object(obj: Path, arch: str, trace: bool = False) -> list[Verdict]:
    """Every program of a BPF object, each loaded on its own."""
    require_bpf()
    return [verify_program(obj, name, arch, trace, section_type)
            for name, section_type in libbpf.program_types(str(obj)).items()]


def verify_unwinder(arches: Sequence[str] = ARCH_NAMES, trace: bool = False) -> list[Verdict]:
    """Build and verify the unwinder's programs for each architecture."""
    require_bpf()
    verdicts: list[Verdict] = []
    for arch in arches:
        verdicts += verify_object(build_unwinder_bpf(arch), arch, trace)
    return verdicts
