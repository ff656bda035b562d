"""The constants that bpf_src and Python share agree: read from the C headers
(enums and maps.h's map definitions) and compared with the Python that uses them.

A stop-gap until the layout is read from the compiled object's debug info: a
changed or added value on one side fails here, by name, not as a wrong unwind.
"""

from __future__ import annotations

import re

from harness import unwind_data
from harness.bpf import abi
from harness.helpers import maps
from harness.paths import BPF_SRC

_SIZEOF = {"u8": 1, "u16": 2, "u32": 4, "u64": 8}
_ENUM = re.compile(r"\benum\s+(\w+)\s*\{(.*?)\};", re.DOTALL)
_MAP = re.compile(r"struct\s*\{(.*?)\}\s*(\w+)\s+SEC\(\"\.maps\"\);", re.DOTALL)


def _strip_comments(text: str) -> str:
    return re.sub(r"/\*.*?\*/", "", text, flags=re.DOTALL)


def _evaluate(expr: str, known: dict[str, int]) -> int:
    """An enum initialiser: integers, known names, sizeof(uN), + - * / << ( )."""
    expr = re.sub(r"sizeof\((\w+)\)", lambda m: str(_SIZEOF[m.group(1)]), expr)
    expr = re.sub(r"\b[A-Za-z_]\w*\b", lambda m: str(known[m.group(0)]), expr)
    expr = re.sub(r"(?<=\d)[uUlL]+\b", "", expr)
    assert re.fullmatch(r"[\d\s+\-*/()<>x]+", expr), expr
    return int(eval(expr.replace("/", "//")))  # noqa: S307 - digits and operators only


def header_enums() -> dict[str, dict[str, int]]:
    """{enum name: {constant: value}} of every enum in bpf_src's headers and sources
    (both target architectures' branches: they define different names)."""
    enums: dict[str, dict[str, int]] = {}
    known: dict[str, int] = {}
    for path in sorted(BPF_SRC.rglob("*.[ch]")):
        for name, body in _ENUM.findall(_strip_comments(path.read_text())):
            values = enums.setdefault(name, {})
            next_value = 0
            for item in filter(None, (i.strip() for i in body.split(","))):
                constant, _, expr = (part.strip() for part in item.partition("="))
                value = _evaluate(expr, known) if expr else next_value
                values[constant] = known[constant] = value
                next_value = value + 1
    return enums


def header_maps(enums: dict[str, dict[str, int]]) -> dict[str, dict[str, int]]:
    """{map name: {"type": ..., "max_entries": ...}} from maps.h's definitions."""
    known = {k: v for values in enums.values() for k, v in values.items()}
    found = {}
    for body, name in _MAP.findall(_strip_comments((BPF_SRC / "maps.h").read_text())):
        fields = dict(re.findall(r"__uint\((\w+),\s*([^)]+)\)", body))
        found[name] = {k: _evaluate(v, known) for k, v in fields.items()
                       if k in ("type", "max_entries")}
    return found


ENUMS = header_enums()


def test_the_headers_were_read() -> None:
    assert {"cfa_op", "unwind_error", "frame_kind", "trace_status", "unwind_limits",
            "bpf_map_type"} <= set(ENUMS)


def test_cfa_ops() -> None:
    c = ENUMS["cfa_op"]
    python = {name: getattr(unwind_data, name) for name in dir(unwind_data)
              if name.startswith("CFA_")}
    assert python == c
    assert ENUMS["plt_layout"]["PLT_ENTRY_SIZE"] == unwind_data.PLT_ENTRY_SIZE


def test_error_names() -> None:
    """Each C error's name, lowercased without ERR_, is the name Python prints."""
    c = {value: name.removeprefix("ERR_").lower()
         for name, value in ENUMS["unwind_error"].items() if name != "ERR_NONE"}
    assert abi.ERROR_NAMES == c


def test_frame_and_trace_constants() -> None:
    shared = {**ENUMS["frame_kind"], **ENUMS["frame_flags"], **ENUMS["trace_status"]}
    assert {name: getattr(abi, name) for name in shared} == shared


def test_limits_and_key_layout() -> None:
    limits = ENUMS["unwind_limits"]
    assert (abi.MAX_FRAMES, abi.DELTA_PAGE_BITS) == (limits["MAX_FRAMES"],
                                                     limits["DELTA_PAGE_BITS"])
    bits = ENUMS["mapping_key_bits"]
    assert (abi.MAPPING_KEY_PID_BITS, abi.MAPPING_KEY_ADDR_BITS) == (
        bits["MAPPING_PID_BITS"], bits["MAPPING_ADDR_BITS"])


def test_programs_in_prog_array_order() -> None:
    progs = ENUMS["unwind_prog"]
    assert len(abi.TAIL_CALL_PROGRAMS) == progs["NUM_PROGS"]
    assert abi.TAIL_CALL_PROGRAMS.index("unwind_native") == progs["PROG_UNWIND_NATIVE"]


def test_map_types_and_sizes() -> None:
    c_types = ENUMS["bpf_map_type"]
    assert {name: getattr(maps, name) for name in c_types} == c_types
    declared = header_maps(ENUMS)
    assert set(declared) == set(abi.MAP_SPECS)
    for name, (map_type, _key, _value, max_entries) in abi.MAP_SPECS.items():
        assert declared[name]["type"] == map_type, name
        if "max_entries" in declared[name]:  # the perf event array is sized at load time
            assert declared[name]["max_entries"] == max_entries, name
