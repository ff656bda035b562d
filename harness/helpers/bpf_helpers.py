"""BPF helper functions implemented in Python and handed to C via ctypes.

Every piece of target memory the unwinder sees comes through
`probe_read_user`, which reads the process model and copies into the C
buffer; C never dereferences a target address itself, so a wrong address in
the unwinder is a failed read, not a crash of the Python process.
"""

from __future__ import annotations

import ctypes
import time
from collections.abc import Callable
from ctypes import CFUNCTYPE, c_int64, c_uint32, c_uint64, c_void_p
from dataclasses import dataclass, field
from typing import Any

from .maps import BpfMap, PerfEventArrayMap, ProgArrayMap, RingBufMap

EFAULT = 14
EINVAL = 22
MAX_READ_SIZE = 1 << 16  # no BPF program can ask for more in one read

MemoryReader = Callable[[int, int], bytes | None]

# The emulated kernel's task_struct of the interrupted thread: where
# bpf_get_current_task points, and the one field of it the harness serves through
# bpf_probe_read_kernel, the user thread pointer (task->thread.fsbase on x86-64,
# task->thread.uw.tp_value on arm64). A profiler's agent writes the running
# kernel's offset of that field (from BTF) into unwinder_config.task_thread_pointer;
# the harness's agent writes this one, the emulated kernel's.
EMULATED_TASK = 0xFFFF_8880_0000_0000
EMULATED_TASK_THREAD_POINTER = 0x1A40

MAP_LOOKUP_ELEM = CFUNCTYPE(c_void_p, c_void_p, c_void_p)
MAP_UPDATE_ELEM = CFUNCTYPE(c_int64, c_void_p, c_void_p, c_void_p, c_uint64)
KTIME_GET_NS = CFUNCTYPE(c_uint64)
GET_SMP_PROCESSOR_ID = CFUNCTYPE(c_uint32)
GET_CURRENT_PID_TGID = CFUNCTYPE(c_uint64)
GET_CURRENT_TASK = CFUNCTYPE(c_uint64)
PERF_EVENT_OUTPUT = CFUNCTYPE(c_int64, c_void_p, c_void_p, c_uint64, c_void_p, c_uint64)
RINGBUF_OUTPUT = CFUNCTYPE(c_int64, c_void_p, c_void_p, c_uint64, c_uint64)
PROBE_READ_USER = CFUNCTYPE(c_int64, c_void_p, c_uint32, c_void_p)
PROG_ARRAY_LOOKUP = CFUNCTYPE(c_void_p, c_void_p, c_uint32)


def _no_memory(addr: int, size: int) -> bytes | None:
    return None


@dataclass
class HelperEnv:
    """What the helpers see of the simulated machine while a program runs."""

    maps_by_addr: dict[int, BpfMap]
    read_memory: MemoryReader = _no_memory
    pid: int = 0
    tid: int = 0
    # The thread's user thread pointer (fs_base from NT_PRSTATUS, tpidr_el0 from
    # NT_ARM_TLS), None where the core lacks it (qemu-user cores).
    thread_pointer: int | None = None
    # Reads covering any of these addresses fail (the case file's fault-addresses).
    fault_addresses: frozenset[int] = frozenset()
    faults_hit: set[int] = field(default_factory=set)
    reads: int = 0
    failed_reads: int = 0
    errors: list[str] = field(default_factory=list)

    def map_at(self, addr: int | None) -> BpfMap:
        found = self.maps_by_addr.get(addr or 0)
        if found is None:
            raise LookupError(f"C passed {addr:#x} as a map pointer, which is no known map")
        return found


def _guard(env: HelperEnv, name: str, failure: int, fn: Callable[..., int]) -> Callable[..., int]:
    """ctypes swallows exceptions raised in callbacks; record them for the bridge instead."""

    def wrapper(*args: object) -> int:
        try:
            return fn(*args)
        except Exception as e:  # noqa: BLE001 - reported after the program returns
            env.errors.append(f"{name}: {type(e).__name__}: {e}")
            return failure

    return wrapper


def make_helpers(env: HelperEnv) -> dict[str, Any]:
    """ctypes callbacks keyed by the C symbol they are assigned to."""

    # The hottest helper (several calls per frame): one dict lookup to the map's own
    # lookup_addr, no wrapper in between; exceptions are caught here.
    lookup_fns = {addr: m.lookup_addr for addr, m in env.maps_by_addr.items()}

    def map_lookup_elem(map_addr: int | None, key_addr: int) -> int:
        fn = lookup_fns.get(map_addr or 0)
        try:
            if fn is None:
                env.map_at(map_addr)  # raises: C passed no known map
            return fn(key_addr)  # type: ignore[misc]
        except Exception as e:  # noqa: BLE001 - reported after the program returns
            env.errors.append(f"map_lookup_elem: {type(e).__name__}: {e}")
            return 0

    def map_update_elem(map_addr: int, key_addr: int, value_addr: int, flags: int) -> int:
        return env.map_at(map_addr).update_addr(key_addr, value_addr, flags)

    def ktime_get_ns() -> int:
        return time.monotonic_ns()

    def get_smp_processor_id() -> int:
        return 0

    def get_current_pid_tgid() -> int:
        return (env.pid << 32) | env.tid

    def get_current_task() -> int:
        return EMULATED_TASK

    def probe_read_kernel(dst: int, size: int, src: int | None) -> int:
        """Kernel memory: the emulated task's thread pointer, nothing else."""
        src = src or 0
        tp = env.thread_pointer
        if tp is None or src != EMULATED_TASK + EMULATED_TASK_THREAD_POINTER or size != 8:
            memset(dst, 0, size)
            return -EFAULT
        memmove(dst, tp.to_bytes(8, "little"), 8)
        return 0

    def perf_event_output(ctx: int, map_addr: int, flags: int, data: int, size: int) -> int:
        target = env.map_at(map_addr)
        if not isinstance(target, PerfEventArrayMap) or size > MAX_READ_SIZE:
            return -EINVAL
        target.records.append(ctypes.string_at(data, size))
        return 0

    def ringbuf_output(map_addr: int, data: int, size: int, flags: int) -> int:
        target = env.map_at(map_addr)
        # a record may be as large as the ring (perf records stop at 64 KiB: u16 sizes)
        if not isinstance(target, RingBufMap) or size > target.max_entries:
            return -EINVAL
        target.records.append(ctypes.string_at(data, size))
        return 0

    memmove, memset = ctypes.memmove, ctypes.memset

    def probe_read_user(dst: int, size: int, src: int | None) -> int:
        """The unwinder's only way to target memory (hot: twice per frame)."""
        try:
            env.reads += 1
            src = src or 0
            if size > MAX_READ_SIZE:
                env.errors.append(f"probe_read_user: C asked for {size} bytes at {src:#x}")
                return -EINVAL
            data = None
            faults = env.fault_addresses
            if not faults or not any(src <= a < src + size for a in faults):
                data = env.read_memory(src, size)
            else:
                env.faults_hit.update(a for a in faults if src <= a < src + size)
            if data is None or len(data) != size:
                env.failed_reads += 1
                memset(dst, 0, size)  # the kernel zeroes the buffer on failure
                return -EFAULT
            memmove(dst, data, size)
            return 0
        except Exception as e:  # noqa: BLE001 - reported after the program returns
            env.errors.append(f"probe_read_user: {type(e).__name__}: {e}")
            return -EFAULT

    def prog_array_lookup(map_addr: int, index: int) -> int:
        target = env.map_at(map_addr)
        if not isinstance(target, ProgArrayMap):
            return 0
        return target.program_at(index)

    return {
        # bpf_map_lookup_elem itself is harness_host.c's: arrays in C, the rest here
        "harness_map_lookup_slow": MAP_LOOKUP_ELEM(map_lookup_elem),
        "bpf_map_update_elem": MAP_UPDATE_ELEM(
            _guard(env, "map_update_elem", -EINVAL, map_update_elem)),
        "bpf_ktime_get_ns": KTIME_GET_NS(_guard(env, "ktime_get_ns", 0, ktime_get_ns)),
        "bpf_get_smp_processor_id": GET_SMP_PROCESSOR_ID(
            _guard(env, "get_smp_processor_id", 0, get_smp_processor_id)),
        "bpf_get_current_pid_tgid": GET_CURRENT_PID_TGID(
            _guard(env, "get_current_pid_tgid", 0, get_current_pid_tgid)),
        "bpf_get_current_task": GET_CURRENT_TASK(
            _guard(env, "get_current_task", 0, get_current_task)),
        "bpf_probe_read_kernel": PROBE_READ_USER(
            _guard(env, "probe_read_kernel", -EFAULT, probe_read_kernel)),
        "bpf_perf_event_output": PERF_EVENT_OUTPUT(
            _guard(env, "perf_event_output", -EINVAL, perf_event_output)),
        "bpf_ringbuf_output": RINGBUF_OUTPUT(
            _guard(env, "ringbuf_output", -EINVAL, ringbuf_output)),
        "bpf_probe_read_user": PROBE_READ_USER(probe_read_user),
        "harness_prog_array_lookup": PROG_ARRAY_LOOKUP(
            _guard(env, "tail_call", 0, prog_array_lookup)),
    }
