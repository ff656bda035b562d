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
from ctypes import CFUNCTYPE, POINTER, c_char_p, c_int, c_void_p
from dataclasses import dataclass, field

from ..errors import HarnessError
from ..helpers import (
    MAP_CLASSES,
    BpfMap,
    HelperEnv,
    PerfEventArrayMap,
    ProgArrayMap,
    make_helpers,
)
from ..helpers.bpf_helpers import MemoryReader
from ..paths import debug_build_requested
from . import abi
from .abi import ENTRY_PROGRAM, MAP_SPECS, TAIL_CALL_PROGRAMS, Trace, check_abi
from .build import build_unwinder

trace_log = logging.getLogger("harness.bpf.trace")
_LOG_FN = CFUNCTYPE(None, c_char_p)


def _debug_print(message: bytes | None) -> None:
    """host/shim.c's harness_log: one formatted DEBUG_PRINT message."""
    trace_log.debug("%s", (message or b"").decode(errors="replace"))


_DEBUG_PRINT = _LOG_FN(_debug_print)  # module-level: never freed while C may call it
_DEBUG_PRINT_ADDR = ctypes.cast(_DEBUG_PRINT, c_void_p).value


@dataclass(frozen=True)
class RawFrame:
    """One frame as the C code recorded it."""

    file_id: int
    addr: int
    cfa: int
    kind: int
    flags: int
    error: int


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


class Unwinder:
    """The unwinder shared object for one target architecture, with its maps and helpers."""

    def __init__(self, arch: str, debug: bool = False) -> None:
        self.arch = arch
        self.debug = debug
        self.path = build_unwinder(arch, debug)
        self.lib = ctypes.CDLL(str(self.path))
        check_abi(self.lib, arch, str(self.path))

        self.maps: dict[str, BpfMap] = {}
        maps_by_addr: dict[int, BpfMap] = {}
        for name, (map_type, key_size, value_size, max_entries) in MAP_SPECS.items():
            bpf_map = MAP_CLASSES[map_type](name, key_size, value_size, max_entries)
            self.maps[name] = bpf_map
            maps_by_addr[ctypes.addressof(ctypes.c_char.in_dll(self.lib, name))] = bpf_map

        progs = self.maps["unwind_progs"]
        assert isinstance(progs, ProgArrayMap)
        for slot, prog_name in enumerate(TAIL_CALL_PROGRAMS):
            progs.programs[slot] = self._symbol_addr(prog_name)

        self.env = HelperEnv(maps_by_addr)
        self._callbacks = make_helpers(self.env)  # referenced here so they are never freed
        for symbol, callback in self._callbacks.items():
            c_void_p.in_dll(self.lib, symbol).value = ctypes.cast(callback, c_void_p).value

        self._log_slot = c_void_p.in_dll(self.lib, "harness_log")
        self._entry = self._symbol_addr(ENTRY_PROGRAM)
        self._run = self.lib.harness_run_program
        self._run.argtypes = [c_void_p, c_void_p, POINTER(c_int)]
        self._run.restype = c_int
        self._ctx_type = abi.perf_event_ctx_type(arch)

    def _symbol_addr(self, name: str) -> int:
        addr = ctypes.cast(getattr(self.lib, name), c_void_p).value
        if not addr:
            raise HarnessError(f"{self.path}: program {name} not found")
        return addr

    def reset(self) -> None:
        """Forget everything about the previous process."""
        for bpf_map in self.maps.values():
            bpf_map.clear()

    def unwind(self, regs: ctypes.Structure, pid: int, tid: int, read_memory: MemoryReader,
               fault_addresses: frozenset[int] = frozenset()) -> TraceResult:
        """Run native_tracer_entry as if a perf event interrupted thread `tid` with `regs`."""
        env = self.env
        env.read_memory = read_memory
        env.pid, env.tid = pid, tid
        env.fault_addresses = fault_addresses
        env.faults_hit = set()
        env.reads = env.failed_reads = 0
        env.errors.clear()

        self._log_slot.value = _DEBUG_PRINT_ADDR if trace_log.isEnabledFor(logging.DEBUG) \
            else None
        ctx = self._ctx_type()
        ctx.regs = regs
        tail_calls = c_int(0)
        self._run(self._entry, ctypes.addressof(ctx), ctypes.byref(tail_calls))
        if env.errors:
            raise HarnessError("a BPF helper failed while unwinding thread "
                               f"{tid}: " + "; ".join(env.errors))

        events = self.maps["trace_events"]
        assert isinstance(events, PerfEventArrayMap)
        records = events.drain()
        if len(records) != 1:
            raise HarnessError(f"the unwinder sent {len(records)} traces for thread {tid}, not 1")
        trace = Trace.from_buffer_copy(records[0].ljust(ctypes.sizeof(Trace), b"\0"))
        frames = [
            RawFrame(f.file_id, f.addr, f.cfa, f.kind, f.flags, f.error)
            for f in trace.frames[: min(trace.num_frames, abi.MAX_FRAMES)]
        ]
        return TraceResult(trace.pid, trace.tid, trace.status, frames, tail_calls.value,
                           env.reads, env.failed_reads, set(env.faults_hit))


_UNWINDERS: dict[tuple[str, bool], Unwinder] = {}


def get_unwinder(arch: str, debug: bool | None = None) -> Unwinder:
    """The process-wide unwinder for `arch` (built on first use)."""
    if debug is None:
        debug = debug_build_requested()
    key = (arch, debug)
    if key not in _UNWINDERS:
        _UNWINDERS[key] = Unwinder(arch, debug)
    return _UNWINDERS[key]
