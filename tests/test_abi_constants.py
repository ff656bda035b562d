"""The debug-info reader against a second, independent reader of the same C.

The harness learns bpf_src's enums and maps from the host build's DWARF
(bpf/debuginfo.py). Here the header text itself is parsed with regular
expressions and the two must agree, enum by enum and map by map, for both
target architectures; and the constants Python still produces itself (the CFA
ops of unwind_data, the kernel's map type numbers) agree with the C.
"""

from __future__ import annotations

import re

import pytest

from harness import unwind_data
from harness.arch import ARCH_NAMES, ARM64
from harness.bpf.bridge import get_unwinder
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


def test_every_enum_of_the_headers_is_in_the_debug_info() -> None:
    """Each enum of the headers reaches the DWARF of the build for its architecture,
    with the same values; helper ids are the kernel build's alone."""
    layouts = {arch: get_unwinder(arch).layout for arch in ARCH_NAMES}
    kernel_only = {"bpf_func_id"}  # the host build calls helpers by name
    for name, values in ENUMS.items():
        seen = {arch: layout.enums[name] for arch, layout in layouts.items()
                if name in layout.enums}
        if name in kernel_only:
            assert not seen, name
            continue
        assert seen, f"enum {name} is in no build's debug info"
        for arch, own in seen.items():
            if len(seen) == 1 or own == values:
                continue
            # defined per architecture (arch.h): the regex merged both branches
            assert set(own) <= set(values), (name, arch, own)
    for layout in layouts.values():
        assert set(layout.enums) <= set(ENUMS), "an enum only the DWARF reader saw"
    assert layouts[ARM64].enums["sigframe_layout"] != layouts["amd64"].enums["sigframe_layout"]


@pytest.mark.parametrize("arch", ARCH_NAMES)
def test_every_map_of_maps_h_is_in_the_debug_info(arch: str) -> None:
    layout = get_unwinder(arch).layout
    declared = header_maps(ENUMS)
    assert set(layout.maps) == set(declared)
    for name, fields in declared.items():
        decl = layout.maps[name]
        assert decl.map_type == fields["type"], name
        assert decl.max_entries == fields.get("max_entries", 0), name
        assert decl.decl.startswith("bpf_src/maps.h:"), decl.decl


def test_cfa_ops() -> None:
    """unwind_data produces the rules, the C consumes them (also checked at load time,
    bpf/agent.py check_cfa_ops)."""
    c = ENUMS["cfa_op"]
    python = {name: getattr(unwind_data, name) for name in dir(unwind_data)
              if name.startswith("CFA_")}
    assert python == c
    assert ENUMS["plt_layout"]["PLT_ENTRY_SIZE"] == unwind_data.PLT_ENTRY_SIZE


def test_error_names_come_from_the_enum() -> None:
    """Each C error's name, lowercased without ERR_, is the name Python prints."""
    c = {value: name.removeprefix("ERR_").lower()
         for name, value in ENUMS["unwind_error"].items() if name != "ERR_NONE"}
    for arch in ARCH_NAMES:
        assert get_unwinder(arch).abi.error_names == c


def test_kernel_map_types() -> None:
    c_types = ENUMS["bpf_map_type"]
    assert {name: getattr(maps, name) for name in c_types} == c_types
