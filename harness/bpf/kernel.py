"""The kernel back end of the unwinder's maps: the `clang -target bpf` build of
bpf_src loaded into the running kernel, its maps behind the interface the
agent fills (helpers/maps.py), so the same Agent code fills emulated maps for
replay and kernel maps for `coredump live`.

The kernel maps are the emulated classes' subclasses (the agent checks map
kinds with isinstance) that keep no values of their own: every update is a
bpf(BPF_MAP_UPDATE_ELEM) on the map's file descriptor, every read a lookup.
Key and value types come from the BPF object's own debug info (clang -g
writes DWARF for the BPF target too), so the agent names fields, never
offsets, on both back ends.

The one thing the kernel cannot do is ask: an emulated hash map calls the
agent on a miss (HashMap.on_miss) so deltas load lazily; a kernel program's
lookup just fails. Live runs therefore load every module's deltas up front
(Agent.load_all_deltas).
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from ..errors import HarnessError
from ..helpers import ArrayMap, BpfMap, HashMap, LpmTrieMap
from ..helpers.maps import (
    BPF_ANY,
    BPF_MAP_TYPE_ARRAY,
    BPF_MAP_TYPE_HASH,
    BPF_MAP_TYPE_LPM_TRIE,
    BPF_MAP_TYPE_PROG_ARRAY,
    BPF_MAP_TYPE_RINGBUF,
)
from . import libbpf
from .abi import Abi
from .build import UnwinderSource, build_unwinder_bpf, default_source
from .debuginfo import ObjectLayout, read_layout

# ARRAY updates go to the kernel in batches of this many elements.
BATCH = 4096


class KernelMapError(HarnessError):
    """A kernel map operation failed (the errno says why)."""


class _KernelOps:
    """bpf() on one map's file descriptor, with the map's sizes."""

    name: str
    key_size: int
    value_size: int
    fd: int

    def _kernel_update(self, key: bytes, value: bytes, flags: int) -> int:
        if len(key) != self.key_size or len(value) != self.value_size:
            return -22  # EINVAL, as the emulated maps answer
        return int(libbpf.libbpf().bpf_map_update_elem(self.fd, key, value, flags))

    def lookup_bytes(self, key: bytes) -> bytes | None:
        """The value stored under `key`, None if there is none."""
        value = ctypes.create_string_buffer(self.value_size)
        if libbpf.libbpf().bpf_map_lookup_elem(self.fd, key, value) != 0:
            return None
        return value.raw

    def kernel_keys(self) -> Iterator[bytes]:
        """Every key, in the kernel's order (hash and trie maps)."""
        lib = libbpf.libbpf()
        key = ctypes.create_string_buffer(self.key_size)
        previous: bytes | None = None
        while lib.bpf_map_get_next_key(self.fd, previous, key) == 0:
            previous = key.raw
            yield previous

    def entries(self) -> dict[bytes, bytes]:
        """{key: value} of a hash or trie map, as raw bytes (for comparisons)."""
        found: dict[bytes, bytes] = {}
        for key in list(self.kernel_keys()):
            value = self.lookup_bytes(key)
            if value is not None:
                found[key] = value
        return found

    def _delete_all(self) -> None:
        lib = libbpf.libbpf()
        for key in list(self.kernel_keys()):
            lib.bpf_map_delete_elem(self.fd, key)

    def _lookup_value(self, bpf_map: BpfMap, key: Any) -> Any:
        raw = self.lookup_bytes(bpf_map.encode_key(key))
        return None if raw is None else bpf_map._typed("value").decode(raw)


class KernelArrayMap(_KernelOps, ArrayMap):
    """A kernel ARRAY map: zero-filled by the kernel, written by index."""

    def __init__(self, name: str, key_size: int, value_size: int, max_entries: int,
                 fd: int) -> None:
        BpfMap.__init__(self, name, key_size, value_size, max_entries)  # no local memory
        self.fd = fd
        self._written = 0  # elements [0, _written) may be non-zero: what clear() zeroes

    @property
    def base(self) -> int:
        raise HarnessError(f"{self.describe()} lives in the kernel: it has no address here")

    def index_addr(self, index: int) -> int:
        return 0

    def lookup(self, key: bytes) -> int:
        return 0  # no address to give: values are read with read()/lookup_value()

    def lookup_value(self, key: Any) -> Any:
        return self._lookup_value(self, key)

    def update(self, key: bytes, value: bytes, flags: int = BPF_ANY) -> int:
        result = self._kernel_update(key, value, flags)
        if result == 0:
            self._written = max(self._written, int.from_bytes(key[:4], "little") + 1)
        return result

    def write(self, index: int, value: bytes) -> None:
        """Consecutive elements from `index`, BATCH at a time (BPF_MAP_UPDATE_BATCH)."""
        if len(value) % self.value_size:
            raise ValueError(f"{self.name}: {len(value)} bytes is not a whole number of values")
        count = len(value) // self.value_size
        if index < 0 or index + count > self.max_entries:
            raise IndexError(f"{self.name}: elements {index}..{index + count} exceed "
                             f"max_entries {self.max_entries}")
        lib = libbpf.libbpf()
        for first in range(0, count, BATCH):
            n = min(BATCH, count - first)
            keys = (ctypes.c_uint32 * n)(*range(index + first, index + first + n))
            chunk = value[first * self.value_size:(first + n) * self.value_size]
            done = ctypes.c_uint32(n)
            err = lib.bpf_map_update_batch(self.fd, keys, chunk, ctypes.byref(done), None)
            if err:
                raise KernelMapError(f"{self.describe()}: writing elements {index + first}.."
                                     f"{index + first + n} failed: {os.strerror(-err)}")
        self._written = max(self._written, index + count)

    def read(self, index: int, count: int) -> bytes:
        """Elements [index, index + count) as bytes."""
        out = bytearray()
        for i in range(index, index + count):
            value = self.lookup_bytes(i.to_bytes(4, "little"))
            if value is None:
                raise KernelMapError(f"{self.describe()}: no element {i}")
            out += value
        return bytes(out)

    def clear(self) -> None:
        if self._written:
            self.write(0, bytes(self._written * self.value_size))
        self._written = 0


class _KernelKeyed(_KernelOps):
    """A keyed kernel map (hash, LPM trie) behind its emulated class: the agent
    writes and reads it by value; lookups by the C code happen in the kernel. The
    emulated class comes next in the MRO (KernelHashMap, KernelLpmTrieMap)."""

    def __init__(self, name: str, key_size: int, value_size: int, max_entries: int,
                 fd: int) -> None:
        super().__init__(name, key_size, value_size, max_entries)  # type: ignore[call-arg]
        self.fd = fd

    def lookup(self, key: bytes) -> int:
        return 0

    def lookup_value(self, key: Any) -> Any:
        return self._lookup_value(self, key)  # type: ignore[arg-type]  # a BpfMap by MRO

    def update(self, key: bytes, value: bytes, flags: int = BPF_ANY) -> int:
        return self._kernel_update(key, value, flags)

    def __len__(self) -> int:
        return sum(1 for _ in self.kernel_keys())

    def clear(self) -> None:
        self._delete_all()


class KernelHashMap(_KernelKeyed, HashMap):
    """A kernel HASH map. on_miss is accepted and never called (module docstring)."""


class KernelLpmTrieMap(_KernelKeyed, LpmTrieMap):
    """A kernel LPM_TRIE map."""


class KernelMap(_KernelOps, BpfMap):
    """Any other kernel map (prog array, ring buffer): raw updates only."""

    def __init__(self, name: str, key_size: int, value_size: int, max_entries: int,
                 fd: int, map_type: int) -> None:
        BpfMap.__init__(self, name, key_size, value_size, max_entries)
        self.fd = fd
        self.map_type = map_type

    def lookup(self, key: bytes) -> int:
        return 0

    def update(self, key: bytes, value: bytes, flags: int = BPF_ANY) -> int:
        return self._kernel_update(key, value, flags)

    def clear(self) -> None:
        if self.map_type == BPF_MAP_TYPE_HASH:
            self._delete_all()


_KERNEL_CLASSES: Mapping[int, type[KernelArrayMap | KernelHashMap | KernelLpmTrieMap]] = {
    BPF_MAP_TYPE_ARRAY: KernelArrayMap,
    BPF_MAP_TYPE_HASH: KernelHashMap,
    BPF_MAP_TYPE_LPM_TRIE: KernelLpmTrieMap,
}
# Maps that the agent does not fill and reset() leaves alone.
_PLUMBING = (BPF_MAP_TYPE_PROG_ARRAY, BPF_MAP_TYPE_RINGBUF)


_SAMPLE_FN = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t)


class TraceRing:
    """User space's end of a BPF_MAP_TYPE_RINGBUF map, read as a profiler reads
    it: libbpf's ring_buffer__poll calls back once per record."""

    def __init__(self, ring: BpfMap) -> None:
        if ring.map_type != BPF_MAP_TYPE_RINGBUF or not isinstance(ring, KernelMap):
            raise HarnessError(f"{ring.describe()} is not a kernel ring buffer")
        self.records: list[bytes] = []
        self._callback = _SAMPLE_FN(self._sample)  # referenced: libbpf calls it
        self._ring = libbpf.libbpf().ring_buffer__new(ring.fd, self._callback, None, None)
        if not self._ring:
            raise libbpf.BpfObjectError(f"ring_buffer__new({ring.name}): "
                                        f"{os.strerror(ctypes.get_errno())}")

    def _sample(self, _ctx: int, data: int, size: int) -> int:
        self.records.append(ctypes.string_at(data, size))
        return 0

    def poll(self, timeout_ms: int) -> list[bytes]:
        """Records that arrived within `timeout_ms` (all that are there, at least)."""
        err = libbpf.libbpf().ring_buffer__poll(self._ring, timeout_ms)
        if err < 0 and err != -4:  # EINTR: a signal, not an error
            raise libbpf.BpfObjectError(f"ring_buffer__poll: {os.strerror(-err)}")
        records, self.records = self.records, []
        return records

    def close(self) -> None:
        if self._ring:
            libbpf.libbpf().ring_buffer__free(self._ring)
            self._ring = None


class KernelUnwinder:
    """The BPF build of an unwinder loaded into the kernel: its maps (by name,
    typed from the object's debug info) and its programs, all of one program
    type so that its tail calls work. What the Agent needs of an unwinder:
    `maps`, `layout` and `reset()`; close() unloads everything.

    `programs`: the programs to load, by name, and the type each is loaded as;
    the others are not loaded. Every loaded program that a PROG_<NAME>
    enumerator names is put into the prog array at that slot."""

    def __init__(self, arch: str, programs: Mapping[str, int],
                 source: UnwinderSource | None = None) -> None:
        self.arch = arch
        self.source = source or default_source()
        self.path: Path = build_unwinder_bpf(arch, self.source)
        self.layout: ObjectLayout = read_layout(self.path, self.source.directory)
        self.abi = Abi(self.layout, arch)  # for its tail-call slots
        self.maps: dict[str, BpfMap] = {}
        self.program_fds: dict[str, int] = {}
        self._links: list[int] = []
        lib = libbpf.libbpf()
        libbpf._messages.clear()
        self._obj = lib.bpf_object__open_file(str(self.path).encode(), None)
        if not self._obj:
            raise libbpf.BpfObjectError(f"libbpf cannot open {self.path}: "
                                        f"{os.strerror(ctypes.get_errno())}")
        try:
            self._load(lib, programs)
        except BaseException:
            self.close()
            raise

    def _load(self, lib: ctypes.CDLL, programs: Mapping[str, int]) -> None:
        handles: dict[str, int] = {}
        for prog in libbpf._programs(lib, self._obj):
            name = lib.bpf_program__name(prog).decode()
            lib.bpf_program__set_autoload(prog, name in programs)
            if name in programs:
                lib.bpf_program__set_type(prog, programs[name])
                handles[name] = prog
        missing = sorted(set(programs) - set(handles))
        if missing:
            raise libbpf.BpfObjectError(f"{self.path} has no program {', '.join(missing)}")
        err = lib.bpf_object__load(self._obj)
        if err:
            raise libbpf.BpfObjectError(
                f"the kernel refused {self.path.name}: {os.strerror(-err)}\n"
                + "".join(libbpf._messages).strip()[-2000:])
        self.program_fds = {name: lib.bpf_program__fd(p) for name, p in handles.items()}
        self._handles = handles
        for m in libbpf._maps(lib, self._obj):
            self._add_map(lib, m)
        self._install_programs()

    def _add_map(self, lib: ctypes.CDLL, m: int) -> None:
        name = lib.bpf_map__name(m).decode()
        if name.startswith("."):
            return  # .rodata/.bss of DEBUG_PRINT formats
        map_type, fd = lib.bpf_map__type(m), lib.bpf_map__fd(m)
        key_size, value_size = lib.bpf_map__key_size(m), lib.bpf_map__value_size(m)
        entries = lib.bpf_map__max_entries(m)
        cls = _KERNEL_CLASSES.get(map_type)
        bpf_map: BpfMap
        if cls is None:
            bpf_map = KernelMap(name, key_size, value_size, entries, fd, map_type)
        else:
            bpf_map = cls(name, key_size, value_size, entries, fd)
        decl = self.layout.maps.get(name)
        if decl is not None:
            bpf_map.key_type, bpf_map.value_type = decl.key, decl.value
            bpf_map.decl = decl.decl + " (kernel)"
        self.maps[name] = bpf_map

    def _install_programs(self) -> None:
        progs = [m for m in self.maps.values() if m.map_type == BPF_MAP_TYPE_PROG_ARRAY]
        for slot, program in self.abi.tail_call_slots.items():
            fd = self.program_fds.get(program)
            if fd is None:
                continue
            for prog_array in progs:
                err = prog_array.update(slot.to_bytes(4, "little"), fd.to_bytes(4, "little"))
                if err:
                    raise KernelMapError(f"{prog_array.describe()}: cannot put {program} "
                                         f"at slot {slot}: {os.strerror(-err)}")

    def reset(self) -> None:
        """Empty the maps an agent fills (a freshly loaded object's are empty)."""
        for bpf_map in self.maps.values():
            if bpf_map.map_type not in _PLUMBING and bpf_map.name != "unwind_scratch":
                bpf_map.clear()

    def attach(self, program: str) -> None:
        """Attach a loaded program where its section says (libbpf's auto-attach);
        detached by close()."""
        lib = libbpf.libbpf()
        link = lib.bpf_program__attach(self._handles[program])
        if not link:
            raise libbpf.BpfObjectError(f"cannot attach {program}: "
                                        f"{os.strerror(ctypes.get_errno())}\n"
                                        + "".join(libbpf._messages).strip())
        self._links.append(link)

    def detach(self) -> None:
        lib = libbpf.libbpf()
        while self._links:
            lib.bpf_link__destroy(self._links.pop())

    def prog_stats(self, program: str) -> tuple[int, int]:
        """(run_time_ns, run_cnt) of a loaded program (counted while stats are on)."""
        info = libbpf._BpfProgInfo()
        size = ctypes.c_uint32(ctypes.sizeof(info))
        if libbpf.libbpf().bpf_obj_get_info_by_fd(self.program_fds[program],
                                                  ctypes.byref(info), ctypes.byref(size)):
            return 0, 0
        return int(info.run_time_ns), int(info.run_cnt)

    def close(self) -> None:
        """Detach and unload: every descriptor goes with the object."""
        self.detach()
        if self._obj:
            libbpf.libbpf().bpf_object__close(self._obj)
            self._obj = None

    def __enter__(self) -> KernelUnwinder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
