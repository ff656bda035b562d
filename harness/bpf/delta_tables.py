"""A module's stack deltas as the unwinder's maps hold them, cached on disk.

Turning a module's unwind data into map entries (rules interned, deltas split
into pages and packed into the unwinder's structs) costs tens of milliseconds
of Python per module (libc: 28k deltas, python3.11: 65k). The result depends
only on the module's content and on the unwinder's struct layouts, so it is
derived once, written beside the unwind-data cache, and read back as bytes: a
warm process copies a module's deltas and rules into the maps with no
per-delta work, the way a profiler's agent ships precomputed tables.

Each module's rules are their own slice of `unwind_rules` (`delta_page.rule_base`
says where), so the tables need no renumbering when modules are loaded in
another order or another process.
"""

from __future__ import annotations

import hashlib
import json
import struct
import sys
import zlib
from array import array
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from ..core.module import Module
from ..files import atomic_path
from ..helpers.ctype import StructType
from ..unwind_data import (
    FORMAT_VERSION,
    FRAME_POINTER_RULE,
    ModuleUnwindData,
    UnwindRule,
    module_unwind_data,
)

_MAGIC = b"CDTABLES"
_VERSION = 1
_HEADER = struct.Struct("<8sIIII")  # magic, version, rules, deltas, pages
_CRC = struct.Struct("<I")


@dataclass(frozen=True)
class DeltaTables:
    """One module's map-ready tables."""

    rules: bytes        # struct unwind_rule entries: the module's slice of unwind_rules
    rule_count: int
    deltas: bytes       # struct stack_delta entries; rule indices relative to the slice
    delta_count: int
    pages: array        # type: ignore[type-arg]  # (page, first delta, count) triples


@dataclass(frozen=True)
class TableFormat:
    """How this unwinder lays the tables out: its rule and delta structs and page size."""

    rule_type: StructType
    delta_type: StructType
    page_bits: int

    @cached_property
    def signature(self) -> str:
        """Names the layout in cache file names: another layout, another file."""
        doc = [self.rule_type.to_json(), self.delta_type.to_json(), self.page_bits, _VERSION,
               FORMAT_VERSION]  # the rules' meaning: tables follow the unwind data's version
        for item in doc[:2]:
            _strip_decls(item)  # type: ignore[arg-type]
        return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:16]

    def build(self, data: ModuleUnwindData) -> DeltaTables:
        deltas = data.deltas
        local: dict[UnwindRule, int] = {}
        rule_bytes = bytearray()

        def rule_index(rule: UnwindRule) -> int:
            index = local.get(rule)
            if index is None:
                index = local[rule] = len(local)
                rule_bytes.extend(self.rule_type.encode(
                    {"cfa_op": rule.cfa_op, "aux": rule.aux, "cfa_param": rule.cfa_param,
                     "fp_offset": rule.fp_offset, "ra_offset": rule.ra_offset},
                    "unwind_rules value"))
            return index

        bits = self.page_bits
        page_mask = (1 << bits) - 1
        flat = array("Q")
        pages = array("Q")
        if deltas:
            current = rule_index(FRAME_POINTER_RULE)  # before a module's first FDE
            i = 0
            for page in range(deltas[0][0] >> bits, (deltas[-1][0] >> bits) + 1):
                first = len(flat) // 2
                if deltas[i][0] != page << bits:
                    flat.extend((0, current))  # rule in force at the page start
                while i < len(deltas) and deltas[i][0] >> bits == page:
                    current = rule_index(deltas[i][1])
                    flat.extend((deltas[i][0] & page_mask, current))
                    i += 1
                pages.extend((page, first, len(flat) // 2 - first))
        packed = self.delta_type.packer(("addr_low", "rule")).pack(flat) if flat else b""
        return DeltaTables(bytes(rule_bytes), len(local), packed, len(flat) // 2, pages)

    def encode(self, tables: DeltaTables) -> bytes:
        pages = array("Q", tables.pages)
        if sys.byteorder == "big":
            pages.byteswap()
        body = b"".join([
            _HEADER.pack(_MAGIC, _VERSION, tables.rule_count, tables.delta_count,
                         len(tables.pages) // 3),
            tables.rules, tables.deltas, pages.tobytes()])
        return body + _CRC.pack(zlib.crc32(body))

    def decode(self, blob: bytes) -> DeltaTables | None:
        """The tables in a cache file; None if it is in any way not what we wrote."""
        if len(blob) < _HEADER.size + _CRC.size:
            return None
        magic, version, n_rules, n_deltas, n_pages = _HEADER.unpack_from(blob)
        rules_end = _HEADER.size + n_rules * self.rule_type.size
        deltas_end = rules_end + n_deltas * self.delta_type.size
        if (magic, version) != (_MAGIC, _VERSION) \
                or len(blob) != deltas_end + n_pages * 24 + _CRC.size:
            return None
        body = memoryview(blob)[:-_CRC.size]
        if _CRC.unpack_from(blob, len(body))[0] != zlib.crc32(body):
            return None
        pages = array("Q")
        pages.frombytes(body[deltas_end:])
        if sys.byteorder == "big":
            pages.byteswap()
        return DeltaTables(bytes(body[_HEADER.size:rules_end]), n_rules,
                           bytes(body[rules_end:deltas_end]), n_deltas, pages)


def _strip_decls(doc: dict) -> None:  # type: ignore[type-arg]
    """Declaration lines do not change a layout."""
    doc.pop("decl", None)
    for value in doc.values():
        if isinstance(value, dict):
            _strip_decls(value)
        elif isinstance(value, list):
            for item in value:
                if isinstance(item, dict):
                    _strip_decls(item)


_MEMO: dict[tuple[str, str], DeltaTables] = {}


def module_tables(module: Module, fmt: TableFormat, cache_dir: Path) -> DeltaTables:
    """A module's tables: from this process's memo, the disk cache, or derived."""
    key = (module.content_id, fmt.signature)
    tables = _MEMO.get(key)
    if tables is not None:
        return tables
    path = cache_dir / "tables" / f"{module.content_id}-{fmt.signature}.bin"
    try:
        tables = fmt.decode(path.read_bytes())
    except OSError:
        tables = None
    if tables is None:
        data = module_unwind_data(module.local_path, module.content_id, cache_dir)
        tables = fmt.build(data)
        with atomic_path(path) as tmp:
            tmp.write_bytes(fmt.encode(tables))
    _MEMO[key] = tables
    return tables
