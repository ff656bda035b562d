"""The user-space agent: tells the unwinder about one process through its maps.

It does what a profiler's agent does for a process it starts tracing: one
LPM-trie entry set per file mapping (which module, which load bias), and the
module's stack deltas, derived from .eh_frame/.debug_frame and cached per
module content hash. Deltas are loaded when the unwinder first asks for a
module, so a case only pays for the modules its stacks touch.
"""

from __future__ import annotations

import ctypes
import struct
from array import array
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from ..arch import ARM64, U64_MASK
from ..core.module import Module
from ..core.process import Process
from ..errors import HarnessError
from ..helpers import ArrayMap, HashMap, LpmTrieMap
from ..paths import cache_root
from ..unwind_data import FRAME_POINTER_RULE, UnwindRule, module_unwind_data
from . import abi
from .abi import DELTA_PAGE_BITS
from .bridge import Unwinder

_PAGE_KEY = struct.Struct("<QQ")
_M = TypeVar("_M")


def address_prefixes(start: int, end: int) -> Iterator[tuple[int, int]]:
    """Split [start, end) into aligned blocks: (block start, prefix bits of a u64)."""
    while start < end:
        size = start & -start if start else 1 << 64
        while size > end - start:
            size >>= 1
        yield start, abi.MAPPING_KEY_ADDR_BITS - (size.bit_length() - 1)
        start += size


@dataclass
class _PackedModule:
    deltas: bytes                       # struct stack_delta entries, rule indices resolved
    pages: list[tuple[int, int, int]]   # (page, first delta relative to the module, count)


@dataclass
class _SharedTables:
    """Derived from immutable inputs, so kept for the life of the unwinder: the
    interned rule table and each module's packed deltas (by content hash)."""

    rules: dict[UnwindRule, int] = field(default_factory=dict)
    rule_bytes: bytearray = field(default_factory=bytearray)
    modules: dict[str, _PackedModule] = field(default_factory=dict)


_TABLES: dict[int, _SharedTables] = {}


def _shared_tables(unwinder: Unwinder) -> _SharedTables:
    return _TABLES.setdefault(id(unwinder), _SharedTables())


class Agent:
    """Fills an Unwinder's maps for one Process."""

    def __init__(self, unwinder: Unwinder, process: Process,
                 cache_dir: str | Path | None = None) -> None:
        self.unwinder = unwinder
        self.process = process
        self.cache_dir = Path(cache_dir) if cache_dir is not None else cache_root()
        self.modules_by_file_id: dict[int, Module] = {}
        self.loaded_file_ids: set[int] = set()
        self._tables = _shared_tables(unwinder)
        self._next_delta = 0

        self._mappings = self._map("pid_mappings", LpmTrieMap)
        self._pages = self._map("delta_pages", HashMap)
        self._deltas = self._map("stack_deltas", ArrayMap)
        self._rules = self._map("unwind_rules", ArrayMap)
        self._config = self._map("unwinder_config", ArrayMap)

    def _map(self, name: str, kind: type[_M]) -> _M:
        bpf_map = self.unwinder.maps[name]
        assert isinstance(bpf_map, kind), f"{name} is a {type(bpf_map).__name__}"
        return bpf_map

    def attach(self) -> None:
        """Reset the unwinder and describe this process to it."""
        self.unwinder.reset()
        if self._tables.rule_bytes:  # rules interned for earlier processes keep their index
            self._rules.write(0, bytes(self._tables.rule_bytes))
        self._write_config()
        for mapping in self.process.mappings:
            if mapping.module is not None:
                self.modules_by_file_id[mapping.module.file_id] = mapping.module
                self._add_mapping(mapping.start, mapping.end, mapping.module.file_id,
                                  mapping.bias)
        self._pages.on_miss = self._on_page_miss

    def _write_config(self) -> None:
        config = abi.UnwinderConfig(ra_mask=0)
        if self.process.arch == ARM64:
            masks = {t.pac_mask for t in self.process.threads if t.pac_mask}
            if masks:
                config.ra_mask = ~max(masks) & U64_MASK
        self._config.write(0, bytes(config))

    def _add_mapping(self, start: int, end: int, file_id: int, bias: int) -> None:
        value = bytes(abi.MappingInfo(file_id, bias & U64_MASK))
        for block, bits in address_prefixes(start, end):
            # the pid's bits always match; the address is stored big-endian (types.h)
            key = abi.MappingKey(abi.MAPPING_KEY_PID_BITS + bits, self.process.pid,
                                 int.from_bytes(block.to_bytes(8, "big"), "little"))
            if self._mappings.update(bytes(key), value) != 0:
                raise HarnessError(f"pid_mappings is full ({self._mappings.max_entries} entries)")

    def _on_page_miss(self, key: bytes) -> None:
        file_id, _ = _PAGE_KEY.unpack(key)
        module = self.modules_by_file_id.get(file_id)
        if module is None or file_id in self.loaded_file_ids:
            return
        self.loaded_file_ids.add(file_id)
        self.load_module_deltas(module)

    def _rule(self, rule: UnwindRule) -> int:
        index = self._tables.rules.get(rule)
        if index is None:
            index = len(self._tables.rules)
            if index >= self._rules.max_entries:
                raise HarnessError("unwind_rules is full")
            c_rule = bytes(abi.UnwindRule(rule.cfa_op, rule.aux, 0, rule.cfa_param,
                                              rule.fp_offset, rule.ra_offset))
            self._rules.write(index, c_rule)
            self._tables.rules[rule] = index
            self._tables.rule_bytes += c_rule
        return index

    def _pack(self, module: Module) -> _PackedModule:
        """A module's deltas as map entries, split into pages (cached per content hash)."""
        packed = self._tables.modules.get(module.content_id)
        if packed is not None:
            return packed
        deltas = module_unwind_data(module.local_path, module.content_id, self.cache_dir).deltas
        rule_ids = {rule: self._rule(rule) for rule in {r for _, r in deltas}}
        page_mask = (1 << DELTA_PAGE_BITS) - 1
        flat = array("H")
        pages: list[tuple[int, int, int]] = []
        if deltas:
            current = self._rule(FRAME_POINTER_RULE)  # before a module's first FDE
            i = 0
            for page in range(deltas[0][0] >> DELTA_PAGE_BITS,
                              (deltas[-1][0] >> DELTA_PAGE_BITS) + 1):
                first = len(flat) // 2
                if deltas[i][0] != page << DELTA_PAGE_BITS:
                    flat.extend((0, current))  # rule in force at the page start
                while i < len(deltas) and deltas[i][0] >> DELTA_PAGE_BITS == page:
                    current = rule_ids[deltas[i][1]]
                    flat.extend((deltas[i][0] & page_mask, current))
                    i += 1
                pages.append((page, first, len(flat) // 2 - first))
        packed = _PackedModule(flat.tobytes(), pages)
        self._tables.modules[module.content_id] = packed
        return packed

    def load_module_deltas(self, module: Module) -> int:
        """Write a module's stack deltas into the maps; returns the number of deltas."""
        packed = self._pack(module)
        if not packed.pages:
            return 0  # no unwind data: the unwinder falls back to frame pointers
        base = self._next_delta
        for page, first, count in packed.pages:
            page_value = bytes(abi.DeltaPage(base + first, count))
            if self._pages.update(_PAGE_KEY.pack(module.file_id, page), page_value) != 0:
                raise HarnessError(f"delta_pages is full ({self._pages.max_entries} pages)")
        count = len(packed.deltas) // ctypes.sizeof(abi.StackDelta)
        self._deltas.write(base, packed.deltas)
        self._next_delta += count
        return count
