"""Drive the host build of the unwinder through ctypes.

One `Unwinder` per target architecture and build flavour lives in a process:
the shared object's helper pointers and maps are globals, so a second
instance would share them anyway. `reset()` empties the maps between
processes; the agent (bpf/agent.py) fills them for the next one.

The C code's DEBUG_PRINT messages go to the `harness.bpf.trace` logger at
DEBUG level; while that level is off, the C side does not even format them
(`coredump analyze -debug-ebpf` turns it on, as does `pytest --log-level=DEBUG`).
"""

from __future__ import annotations

import ctypes
import logging
from collections.abc import Mapping
from ctypes import CFUNCTYPE, POINTER, c_char_p, c_int, c_void_p
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from ..errors import HarnessError
from ..helpers import (
    MAP_CLASSES,
    ArrayMap,
    BpfMap,
    HelperEnv,
    PerfEventArrayMap,
    ProgArrayMap,
    make_helpers,
)
from ..helpers.bpf_helpers import MemoryReader
from ..helpers.ctype import LayoutError, StructType
from ..paths import debug_build_requested
from .abi import Abi
from .build import UnwinderSource, build_unwinder, default_source
from .debuginfo import MapDecl, read_layout

trace_log = logging.getLogger("harness.bpf.trace")
_LOG_FN = CFUNCTYPE(None, c_char_p)


def _debug_print(message: bytes | None) -> None:
    """harness_host.c's harness_log: one formatted DEBUG_PRINT message."""
    trace_log.debug("%s", (message or b"").decode(errors="replace"))


_DEBUG_PRINT = _LOG_FN(_debug_print)  # module-level: never freed while C may call it
_DEBUG_PRINT_ADDR = ctypes.cast(_DEBUG_PRINT, c_void_p).value


class RawFrame(NamedTuple):
    """One frame as the C code recorded it: the fields the harness relies on, their
    names from the unwinder's enums, and the whole record (every field of the C
    struct, as a named tuple) for anything else. A named tuple: traces have
    thousands of frames, and a tuple is what is cheapest to make."""

    file_id: int
    addr: int
    cfa: int
    kind: int
    flags: int
    error: int
    kind_name: str = "native"   # enum frame_kind without FRAME_, lowercased
    error_name: str = ""        # enum unwind_error without ERR_, lowercased (error frames)
    signal: bool = False        # FRAME_FLAG_SIGNAL: the frame was interrupted by a signal
    record: Any = None


@dataclass
class TraceResult:
    pid: int
    tid: int
    status: int
    frames: list[RawFrame]
    tail_calls: int = 0
    reads: int = 0
    failed_reads: int = 0
    faults_hit: set[int] = field(default_factory=set)
    status_name: str = ""
    record: Any = None  # the trace header's other fields, by name


def _create_map(decl: MapDecl) -> BpfMap:
    cls = MAP_CLASSES.get(decl.map_type)
    if cls is None:
        known = ", ".join(f"{c.type_name} ({t})" for t, c in sorted(MAP_CLASSES.items()))
        raise LayoutError(f"{decl.decl}: map {decl.name} has type {decl.map_type}, which the "
                          f"harness does not implement (it implements {known})")
    bpf_map = cls(decl.name, decl.key_size, decl.value_size, decl.max_entries)
    bpf_map.key_type, bpf_map.value_type, bpf_map.decl = decl.key, decl.value, decl.decl
    return bpf_map


class Unwinder:
    """One build of an unwinder for one target architecture, with its maps and
    helpers, all created from what the build declares (bpf/abi.py)."""

    def __init__(self, arch: str, debug: bool = False,
                 source: UnwinderSource | None = None) -> None:
        self.arch = arch
        self.debug = debug
        self.source = source or default_source()
        self.path = build_unwinder(arch, debug, self.source)
        self.layout = read_layout(self.path, self.source.directory)
        self.abi = Abi(self.layout, arch, self.source.entry_program, self.source.trace_struct)
        self.abi.check()
        self.lib = ctypes.CDLL(str(self.path))

        self.maps: dict[str, BpfMap] = {}
        maps_by_addr: dict[int, BpfMap] = {}
        for name, decl in self.layout.maps.items():
            bpf_map = self.maps[name] = _create_map(decl)
            maps_by_addr[ctypes.addressof(ctypes.c_char.in_dll(self.lib, name))] = bpf_map
        for bpf_map in self.maps.values():
            if isinstance(bpf_map, ProgArrayMap):
                self._install_programs(bpf_map)

        self.env = HelperEnv(maps_by_addr)
        self._callbacks = make_helpers(self.env)  # referenced here so they are never freed
        for symbol, callback in self._callbacks.items():
            c_void_p.in_dll(self.lib, symbol).value = ctypes.cast(callback, c_void_p).value

        self._set_array = self.lib.harness_set_array
        self._set_array.argtypes = [c_void_p, c_void_p, ctypes.c_ulonglong, ctypes.c_uint]
        self._set_array.restype = c_int
        self._map_addrs = {m.name: a for a, m in maps_by_addr.items()}
        self._register_arrays()

        self._log_slot = c_void_p.in_dll(self.lib, "harness_log")
        self._entry = self._symbol_addr(self.abi.entry_program)
        self._run = self.lib.harness_run_program
        self._run.argtypes = [c_void_p, c_void_p, POINTER(c_int)]
        self._run.restype = c_int
        self._frame_names = self._frame_decoder()
        self._outputs = [m for m in self.maps.values() if isinstance(m, PerfEventArrayMap)]
        trace = self.abi.trace_struct
        others = tuple(f for f in trace.fields if f.name != "frames")
        # the trace's fields other than its frames, unpacked in one call
        self._header = StructType(f"{trace.name} header",
                                  max((f.offset + f.type.size for f in others), default=0),
                                  others, trace.decl)
        self._frames_offset = trace.field("frames").offset

    def _install_programs(self, progs: ProgArrayMap) -> None:
        for slot, program in self.abi.tail_call_slots.items():
            if not 0 <= slot < progs.max_entries:
                raise LayoutError(f"{progs.describe()}: PROG_{program.upper()} = {slot} is "
                                  f"outside its {progs.max_entries} slots")
            progs.programs[slot] = self._symbol_addr(program)

    def _symbol_addr(self, name: str) -> int:
        addr = ctypes.cast(getattr(self.lib, name), c_void_p).value
        if not addr:
            raise HarnessError(f"{self.path}: program {name} not found")
        return addr

    def _frame_decoder(self) -> tuple[dict[int, str], dict[int, str], int, bool]:
        abi = self.abi
        frame_type = abi.frames_field.element
        has_cfa = frame_type.has_field("cfa")  # type: ignore[attr-defined]
        return abi.frame_kinds, abi.error_names, abi.frame_flags.get("signal", 0), has_cfa

    def _register_arrays(self) -> None:
        """Tell the C side where each array map's values are (lookups are index
        arithmetic there); again after a reset, which moves them."""
        for name, bpf_map in self.maps.items():
            if isinstance(bpf_map, ArrayMap):
                if self._set_array(self._map_addrs[name], bpf_map.base, bpf_map.value_size,
                                   bpf_map.max_entries) != 0:
                    raise HarnessError(f"{self.path}: more array maps than the host glue "
                                       "holds (MAX_DIRECT_ARRAYS)")

    def reset(self) -> None:
        """Forget everything about the previous process."""
        for bpf_map in self.maps.values():
            bpf_map.clear()
        self._register_arrays()

    def unwind(self, regs: Mapping[str, int], pid: int, tid: int, read_memory: MemoryReader,
               fault_addresses: frozenset[int] = frozenset(),
               thread_pointer: int | None = None) -> TraceResult:
        """Run the entry program as if a perf event interrupted thread `tid` with `regs`
        (a core thread's registers, NT_PRSTATUS names); `thread_pointer` is what the
        emulated kernel's task holds for it (helpers/bpf_helpers.py)."""
        env = self.env
        env.read_memory = read_memory
        env.pid, env.tid = pid, tid
        env.thread_pointer = thread_pointer
        env.fault_addresses = fault_addresses
        env.faults_hit = set()
        env.reads = env.failed_reads = 0
        env.errors.clear()

        self._log_slot.value = _DEBUG_PRINT_ADDR if trace_log.isEnabledFor(logging.DEBUG) \
            else None
        ctx = ctypes.create_string_buffer(self.abi.context_bytes(regs))
        tail_calls = c_int(0)
        self._run(self._entry, ctypes.addressof(ctx), ctypes.byref(tail_calls))
        if env.errors:
            raise HarnessError("a BPF helper failed while unwinding thread "
                               f"{tid}: " + "; ".join(env.errors))

        records = [r for m in self._outputs for r in m.drain()]
        if len(records) != 1:
            raise HarnessError(f"the unwinder sent {len(records)} traces for thread {tid}, not 1")
        result = self.decode_trace(records[0])
        result.tail_calls = tail_calls.value
        result.reads, result.failed_reads = env.reads, env.failed_reads
        result.faults_hit = set(env.faults_hit)
        return result

    def decode_trace(self, record: bytes) -> TraceResult:
        """A trace record as the unwinder sent it, decoded through its declared types."""
        abi = self.abi
        header = self._header.decode(record)._asdict()
        frames_offset = self._frames_offset
        kinds, errors, signal_bit, has_cfa = self._frame_names
        frames: list[RawFrame] = []
        append = frames.append
        for f in abi.frames_field.decode_prefix(record, frames_offset, header["num_frames"]):
            kind, error, flags = f.kind, f.error, f.flags
            kind_name = kinds.get(kind) or f"unknown_frame_kind_{kind}"
            error_name = (errors.get(error) or f"unknown_{error}") if error else ""
            append(RawFrame(f.file_id, f.addr, f.cfa if has_cfa else 0, kind, flags, error,
                            kind_name, error_name, bool(flags & signal_bit), f))
        return TraceResult(header["pid"], header["tid"], header["status"], frames,
                           status_name=abi.trace_statuses.get(header["status"], ""),
                           record=header)


_UNWINDERS: dict[tuple[str, bool, UnwinderSource], Unwinder] = {}


def get_unwinder(arch: str, debug: bool | None = None,
                 source: UnwinderSource | None = None) -> Unwinder:
    """The process-wide unwinder for `arch` (built on first use), of the configured
    sources unless `source` names others."""
    if debug is None:
        debug = debug_build_requested()
    source = source or default_source()
    key = (arch, debug, source)
    if key not in _UNWINDERS:
        _UNWINDERS[key] = Unwinder(arch, debug, source)
    return _UNWINDERS[key]
