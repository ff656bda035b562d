"""The contract between the harness and an unwinder, read from the unwinder's build.

Nothing here mirrors bpf_src: `Abi` takes what the object declares
(bpf/debuginfo.py) and checks it has what the harness relies on, naming the
struct, field or constant and where it is declared when it does not:

- the entry program, and which program each prog-array slot holds: the
  enumerator `PROG_<NAME>` gives program <name>'s slot;
- the program context: the entry program's first parameter points to a struct
  whose first field `regs` is the kernel's user register block;
- the trace record the unwinder sends to user space (`struct trace` unless
  configured): `pid`, `tid`, `num_frames`, `status` and `frames`, an array of
  structs with `file_id`, `addr`, `kind`, `flags` and `error`;
- names for numbers: `enum frame_kind` (FRAME_NATIVE -> "native"),
  `enum unwind_error` (ERR_NATIVE_PC_NOT_MAPPED -> "native_pc_not_mapped"),
  `enum frame_flags` and `enum trace_status`.

The kernel's register names are facts of the kernel ABI (struct pt_regs on
x86_64, struct user_pt_regs on arm64), so they are the one thing written here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from ..arch import AMD64
from ..helpers.ctype import ArrayType, IntType, LayoutError, StructType
from .debuginfo import ObjectLayout

DEFAULT_TRACE_STRUCT = "trace"
TRACE_FIELDS = ("pid", "tid", "num_frames", "status", "frames")
FRAME_FIELDS = ("file_id", "addr", "kind", "flags", "error")

# NT_PRSTATUS names -> struct pt_regs field names (x86_64); the segment tail is not
# part of the BPF context.
_AMD64_FIELDS = {
    "r15": "r15", "r14": "r14", "r13": "r13", "r12": "r12", "rbp": "bp", "rbx": "bx",
    "r11": "r11", "r10": "r10", "r9": "r9", "r8": "r8", "rax": "ax", "rcx": "cx",
    "rdx": "dx", "rsi": "si", "rdi": "di", "orig_rax": "orig_ax", "rip": "ip", "cs": "cs",
    "eflags": "flags", "rsp": "sp", "ss": "ss",
}


def target_regs(arch: str, regs: Mapping[str, int]) -> dict[str, Any]:
    """The user register block the kernel would hand a perf-event program, as field
    values of the kernel's struct (pt_regs / user_pt_regs), from a core thread's
    registers (NT_PRSTATUS names)."""
    if arch == AMD64:
        return {field: regs.get(name, 0) for name, field in _AMD64_FIELDS.items()}
    return {"regs": [regs.get(f"x{i}", 0) for i in range(31)],
            **{name: regs.get(name, 0) for name in ("sp", "pc", "pstate")}}


def struct_codes(struct_type: StructType) -> str:
    """The value codes of a struct's packing format (pads left out)."""
    return "".join(c for c in struct_type.flat_format() if c.isalpha() and c != "x")


def _suffix_names(values: Mapping[str, int], prefix: str) -> dict[int, str]:
    return {v: k.removeprefix(prefix).lower() for k, v in values.items()}


@dataclass(frozen=True)
class Abi:
    """One build of an unwinder, as the harness drives it."""

    layout: ObjectLayout
    arch: str
    entry_setting: str | None = None
    trace_struct_name: str = DEFAULT_TRACE_STRUCT

    # -- programs

    @cached_property
    def tail_call_slots(self) -> dict[int, str]:
        """Prog-array slot -> program, from the PROG_<NAME> enumerators."""
        slots = {}
        constants = self.layout.constants
        for name in self.layout.programs:
            slot = constants.get(f"PROG_{name.upper()}")
            if slot is not None:
                slots[slot] = name
        return slots

    @cached_property
    def entry_program(self) -> str:
        """The program a sample starts in: configured, or the one program that no
        prog-array slot holds."""
        programs = self.layout.programs
        if self.entry_setting:
            if self.entry_setting not in programs:
                raise LayoutError(f"{self.layout.path}: entry program {self.entry_setting!r} "
                                  f"is not a program of the unwinder (programs: "
                                  f"{', '.join(sorted(programs)) or 'none'})")
            return self.entry_setting
        candidates = sorted(set(programs) - set(self.tail_call_slots.values()))
        if len(candidates) != 1:
            raise LayoutError(
                f"{self.layout.path}: cannot tell the entry program among "
                f"{', '.join(candidates) or 'no programs'}; set entry-program in "
                "[tool.coredump] (or give every tail-called program a PROG_<NAME> slot)")
        return candidates[0]

    @cached_property
    def context(self) -> StructType:
        """The entry program's context struct; its `regs` field is the register block."""
        program = self.layout.programs[self.entry_program]
        if program.context is None:
            raise LayoutError(f"{program.decl}: {program.name} must take a pointer to a "
                              "context struct (struct bpf_perf_event_data or alike)")
        ctx = self.layout.struct(program.context)
        if not ctx.fields or ctx.fields[0].name != "regs" or ctx.fields[0].offset != 0:
            raise LayoutError(f"struct {ctx.describe()}: the context's first field must be "
                              "`regs`, the user register block")
        return ctx

    def context_bytes(self, regs: Mapping[str, int]) -> bytes:
        """The program context for a thread with these registers (NT_PRSTATUS names).
        Once per thread: packed in one call when the register block is plain
        integers and integer arrays (the kernel's are), else field by field."""
        values = target_regs(self.arch, regs)
        order = self._context_order
        if order is None:
            return self.context.encode({"regs": values})
        flat: list[int] = []
        for name, count in order:
            if count is None:
                flat.append(values.get(name, 0) if name else 0)
            else:
                given = list(values.get(name, ()))[:count]
                flat.extend(given + [0] * (count - len(given)))
        return self.context.codec.pack(*flat)

    @cached_property
    def _context_order(self) -> list[tuple[str, int | None]] | None:
        """(register field, array length or None) in packing order; "" for the
        context's fields after `regs`, which stay zero. None: not that simple."""
        ctx = self.context
        regs = ctx.fields[0].type
        if not isinstance(regs, StructType) or regs.union or ctx.union:
            return None
        order: list[tuple[str, int | None]] = []
        for f in sorted(regs.fields, key=lambda f: f.offset):
            if isinstance(f.type, IntType):
                order.append((f.name, None))
            elif isinstance(f.type, ArrayType) and isinstance(f.type.element, IntType):
                order.append((f.name, f.type.count))
            else:
                return None
        for f in sorted(ctx.fields[1:], key=lambda f: f.offset):
            if not isinstance(f.type, IntType):
                return None
            order.append(("", None))
        if len(struct_codes(ctx)) != sum(1 if c is None else c for _, c in order):
            return None
        return order

    # -- traces

    @cached_property
    def trace_struct(self) -> StructType:
        trace = self.layout.struct(self.trace_struct_name)
        for name in TRACE_FIELDS:
            trace.field(name)
        return trace

    @cached_property
    def frames_field(self) -> ArrayType:
        frames = self.trace_struct.field("frames").type
        if not isinstance(frames, ArrayType) or not isinstance(frames.element, StructType):
            raise LayoutError(f"struct {self.trace_struct.describe()}: `frames` must be an "
                              "array of frame structs")
        for name in FRAME_FIELDS:
            frames.element.field(name)
        return frames

    @cached_property
    def frame_kinds(self) -> dict[int, str]:
        return _suffix_names(self.layout.enum("frame_kind"), "FRAME_")

    @cached_property
    def error_names(self) -> dict[int, str]:
        """Error code -> the name printed in frames: the enumerator without ERR_, lowercased."""
        return {k: v for k, v in _suffix_names(self.layout.enum("unwind_error"), "ERR_").items()
                if k != 0}

    @cached_property
    def frame_flags(self) -> dict[str, int]:
        """Flag name (FRAME_FLAG_SIGNAL -> "signal") -> bit."""
        values = self.layout.enums.get("frame_flags", {})
        return {k.removeprefix("FRAME_FLAG_").lower(): v for k, v in values.items()}

    @cached_property
    def trace_statuses(self) -> dict[int, str]:
        return _suffix_names(self.layout.enum("trace_status"), "TRACE_STATUS_")

    def error_name(self, code: int) -> str:
        return self.error_names.get(code, f"unknown_{code}")

    def check(self) -> None:
        """Raise LayoutError now for anything the harness will need, not mid-replay."""
        for attr in ("entry_program", "context", "trace_struct", "frames_field", "frame_kinds",
                     "error_names", "trace_statuses"):
            getattr(self, attr)
        if "native" not in self.frame_kinds.values() or "error" not in self.frame_kinds.values():
            raise LayoutError(f"{self.layout.path}: enum frame_kind must define FRAME_NATIVE "
                              "and FRAME_ERROR")
