"""The user-space agent: tells the unwinder about one process through its maps.

It does what a profiler's agent does for a process it starts tracing: one
LPM-trie entry set per file mapping (which module, which load bias), and the
module's stack deltas, derived from .eh_frame/.debug_frame and cached per
module content hash. Deltas are loaded when the unwinder first asks for a
module, so a case only pays for the modules its stacks touch.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TypeVar

from .. import unwind_data
from ..arch import ARM64, U64_MASK
from ..core.module import Module
from ..core.process import Process
from ..errors import HarnessError
from ..helpers import ArrayMap, BpfMap, HashMap, LpmTrieMap
from ..helpers.bpf_helpers import EMULATED_TASK_THREAD_POINTER
from ..helpers.ctype import LayoutError, StructType
from ..interpreters.python import PythonLayout
from ..paths import cache_root
from .backend import MapBackend
from .delta_tables import TableFormat, module_tables
from .interp_agent import attach_interpreters

_M = TypeVar("_M", bound=BpfMap)

# The maps the agent fills, by name. An unwinder declares the ones it uses: the
# memory map always, the three stack-delta maps together or not at all.
MAPPINGS_MAP = "pid_mappings"
DELTA_MAPS = ("delta_pages", "stack_deltas", "unwind_rules")
CONFIG_MAP = "unwinder_config"


def address_prefixes(start: int, end: int, addr_bits: int = 64) -> Iterator[tuple[int, int]]:
    """Split [start, end) into aligned blocks: (block start, prefix bits of the address)."""
    while start < end:
        size = start & -start if start else 1 << addr_bits
        while size > end - start:
            size >>= 1
        yield start, addr_bits - (size.bit_length() - 1)
        start += size


def check_cfa_ops(unwinder: MapBackend) -> None:
    """unwind_data produces the rules; the unwinder's enum cfa_op must mean the same."""
    c_ops = unwinder.layout.enum("cfa_op")
    python = {name: getattr(unwind_data, name) for name in dir(unwind_data)
              if name.startswith("CFA_")}
    if c_ops != python:
        diff = sorted(set(c_ops.items()) ^ set(python.items()))
        raise LayoutError(f"{unwinder.layout.path}: enum cfa_op and harness/unwind_data's "
                          f"CFA_* constants differ: {diff}")


class Agent:
    """Fills an Unwinder's maps for one Process, by map and field name."""

    def __init__(self, unwinder: MapBackend, process: Process,
                 cache_dir: str | Path | None = None,
                 task_thread_pointer: int = EMULATED_TASK_THREAD_POINTER) -> None:
        """task_thread_pointer: where the thread pointer is in the kernel's task
        struct, for unwinder_config: the emulator's own constant, or for the kernel
        back end the running kernel's offset (live/kernel_btf.py; 0: unknown)."""
        self.unwinder = unwinder
        self.process = process
        self.task_thread_pointer = task_thread_pointer
        self.cache_dir = Path(cache_dir) if cache_dir is not None else cache_root()
        self.modules_by_file_id: dict[int, Module] = {}
        self.loaded_file_ids: set[int] = set()
        self._next_delta = 0
        self._next_rule = 0
        self.python_layouts: dict[int, PythonLayout] = {}  # by file id (interp_agent.py)

        self._mappings = self._map(MAPPINGS_MAP, LpmTrieMap)
        key = self._struct(self._mappings, "key")
        self._pid_bits = 8 * key.field("pid").type.size
        self._addr_bits = 8 * key.field("addr_be").type.size
        self._config = self._map(CONFIG_MAP, ArrayMap) if CONFIG_MAP in unwinder.maps else None
        declared = [name for name in DELTA_MAPS if name in unwinder.maps]
        self.has_deltas = bool(declared)
        if self.has_deltas:
            missing = sorted(set(DELTA_MAPS) - set(declared))
            if missing:
                raise LayoutError(f"{unwinder.layout.path}: the stack-delta maps come as a set "
                                  f"({', '.join(DELTA_MAPS)}); missing {', '.join(missing)}")
            check_cfa_ops(unwinder)
            self._pages = self._map("delta_pages", HashMap)
            self._deltas = self._map("stack_deltas", ArrayMap)
            self._rules = self._map("unwind_rules", ArrayMap)
            self._format = TableFormat(self._struct(self._rules, "value"),
                                       self._struct(self._deltas, "value"),
                                       unwinder.layout.constant("DELTA_PAGE_BITS"))

    def _map(self, name: str, kind: type[_M]) -> _M:
        bpf_map = self.unwinder.maps.get(name)
        if bpf_map is None:
            self.unwinder.layout.map(name)  # raises, naming what is declared
            raise AssertionError(name)
        if not isinstance(bpf_map, kind):
            raise LayoutError(f"{bpf_map.describe()}: the agent fills it as a "
                              f"{kind.type_name} map; it is declared as a {bpf_map.type_name}")
        return bpf_map

    def _struct(self, bpf_map: BpfMap, which: str) -> StructType:
        found = bpf_map.key_type if which == "key" else bpf_map.value_type
        if not isinstance(found, StructType):
            raise LayoutError(f"{bpf_map.describe()}: its {which} must be a struct "
                              f"(__type({which}, struct ...))")
        return found

    def attach(self) -> None:
        """Reset the unwinder and describe this process to it."""
        self.unwinder.reset()
        self._write_config()
        for mapping in self.process.mappings:
            if mapping.module is not None:
                self.modules_by_file_id[mapping.module.file_id] = mapping.module
                self._add_mapping(mapping.start, mapping.end, mapping.module.file_id,
                                  mapping.bias)
        if self.has_deltas:
            self._pages.on_miss = self._on_page_miss
        self.python_layouts = attach_interpreters(self.unwinder, self.process)

    def _write_config(self) -> None:
        if self._config is None:
            return
        ra_mask = 0
        if self.process.arch == ARM64:
            masks = {t.pac_mask for t in self.process.threads if t.pac_mask}
            if masks:
                ra_mask = ~max(masks) & U64_MASK
        config: dict[str, int] = {"ra_mask": ra_mask}
        if self._struct(self._config, "value").has_field("task_thread_pointer"):
            config["task_thread_pointer"] = self.task_thread_pointer
        self._config.update_value(0, config)

    def _add_mapping(self, start: int, end: int, file_id: int, bias: int) -> None:
        value = {"file_id": file_id, "bias": bias & U64_MASK}
        byte_count = self._addr_bits // 8
        for block, bits in address_prefixes(start, end, self._addr_bits):
            # the pid's bits always match; the address is stored big-endian (types.h)
            key = {"prefixlen": self._pid_bits + bits, "pid": self.process.pid,
                   "addr_be": int.from_bytes(block.to_bytes(byte_count, "big"), "little")}
            if self._mappings.update_value(key, value) != 0:
                raise HarnessError(f"{MAPPINGS_MAP} is full ({self._mappings.max_entries} "
                                   "entries)")

    def _on_page_miss(self, key: bytes) -> None:
        file_id = self._pages.decode_key(key).file_id
        module = self.modules_by_file_id.get(file_id)
        if module is None or file_id in self.loaded_file_ids:
            return
        self.loaded_file_ids.add(file_id)
        self.load_module_deltas(module)

    def load_all_deltas(self) -> int:
        """Every mapped module's deltas now, not on the unwinder's first miss: a
        kernel map cannot call back (bpf/kernel.py). Returns the deltas written."""
        count = 0
        for file_id, module in sorted(self.modules_by_file_id.items()):
            if file_id not in self.loaded_file_ids:
                self.loaded_file_ids.add(file_id)
                count += self.load_module_deltas(module)
        return count

    def load_module_deltas(self, module: Module) -> int:
        """Write a module's stack deltas and rules into the maps (from the tables
        cached per content hash); returns the number of deltas."""
        if not self.has_deltas:
            return 0
        tables = module_tables(module, self._format, self.cache_dir)
        if not tables.pages:
            return 0  # no unwind data: the unwinder falls back to frame pointers
        base, rule_base = self._next_delta, self._next_rule
        if rule_base + tables.rule_count > self._rules.max_entries:
            raise HarnessError(f"unwind_rules is full ({self._rules.max_entries} rules) "
                               f"loading {module.name}")
        if base + tables.delta_count > self._deltas.max_entries:
            raise HarnessError(f"stack_deltas is full ({self._deltas.max_entries} deltas) "
                               f"loading {module.name}")
        pages = tables.pages
        for i in range(0, len(pages), 3):
            if self._pages.update_value(
                    {"file_id": module.file_id, "page": pages[i]},
                    {"first": base + pages[i + 1], "count": pages[i + 2],
                     "rule_base": rule_base}) != 0:
                raise HarnessError(f"delta_pages is full ({self._pages.max_entries} pages)")
        self._rules.write(rule_base, tables.rules)
        self._deltas.write(base, tables.deltas)
        self._next_delta += tables.delta_count
        self._next_rule += tables.rule_count
        return tables.delta_count
