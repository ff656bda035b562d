"""BPF map semantics the C code relies on."""

from __future__ import annotations

import ctypes
import random

import pytest

from harness.bpf.agent import address_prefixes
from harness.helpers.maps import (
    BPF_EXIST,
    BPF_NOEXIST,
    E2BIG,
    EEXIST,
    ENOENT,
    ArrayMap,
    HashMap,
    LpmTrieMap,
)


def test_array_map_values_are_stable_zeroed_and_bounded() -> None:
    m = ArrayMap("a", 4, 8, 10_000)
    addr = m.lookup((5000).to_bytes(4, "little"))
    assert addr and ctypes.string_at(addr, 8) == b"\0" * 8
    m.write(4999, b"A" * 8 + b"B" * 8 + b"C" * 8)
    assert ctypes.string_at(addr, 8) == b"B" * 8
    assert m.lookup((5000).to_bytes(4, "little")) == addr  # same buffer every time
    assert m.lookup((10_000).to_bytes(4, "little")) == 0
    with pytest.raises(IndexError):
        m.write(9_999, b"x" * 16)


def test_array_bulk_write_and_clear() -> None:
    m = ArrayMap("a", 4, 4, 1 << 22)  # stack_deltas' size: only touched pages cost memory
    data = b"".join(i.to_bytes(4, "little") for i in range(10_000))
    m.write(100, data)
    for i in (0, 4095, 9_999):
        assert ctypes.string_at(m.index_addr(100 + i), 4) == i.to_bytes(4, "little")
    key = ctypes.c_uint32(100 + 9_999)
    assert m.lookup_addr(ctypes.addressof(key)) == m.index_addr(100 + 9_999)
    key.value = 1 << 22
    assert m.lookup_addr(ctypes.addressof(key)) == 0  # out of range: no value
    m.clear()
    assert ctypes.string_at(m.index_addr(100 + 9_999), 4) == bytes(4)


def test_hash_map_flags_capacity_and_lazy_fill() -> None:
    m = HashMap("h", 4, 4, 2)
    assert m.update(b"k001", b"v001", BPF_EXIST) == -ENOENT
    assert m.update(b"k001", b"v001") == 0
    assert m.update(b"k001", b"v002", BPF_NOEXIST) == -EEXIST
    assert m.update(b"k002", b"v002") == 0
    assert m.update(b"k003", b"v003") == -E2BIG
    assert ctypes.string_at(m.lookup(b"k001"), 4) == b"v001"

    misses: list[bytes] = []
    m.on_miss = lambda key: (misses.append(key), m.clear(), m.update(key, b"lazy"))
    assert ctypes.string_at(m.lookup(b"k009"), 4) == b"lazy"
    assert misses == [b"k009"]


def _lpm_key(prefix_bits: int, pid: int, addr: int) -> bytes:
    return ((32 + prefix_bits).to_bytes(4, "little") + pid.to_bytes(4, "little")
            + addr.to_bytes(8, "big"))


def test_lpm_trie_longest_prefix_wins() -> None:
    m = LpmTrieMap("t", 16, 1, 100)
    m.update(_lpm_key(48, 7, 0x7F00_0000_0000), b"A")   # a /48 block
    m.update(_lpm_key(52, 7, 0x7F00_0000_1000), b"B")   # a 4 KiB hole inside it
    def find(pid: int, addr: int) -> bytes | None:
        a = m.lookup(_lpm_key(64, pid, addr))
        return ctypes.string_at(a, 1) if a else None
    assert find(7, 0x7F00_0000_0FFF) == b"A"
    assert find(7, 0x7F00_0000_1234) == b"B"
    assert find(7, 0x7F00_0000_2000) == b"A"
    assert find(8, 0x7F00_0000_1234) is None             # other pid
    assert find(7, 0x7F00_0001_0000) is None             # outside the /48


@pytest.mark.parametrize("seed", range(5))
def test_address_prefixes_cover_exactly(seed: int) -> None:
    rng = random.Random(seed)
    start = rng.randrange(0, 1 << 47) & ~0xFFF
    end = start + rng.randrange(1, 1 << 24) * 0x1000
    blocks = list(address_prefixes(start, end))
    pos = start
    for block, bits in blocks:
        size = 1 << (64 - bits)
        assert block == pos and block % size == 0
        pos += size
    assert pos == end
    assert len(blocks) <= 2 * 64


def test_lpm_agrees_with_ranges() -> None:
    """Ranges inserted as prefixes are found exactly, and nothing outside them."""
    m = LpmTrieMap("t", 16, 1, 10_000)
    ranges = [(0x5555_0000_0000, 0x5555_0000_3000, b"x"),
              (0x5555_0000_3000, 0x5555_0004_1000, b"y"),
              (0x7FFF_F7DC_2000, 0x7FFF_F7F9_1000, b"z")]
    for start, end, tag in ranges:
        for block, bits in address_prefixes(start, end):
            assert m.update(_lpm_key(bits, 1, block), tag) == 0
    rng = random.Random(1)
    for _ in range(2000):
        start, end, tag = rng.choice(ranges)
        addr = rng.randrange(start - 0x2000, end + 0x2000)
        expected = next((t for s, e, t in ranges if s <= addr < e), None)
        a = m.lookup(_lpm_key(64, 1, addr))
        assert (ctypes.string_at(a, 1) if a else None) == expected
