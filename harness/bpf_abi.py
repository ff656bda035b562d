"""ctypes mirror of bpf_src/types.h: the one place Python knows the C layouts.

`check_abi` compares these against the sizes the compiled shared object reports,
so a header change that is not mirrored here fails loudly at load time.
"""

from __future__ import annotations

import ctypes
from ctypes import c_int32, c_uint8, c_uint16, c_uint32, c_uint64

from .errors import BuildError

ARCH_AMD64 = "amd64"
ARCH_ARM64 = "arm64"
EM_X86_64 = 62
EM_AARCH64 = 183

MAX_FRAMES = 512
DELTA_PAGE_BITS = 16

CFA_INVALID, CFA_STOP, CFA_SP, CFA_FP, CFA_PLT, CFA_SIGNAL = range(6)

FRAME_NATIVE = 1
FRAME_ERROR = 2
FRAME_FLAG_RETURN_ADDRESS = 1
FRAME_FLAG_SIGNAL = 2

TRACE_STATUS_RUNNING = 0
TRACE_STATUS_DONE = 1
TRACE_STATUS_ABORTED = 2

# ERR_* codes of types.h and the names used in formatted frames.
ERROR_NAMES: dict[int, str] = {
    1: "native_pc_not_mapped",
    2: "native_no_unwind_rule",
    3: "native_read_return_address",
    4: "native_read_frame_pointer",
    5: "native_read_signal_frame",
    6: "native_stale_link_register",
    7: "native_stack_not_progressing",
    8: "native_max_frames",
    9: "native_map_lookup",
    10: "native_zero_pc",
    11: "native_tail_call",
}

# Program names in prog-array slot order (PROG_* in types.h).
TAIL_CALL_PROGRAMS = ["unwind_native"]
ENTRY_PROGRAM = "native_tracer_entry"


class RegsAmd64(ctypes.Structure):
    """struct pt_regs (x86_64), in NT_PRSTATUS order minus the segment tail."""

    _fields_ = [
        (name, c_uint64)
        for name in (
            "r15 r14 r13 r12 bp bx r11 r10 r9 r8 ax cx dx si di orig_ax ip cs flags sp ss".split()
        )
    ]


class RegsArm64(ctypes.Structure):
    """struct user_pt_regs (arm64)."""

    _fields_ = [("regs", c_uint64 * 31), ("sp", c_uint64), ("pc", c_uint64), ("pstate", c_uint64)]


def regs_type(arch: str) -> type[ctypes.Structure]:
    return RegsAmd64 if arch == ARCH_AMD64 else RegsArm64


def perf_event_ctx_type(arch: str) -> type[ctypes.Structure]:
    """struct perf_event_ctx for the target (its first member differs per arch)."""

    class PerfEventCtx(ctypes.Structure):
        _fields_ = [("regs", regs_type(arch)), ("sample_period", c_uint64), ("addr", c_uint64)]

    return PerfEventCtx


class UnwindRule(ctypes.Structure):
    _fields_ = [
        ("cfa_op", c_uint8),
        ("aux", c_uint8),
        ("pad", c_uint16),
        ("cfa_param", c_int32),
        ("fp_offset", c_int32),
        ("ra_offset", c_int32),
    ]


class StackDelta(ctypes.Structure):
    _fields_ = [("addr_low", c_uint16), ("rule", c_uint16)]


class DeltaPageKey(ctypes.Structure):
    _fields_ = [("file_id", c_uint64), ("page", c_uint64)]


class DeltaPage(ctypes.Structure):
    _fields_ = [("first", c_uint32), ("count", c_uint32)]


class MappingKey(ctypes.Structure):
    _fields_ = [("prefixlen", c_uint32), ("pid", c_uint32), ("addr_be", c_uint64)]


class MappingInfo(ctypes.Structure):
    _fields_ = [("file_id", c_uint64), ("bias", c_uint64)]


class UnwinderConfig(ctypes.Structure):
    _fields_ = [("ra_mask", c_uint64)]


class Frame(ctypes.Structure):
    _fields_ = [
        ("file_id", c_uint64),
        ("addr", c_uint64),
        ("cfa", c_uint64),
        ("error", c_uint16),
        ("kind", c_uint8),
        ("flags", c_uint8),
        ("pad", c_uint32),
    ]


class Trace(ctypes.Structure):
    _fields_ = [
        ("pid", c_uint32),
        ("tid", c_uint32),
        ("num_frames", c_uint32),
        ("status", c_uint32),
        ("frames", Frame * MAX_FRAMES),
    ]


class UnwindState(ctypes.Structure):
    _fields_ = [
        ("pc", c_uint64),
        ("sp", c_uint64),
        ("fp", c_uint64),
        ("lr", c_uint64),
        ("lr_valid", c_uint8),
        ("return_address", c_uint8),
        ("signal_frame", c_uint8),
        ("pad", c_uint8 * 5),
    ]


class UnwindScratch(ctypes.Structure):
    _fields_ = [("state", UnwindState), ("trace", Trace)]


# Every map of bpf_src/maps.h: name -> (map type, key size, value size, max_entries).
# Prog and perf-event arrays map u32 -> u32 as the kernel requires.
MAP_SPECS: dict[str, tuple[int, int, int, int]] = {
    "pid_mappings": (11, ctypes.sizeof(MappingKey), ctypes.sizeof(MappingInfo), 65536),
    "delta_pages": (1, ctypes.sizeof(DeltaPageKey), ctypes.sizeof(DeltaPage), 65536),
    "stack_deltas": (2, 4, ctypes.sizeof(StackDelta), 1 << 22),
    "unwind_rules": (2, 4, ctypes.sizeof(UnwindRule), 65536),
    "unwinder_config": (2, 4, ctypes.sizeof(UnwinderConfig), 1),
    "unwind_scratch": (6, 4, ctypes.sizeof(UnwindScratch), 1),
    "unwind_progs": (3, 4, 4, 1),
    "trace_events": (4, 4, 4, 1),
}


def expected_abi(arch: str) -> list[int]:
    """The values host/shim.c's harness_abi() reports, in its order."""
    return [
        ctypes.sizeof(regs_type(arch)),
        ctypes.sizeof(perf_event_ctx_type(arch)),
        ctypes.sizeof(UnwindRule),
        ctypes.sizeof(StackDelta),
        ctypes.sizeof(DeltaPageKey),
        ctypes.sizeof(DeltaPage),
        ctypes.sizeof(MappingKey),
        ctypes.sizeof(MappingInfo),
        ctypes.sizeof(UnwinderConfig),
        ctypes.sizeof(Frame),
        ctypes.sizeof(Trace),
        Trace.frames.offset,
        ctypes.sizeof(UnwindScratch),
        MAX_FRAMES,
        DELTA_PAGE_BITS,
        EM_X86_64 if arch == ARCH_AMD64 else EM_AARCH64,
    ]


def check_abi(lib: ctypes.CDLL, arch: str, path: str) -> None:
    """Raise BuildError if the shared object disagrees with this mirror."""
    values = ctypes.POINTER(c_uint64)()
    fn = lib.harness_abi
    fn.restype = c_uint32
    fn.argtypes = [ctypes.POINTER(ctypes.POINTER(c_uint64))]
    count = fn(ctypes.byref(values))
    actual = [values[i] for i in range(count)]
    expected = expected_abi(arch)
    if actual != expected:
        raise BuildError(
            f"{path}: bpf_src/types.h and harness/bpf_abi.py disagree "
            f"(C reports {actual}, Python expects {expected}); update the mirror"
        )
