"""BPF maps implemented in Python.

The C code receives pointers to map values, so every value lives in a ctypes
buffer that stays at the same address for as long as the entry exists (the
kernel gives the same guarantee for array maps and, for the duration of a
program run, for hash maps). Keys arrive as pointers and are copied out as
bytes.

C sees bytes; the agent sees values. A map created from the unwinder's
declaration knows its key and value types (helpers/ctype.py), so
`update_value`/`lookup_value` take and return Python values laid out as the
debug info says, and a field the struct lacks is an error that names it.
"""

from __future__ import annotations

import ctypes
import mmap
from collections.abc import Callable
from typing import Any

from .ctype import CType, LayoutError

# Kernel map type numbers (uapi bpf.h).
BPF_MAP_TYPE_HASH = 1
BPF_MAP_TYPE_ARRAY = 2
BPF_MAP_TYPE_PROG_ARRAY = 3
BPF_MAP_TYPE_PERF_EVENT_ARRAY = 4
BPF_MAP_TYPE_PERCPU_ARRAY = 6
BPF_MAP_TYPE_LPM_TRIE = 11
BPF_MAP_TYPE_RINGBUF = 27

BPF_ANY, BPF_NOEXIST, BPF_EXIST = 0, 1, 2
ENOENT, E2BIG, EEXIST, EINVAL = 2, 7, 17, 22

_U32 = ctypes.c_uint32
_string_at = ctypes.string_at


def _upsert(table: dict[Any, ctypes.Array[ctypes.c_char]], key: object, value: bytes,
            flags: int, full: bool) -> int:
    """bpf_map_update_elem semantics: BPF_NOEXIST/BPF_EXIST, and -E2BIG when a new
    key does not fit. Existing values are updated in place (C may hold pointers)."""
    buf = table.get(key)
    if buf is not None:
        if flags == BPF_NOEXIST:
            return -EEXIST
        ctypes.memmove(buf, value, len(value))
        return 0
    if flags == BPF_EXIST:
        return -ENOENT
    if full:
        return -E2BIG
    table[key] = ctypes.create_string_buffer(value, len(value))
    return 0


class BpfMap:
    """Common interface: the C-facing lookup/update take raw addresses."""

    map_type = 0
    type_name = "?"  # libbpf's name of the map type (bpf_map_type_str)

    def __init__(self, name: str, key_size: int, value_size: int, max_entries: int) -> None:
        self.name = name
        self.key_size = key_size
        self.value_size = value_size
        self.max_entries = max_entries
        # Set when the map comes from a declaration (bridge.py): its types and where
        # it is declared, for values and for error messages.
        self.key_type: CType | None = None
        self.value_type: CType | None = None
        self.decl = ""

    def describe(self) -> str:
        return f"map {self.name}" + (f" ({self.decl})" if self.decl else "")

    def _typed(self, which: str) -> CType:
        found = self.key_type if which == "key" else self.value_type
        if found is None:
            raise LayoutError(f"{self.describe()} declares no {which} type "
                              f"(__type({which}, ...)); it holds raw bytes only")
        return found

    def encode_key(self, key: Any) -> bytes:
        return self._typed("key").encode(key, f"{self.name} key")

    def encode_value(self, value: Any) -> bytes:
        return self._typed("value").encode(value, f"{self.name} value")

    def decode_key(self, key: bytes) -> Any:
        return self._typed("key").decode(key)

    def update_value(self, key: Any, value: Any, flags: int = BPF_ANY) -> int:
        """bpf_map_update_elem with Python values, converted through the declared types."""
        return self.update(self.encode_key(key), self.encode_value(value), flags)

    def lookup_value(self, key: Any) -> Any:
        """The value for `key` decoded through the declared value type, or None."""
        addr = self.lookup(self.encode_key(key))
        if not addr:
            return None
        return self._typed("value").decode(ctypes.string_at(addr, self.value_size))

    def key_bytes(self, key_addr: int) -> bytes:
        return _string_at(key_addr, self.key_size)

    def lookup_addr(self, key_addr: int) -> int:
        """C's bpf_map_lookup_elem: address of the value, or 0. Called once or more
        per frame, so subclasses keep it to a few operations."""
        return self.lookup(_string_at(key_addr, self.key_size))

    def update_addr(self, key_addr: int, value_addr: int, flags: int) -> int:
        value = ctypes.string_at(value_addr, self.value_size)
        return self.update(self.key_bytes(key_addr), value, flags)

    def lookup(self, key: bytes) -> int:
        raise NotImplementedError

    def update(self, key: bytes, value: bytes, flags: int = BPF_ANY) -> int:
        raise NotImplementedError

    def clear(self) -> None:
        raise NotImplementedError


class ArrayMap(BpfMap):
    """Fixed-size array, zero-filled, in one anonymous memory mapping: the kernel
    gives pages only to what is touched, so a map declared with millions of
    entries costs what is used, and a lookup is index arithmetic."""

    map_type = BPF_MAP_TYPE_ARRAY
    type_name = "array"

    def __init__(self, name: str, key_size: int, value_size: int, max_entries: int) -> None:
        super().__init__(name, key_size, value_size, max_entries)
        self._allocate()

    def _allocate(self) -> None:
        size = max(1, self.value_size * self.max_entries)
        self._memory = mmap.mmap(-1, size)
        self._anchor = ctypes.c_char.from_buffer(self._memory)  # keeps the address valid
        self._base = ctypes.addressof(self._anchor)

    @property
    def base(self) -> int:
        """Address of element 0; it changes only when the map is cleared."""
        return self._base

    def index_addr(self, index: int) -> int:
        """Address of element `index` (0 if out of range)."""
        if not 0 <= index < self.max_entries:
            return 0
        return self._base + index * self.value_size

    def lookup_addr(self, key_addr: int) -> int:
        index = _U32.from_address(key_addr).value
        return self._base + index * self.value_size if index < self.max_entries else 0

    def lookup(self, key: bytes) -> int:
        return self.index_addr(int.from_bytes(key[:4], "little"))

    def update(self, key: bytes, value: bytes, flags: int = BPF_ANY) -> int:
        addr = self.lookup(key)
        if not addr:
            return -E2BIG
        if flags == BPF_NOEXIST:
            return -EEXIST
        ctypes.memmove(addr, value, self.value_size)
        return 0

    def write(self, index: int, value: bytes) -> None:
        """Bulk write of consecutive elements starting at `index` (agent side)."""
        if len(value) % self.value_size:
            raise ValueError(f"{self.name}: {len(value)} bytes is not a whole number of values")
        count = len(value) // self.value_size
        if index < 0 or index + count > self.max_entries:
            raise IndexError(f"{self.name}: elements {index}..{index + count} exceed "
                             f"max_entries {self.max_entries}")
        start = index * self.value_size
        self._memory[start:start + len(value)] = value

    def read(self, index: int, count: int) -> bytes:
        """Elements [index, index + count) as bytes (the kernel back end has the same)."""
        if index < 0 or index + count > self.max_entries:
            raise IndexError(f"{self.name}: elements {index}..{index + count} exceed "
                             f"max_entries {self.max_entries}")
        return bytes(self._memory[index * self.value_size:(index + count) * self.value_size])

    def clear(self) -> None:
        # A fresh mapping: zero again, and the pages of the old one go back at once.
        del self._anchor
        self._allocate()


class PerCpuArrayMap(ArrayMap):
    """The harness runs on one simulated CPU, so per-CPU is a plain array."""

    map_type = BPF_MAP_TYPE_PERCPU_ARRAY
    type_name = "percpu_array"


class HashMap(BpfMap):
    """Hash map. `on_miss` lets the agent fill entries lazily, the way a
    profiler's agent reacts to a process it has not seen yet; the C code
    cannot tell the difference."""

    map_type = BPF_MAP_TYPE_HASH
    type_name = "hash"

    def __init__(self, name: str, key_size: int, value_size: int, max_entries: int) -> None:
        super().__init__(name, key_size, value_size, max_entries)
        self._values: dict[bytes, ctypes.Array[ctypes.c_char]] = {}
        self.on_miss: Callable[[bytes], None] | None = None

    def lookup_addr(self, key_addr: int) -> int:
        return self.lookup(_string_at(key_addr, self.key_size))

    def lookup(self, key: bytes) -> int:
        buf = self._values.get(key)
        if buf is None and self.on_miss is not None:
            self.on_miss(key)
            buf = self._values.get(key)
        return ctypes.addressof(buf) if buf is not None else 0

    def update(self, key: bytes, value: bytes, flags: int = BPF_ANY) -> int:
        if len(key) != self.key_size or len(value) != self.value_size:
            return -EINVAL
        return _upsert(self._values, key, value, flags, len(self._values) >= self.max_entries)

    def __len__(self) -> int:
        return len(self._values)

    def entries(self) -> dict[bytes, bytes]:
        """{key: value} as raw bytes (the kernel back end has the same)."""
        return {key: buf.raw for key, buf in self._values.items()}

    def clear(self) -> None:
        self._values.clear()


class LpmTrieMap(BpfMap):
    """Longest-prefix-match trie. A key is a u32 prefix length followed by the
    data bytes, compared most significant bit of the first byte first."""

    map_type = BPF_MAP_TYPE_LPM_TRIE
    type_name = "lpm_trie"

    def __init__(self, name: str, key_size: int, value_size: int, max_entries: int) -> None:
        super().__init__(name, key_size, value_size, max_entries)
        self.data_bits = (key_size - 4) * 8
        # prefix length -> (data >> (data_bits - prefixlen)) -> value buffer
        self._levels: dict[int, dict[int, ctypes.Array[ctypes.c_char]]] = {}
        self._lengths: list[int] = []  # prefix lengths present, longest first
        self._count = 0
        # key -> result of the longest-prefix search; PCs repeat across frames and
        # threads. Emptied by every update.
        self._found: dict[bytes, int] = {}

    def _split(self, key: bytes) -> tuple[int, int]:
        prefixlen = int.from_bytes(key[:4], "little")
        return prefixlen, int.from_bytes(key[4:], "big")

    def lookup_addr(self, key_addr: int) -> int:
        key = _string_at(key_addr, self.key_size)
        found = self._found.get(key)
        if found is None:
            found = self._found[key] = self.lookup(key)
        return found

    def lookup(self, key: bytes) -> int:
        max_len, data = self._split(key)
        for length in self._lengths:
            if length > max_len:
                continue
            buf = self._levels[length].get(data >> (self.data_bits - length))
            if buf is not None:
                return ctypes.addressof(buf)
        return 0

    def update(self, key: bytes, value: bytes, flags: int = BPF_ANY) -> int:
        length, data = self._split(key)
        if length > self.data_bits or len(value) != self.value_size:
            return -EINVAL
        self._found.clear()
        level = self._levels.get(length)
        if level is None:
            level = self._levels[length] = {}
            self._lengths = sorted(self._levels, reverse=True)
        prefix = data >> (self.data_bits - length)
        added = prefix not in level
        result = _upsert(level, prefix, value, flags, self._count >= self.max_entries)
        self._count += added and result == 0
        return result

    def __len__(self) -> int:
        return self._count

    def entries(self) -> dict[bytes, bytes]:
        """{key: value} as raw bytes, keys as the kernel stores them: the prefix
        length, then the data with the bits past the prefix zero."""
        data_bytes = self.key_size - 4
        return {length.to_bytes(4, "little")
                + (prefix << (self.data_bits - length)).to_bytes(data_bytes, "big"): buf.raw
                for length, level in self._levels.items() for prefix, buf in level.items()}

    def clear(self) -> None:
        self._levels.clear()
        self._lengths = []
        self._count = 0
        self._found.clear()


class ProgArrayMap(BpfMap):
    """Slots hold program entry addresses (the host stand-in for prog fds)."""

    map_type = BPF_MAP_TYPE_PROG_ARRAY
    type_name = "prog_array"

    def __init__(self, name: str, key_size: int, value_size: int, max_entries: int) -> None:
        super().__init__(name, key_size, value_size, max_entries)
        self.programs: dict[int, int] = {}

    def program_at(self, index: int) -> int:
        return self.programs.get(index, 0) if 0 <= index < self.max_entries else 0

    def lookup(self, key: bytes) -> int:
        return 0  # the kernel does not let programs look into prog arrays

    def update(self, key: bytes, value: bytes, flags: int = BPF_ANY) -> int:
        return -EINVAL

    def clear(self) -> None:
        pass  # programs stay installed across processes


class PerfEventArrayMap(BpfMap):
    """Collects what bpf_perf_event_output sends; user space drains it."""

    map_type = BPF_MAP_TYPE_PERF_EVENT_ARRAY
    type_name = "perf_event_array"

    def __init__(self, name: str, key_size: int, value_size: int, max_entries: int) -> None:
        super().__init__(name, key_size, value_size, max_entries)
        self.records: list[bytes] = []

    def lookup(self, key: bytes) -> int:
        return 0

    def update(self, key: bytes, value: bytes, flags: int = BPF_ANY) -> int:
        return -EINVAL

    def drain(self) -> list[bytes]:
        records, self.records = self.records, []
        return records

    def clear(self) -> None:
        self.records = []


class RingBufMap(PerfEventArrayMap):
    """Collects what bpf_ringbuf_output sends (max_entries is the buffer's size in
    bytes, as in the kernel); user space drains it like the perf event array."""

    map_type = BPF_MAP_TYPE_RINGBUF
    type_name = "ringbuf"


MAP_CLASSES: dict[int, type[BpfMap]] = {
    cls.map_type: cls
    for cls in (ArrayMap, PerCpuArrayMap, HashMap, LpmTrieMap, ProgArrayMap, PerfEventArrayMap,
                RingBufMap)
}
