"""ctypes mirror of bpf_src/types.h and maps.h: the one place Python knows the C layouts.

`check_abi` compares these against the sizes the compiled shared object reports,
so a header change that is not mirrored here fails loudly at load time, and
tests/test_abi_constants.py compares the constants with the header's. The rule
vocabulary (CFA_*) is unwind_data's, which produces the rules.
"""

from __future__ import annotations

import ctypes
from collections.abc import Mapping
from ctypes import c_int32, c_uint8, c_uint16, c_uint32, c_uint64

from ..arch import AMD64, ARCHES
from ..errors import BuildError
from ..helpers.maps import (
    BPF_MAP_TYPE_ARRAY,
    BPF_MAP_TYPE_HASH,
    BPF_MAP_TYPE_LPM_TRIE,
    BPF_MAP_TYPE_PERCPU_ARRAY,
    BPF_MAP_TYPE_PERF_EVENT_ARRAY,
    BPF_MAP_TYPE_PROG_ARRAY,
)

MAX_FRAMES = 512
DELTA_PAGE_BITS = 16

# struct mapping_key: the LPM trie matches prefixlen bits of (pid, address)
MAPPING_KEY_PID_BITS = 32
MAPPING_KEY_ADDR_BITS = 64

FRAME_NATIVE = 1
FRAME_ERROR = 2
FRAME_FLAG_RETURN_ADDRESS = 1
FRAME_FLAG_SIGNAL = 2

TRACE_STATUS_RUNNING = 0
TRACE_STATUS_DONE = 1
TRACE_STATUS_ABORTED = 2

# enum unwind_error of types.h: each name is the C name lowercased without ERR_.
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
    12: "native_delta_search_exhausted",
    13: "native_empty_delta_page",
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
    return RegsAmd64 if arch == AMD64 else RegsArm64


# NT_PRSTATUS names -> struct pt_regs field names (x86_64); the segment tail is not
# part of the BPF context.
_AMD64_FIELDS = {
    "r15": "r15", "r14": "r14", "r13": "r13", "r12": "r12", "rbp": "bp", "rbx": "bx",
    "r11": "r11", "r10": "r10", "r9": "r9", "r8": "r8", "rax": "ax", "rcx": "cx",
    "rdx": "dx", "rsi": "si", "rdi": "di", "orig_rax": "orig_ax", "rip": "ip", "cs": "cs",
    "eflags": "flags", "rsp": "sp", "ss": "ss",
}


def target_regs(arch: str, regs: Mapping[str, int]) -> ctypes.Structure:
    """The perf-event register context the kernel would hand the program, from a
    core thread's registers (NT_PRSTATUS names)."""
    out = regs_type(arch)()
    if arch == AMD64:
        for name, field_name in _AMD64_FIELDS.items():
            setattr(out, field_name, regs.get(name, 0))
    else:
        for i in range(31):
            out.regs[i] = regs.get(f"x{i}", 0)  # type: ignore[attr-defined]
        for name in ("sp", "pc", "pstate"):
            setattr(out, name, regs.get(name, 0))
    return out


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
U32 = 4  # key size of array maps, value size of prog and perf-event arrays
MAP_SPECS: dict[str, tuple[int, int, int, int]] = {
    "pid_mappings": (BPF_MAP_TYPE_LPM_TRIE, ctypes.sizeof(MappingKey),
                     ctypes.sizeof(MappingInfo), 65536),
    "delta_pages": (BPF_MAP_TYPE_HASH, ctypes.sizeof(DeltaPageKey), ctypes.sizeof(DeltaPage),
                    65536),
    "stack_deltas": (BPF_MAP_TYPE_ARRAY, U32, ctypes.sizeof(StackDelta), 1 << 22),
    "unwind_rules": (BPF_MAP_TYPE_ARRAY, U32, ctypes.sizeof(UnwindRule), 65536),
    "unwinder_config": (BPF_MAP_TYPE_ARRAY, U32, ctypes.sizeof(UnwinderConfig), 1),
    "unwind_scratch": (BPF_MAP_TYPE_PERCPU_ARRAY, U32, ctypes.sizeof(UnwindScratch), 1),
    "unwind_progs": (BPF_MAP_TYPE_PROG_ARRAY, U32, U32, 1),
    "trace_events": (BPF_MAP_TYPE_PERF_EVENT_ARRAY, U32, U32, 1),
}


def expected_abi(arch: str) -> dict[str, int]:
    """The values host/shim.c's harness_abi() reports, named, in its order."""
    return {
        "sizeof(struct target_regs)": ctypes.sizeof(regs_type(arch)),
        "sizeof(struct perf_event_ctx)": ctypes.sizeof(perf_event_ctx_type(arch)),
        "sizeof(struct unwind_rule)": ctypes.sizeof(UnwindRule),
        "sizeof(struct stack_delta)": ctypes.sizeof(StackDelta),
        "sizeof(struct delta_page_key)": ctypes.sizeof(DeltaPageKey),
        "sizeof(struct delta_page)": ctypes.sizeof(DeltaPage),
        "sizeof(struct mapping_key)": ctypes.sizeof(MappingKey),
        "sizeof(struct mapping_info)": ctypes.sizeof(MappingInfo),
        "sizeof(struct unwinder_config)": ctypes.sizeof(UnwinderConfig),
        "sizeof(struct frame)": ctypes.sizeof(Frame),
        "sizeof(struct trace)": ctypes.sizeof(Trace),
        "offsetof(struct trace, frames)": Trace.frames.offset,
        "sizeof(struct unwind_scratch)": ctypes.sizeof(UnwindScratch),
        "MAX_FRAMES": MAX_FRAMES,
        "DELTA_PAGE_BITS": DELTA_PAGE_BITS,
        "e_machine of the target": ARCHES[arch].elf_machine,
    }


def check_abi(lib: ctypes.CDLL, arch: str, path: str) -> None:
    """Raise BuildError if the shared object disagrees with this mirror."""
    values = ctypes.POINTER(c_uint64)()
    fn = lib.harness_abi
    fn.restype = c_uint32
    fn.argtypes = [ctypes.POINTER(ctypes.POINTER(c_uint64))]
    count = fn(ctypes.byref(values))
    actual = [values[i] for i in range(count)]
    expected = expected_abi(arch)
    if actual == list(expected.values()):
        return
    if len(actual) != len(expected):
        detail = f"C reports {len(actual)} values, Python expects {len(expected)}"
    else:
        detail = "; ".join(f"{name}: C {got}, Python {want}"
                           for (name, want), got in zip(expected.items(), actual, strict=True)
                           if got != want)
    raise BuildError(f"{path}: bpf_src/types.h and harness/bpf/abi.py disagree ({detail}); "
                     "update the mirror")
