"""Reading an unwinder's layout from its debug info, and the errors that name what
is wrong: a map the object does not declare, a field a struct does not have, a
value that does not fit, a map type the harness does not implement."""

from __future__ import annotations

import json
import re
import shutil
import time
from pathlib import Path

import pytest

from harness.bpf.bridge import Unwinder, get_unwinder
from harness.bpf.build import UnwinderSource, build_unwinder
from harness.bpf.debuginfo import layout_cache_path, read_layout
from harness.helpers.ctype import (
    ArrayType,
    Field,
    IntType,
    LayoutError,
    StructType,
    from_json,
)
from harness.paths import BPF_SRC

U8, U16, U32, U64 = (IntType(f"u{8 * n}", n) for n in (1, 2, 4, 8))
S32 = IntType("s32", 4, signed=True)
PAIR = StructType("pair", 16, (Field("a", 0, U32), Field("b", 8, U64)), "x.h:3")


def test_struct_encoding_follows_the_declared_offsets() -> None:
    data = PAIR.encode({"a": 1, "b": 2})
    assert data == (1).to_bytes(4, "little") + bytes(4) + (2).to_bytes(8, "little")
    assert PAIR.decode(data) == PAIR.record_type(1, 2)
    assert PAIR.decode(PAIR.encode({})) == (0, 0)  # missing fields are zero
    nested = StructType("outer", 40, (Field("p", 0, PAIR), Field("arr", 16, ArrayType(S32, 6))))
    value = nested.decode(nested.encode({"p": {"b": 7}, "arr": [-1, 2]}))
    assert value.p.b == 7 and value.arr == (-1, 2, 0, 0, 0, 0)
    assert from_json(nested.to_json()).encode({"arr": [5]}) == nested.encode({"arr": [5]})


def test_errors_name_the_struct_field_and_declaration() -> None:
    with pytest.raises(LayoutError, match=r"struct pair \(x\.h:3\) has no field 'c'; it has a, b"):
        PAIR.encode({"c": 1})
    with pytest.raises(LayoutError, match=r"pair\.a: 0x100000000 does not fit u32 \(4 bytes"):
        PAIR.encode({"a": 1 << 32})
    with pytest.raises(LayoutError, match="expected an integer for u64, got str"):
        PAIR.encode({"b": "7"})
    with pytest.raises(LayoutError, match="expected a mapping"):
        PAIR.encode(3)


def test_row_packer_packs_like_one_encode_per_row() -> None:
    delta = StructType("stack_delta", 8, (Field("addr_low", 0, U16), Field("rule", 4, U32)))
    flat = [i % 65536 for i in range(2 * 5000)]
    packed = delta.packer(("addr_low", "rule")).pack(flat)
    assert packed == b"".join(delta.encode({"addr_low": flat[i], "rule": flat[i + 1]})
                              for i in range(0, len(flat), 2))
    swapped = delta.packer(("rule", "addr_low")).pack([9, 3])
    assert swapped == delta.encode({"addr_low": 3, "rule": 9})
    with pytest.raises(LayoutError, match="does not fit"):
        delta.packer(("addr_low", "rule")).pack([1 << 16, 0])


def test_the_layout_is_cached_beside_the_build() -> None:
    so = build_unwinder("amd64", debug=False)
    cache = layout_cache_path(so)
    cache.unlink(missing_ok=True)
    start = time.perf_counter()
    cold = read_layout(so, BPF_SRC)
    cold_s = time.perf_counter() - start
    assert cache.is_file() and json.loads(cache.read_text())["maps"]["pid_mappings"]
    warm = read_layout(so, BPF_SRC)
    assert warm.to_json() == cold.to_json()
    assert cold_s >= 0  # timing is coredump bench's business; here only equality
    cache.write_text("{not json")  # a torn or foreign cache is derived again
    assert read_layout(so, BPF_SRC).to_json() == cold.to_json()


def test_declarations_carry_file_and_line() -> None:
    layout = get_unwinder("amd64").layout
    decl = layout.maps["delta_pages"].decl
    path, line = decl.rsplit(":", 1)
    assert path == "bpf_src/maps.h"
    # the line that names the variable
    assert "} delta_pages SEC(" in (BPF_SRC / "maps.h").read_text().splitlines()[int(line) - 1]
    assert layout.struct("frame").decl.startswith("bpf_src/types.h:")
    assert layout.programs["unwind_native"].section == "perf_event"


def test_unknown_names_list_what_is_declared() -> None:
    unwinder = get_unwinder("amd64")
    with pytest.raises(LayoutError, match=r"declares no map 'pid_map' in SEC\(\"\.maps\"\) "
                                          r"\(it declares delta_pages, interpreter_ranges, "
                                          r"pid_mappings"):
        unwinder.layout.map("pid_map")
    with pytest.raises(LayoutError, match=r"struct mapping_key \(bpf_src/types\.h:\d+\) has no "
                                          r"field 'address'"):
        unwinder.maps["pid_mappings"].update_value({"address": 1}, {})
    with pytest.raises(LayoutError,
                       match=r"unwind_progs \(bpf_src/maps\.h:\d+\) declares no key type"):
        unwinder.maps["unwind_progs"].update_value(0, 0)


def _scratch(tmp_path: Path, edit: dict[str, tuple[str, str]]) -> UnwinderSource:
    src = tmp_path / "bpf_src"
    shutil.copytree(BPF_SRC, src)
    for name, (old, new) in edit.items():
        path = src / name
        text = path.read_text()
        assert old in text, (name, old)
        path.write_text(text.replace(old, new, 1))
    return UnwinderSource(src)


def test_unknown_map_type_names_the_map_and_line(tmp_path: Path) -> None:
    source = _scratch(tmp_path, {"maps.h": (
        "  __uint(type, BPF_MAP_TYPE_HASH);\n  __type(key, struct delta_page_key);",
        "  __uint(type, 9 /* LRU hash */);\n  __type(key, struct delta_page_key);")})
    with pytest.raises(LayoutError, match=r"bpf_src/maps\.h:\d+: map delta_pages has type 9, "
                                          r"which the harness does not implement"):
        Unwinder("amd64", source=source)


def test_a_renamed_field_the_agent_fills_is_named(tmp_path: Path) -> None:
    source = _scratch(tmp_path, {
        "types.h": ("  u64 bias;      /* ELF virtual address = PC - bias */",
                    "  u64 load_bias; /* ELF virtual address = PC - load_bias */"),
        "native_stack.c": ("mapping->bias", "mapping->load_bias")})
    text = (source.directory / "native_stack.c").read_text()
    (source.directory / "native_stack.c").write_text(text.replace("mapping->bias",
                                                                  "mapping->load_bias"))
    from harness.bpf.agent import Agent
    from harness.cases.store import store_for
    from harness.replay import open_case
    from tests.casefiles import bundled_case

    case = bundled_case("chain.O2.nofp")
    process = open_case(case, store_for(case))
    try:
        with pytest.raises(LayoutError) as info:
            Agent(Unwinder("amd64", source=source), process).attach()
    finally:
        process.close()
    assert re.search(r"struct mapping_info \(\S*bpf_src/types\.h:\d+\) has no field 'bias'; "
                     r"it has file_id, load_bias", str(info.value)), str(info.value)
