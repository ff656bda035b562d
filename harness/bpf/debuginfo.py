"""What the compiled unwinder declares, read from its own debug info.

The host build of an unwinder is compiled with -g. Its DWARF says everything the
harness needs to serve it, so nothing about the unwinder is written twice:

- every map of `SEC(".maps")`: libbpf's encoding is a struct of pointers whose
  types carry the numbers (`__uint(max_entries, N)` is `int (*max_entries)[N]`,
  `__type(key, T)` is `T *key`);
- every struct, union and enum declared in the unwinder's sources, with field
  offsets and the file and line of each declaration (for error messages);
- every program: a global function in a section whose name does not start
  with '.' (libbpf's rule: `SEC("perf_event")`), with the struct its context
  pointer points to.

The ELF symbol table says which section each map and program is in. Reading
the DWARF takes pyelftools a few hundred milliseconds, so the result is cached
as JSON beside the build (builds are content-addressed, so it never goes stale).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import BuildError
from ..files import atomic_path
from ..helpers.ctype import (
    ArrayType,
    CType,
    Field,
    IntType,
    LayoutError,
    OpaqueType,
    StructType,
    from_json,
)
from ..paths import REPO_ROOT

LAYOUT_VERSION = 2
HOST_SOURCE_NAME = "harness_host.c"  # bpf/build.py HOST_SOURCE: its types are not the unwinder's
_DW_ATE_SIGNED = {0x05, 0x06}  # DW_ATE_signed, DW_ATE_signed_char
_POINTER_SIZE = 8


@dataclass(frozen=True)
class MapDecl:
    """One map as the object declares it."""

    name: str
    map_type: int
    key: CType | None      # None where only key_size is declared (prog/perf arrays)
    value: CType | None
    key_size: int
    value_size: int
    max_entries: int
    flags: int
    decl: str

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "map_type": self.map_type,
                "key": self.key.to_json() if self.key else None,
                "value": self.value.to_json() if self.value else None,
                "key_size": self.key_size, "value_size": self.value_size,
                "max_entries": self.max_entries, "flags": self.flags, "decl": self.decl}

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> MapDecl:
        return cls(doc["name"], doc["map_type"],
                   from_json(doc["key"]) if doc["key"] else None,
                   from_json(doc["value"]) if doc["value"] else None,
                   doc["key_size"], doc["value_size"], doc["max_entries"], doc["flags"],
                   doc["decl"])


@dataclass(frozen=True)
class ProgramDecl:
    """One BPF program: its function name, ELF section and context struct."""

    name: str
    section: str
    context: str | None  # struct name of the first parameter's pointee
    decl: str


@dataclass(frozen=True)
class ObjectLayout:
    """Everything one build of an unwinder declares."""

    path: str
    structs: dict[str, StructType]
    enums: dict[str, dict[str, int]]
    maps: dict[str, MapDecl]
    programs: dict[str, ProgramDecl]

    @property
    def constants(self) -> dict[str, int]:
        """Every enumerator of every enum, by name."""
        return {k: v for values in self.enums.values() for k, v in values.items()}

    def struct(self, name: str) -> StructType:
        found = self.structs.get(name)
        if found is None:
            raise LayoutError(f"{self.path}: the unwinder declares no struct {name!r} "
                              f"(it declares {', '.join(sorted(self.structs)) or 'none'})")
        return found

    def enum(self, name: str) -> dict[str, int]:
        found = self.enums.get(name)
        if found is None:
            raise LayoutError(f"{self.path}: the unwinder declares no enum {name!r} "
                              f"(it declares {', '.join(sorted(self.enums)) or 'none'})")
        return found

    def constant(self, name: str) -> int:
        for values in self.enums.values():
            if name in values:
                return values[name]
        raise LayoutError(f"{self.path}: no enum of the unwinder defines {name}; the harness "
                          "needs it (constants reach Python as enumerators, not #defines)")

    def map(self, name: str) -> MapDecl:
        found = self.maps.get(name)
        if found is None:
            raise LayoutError(f"{self.path}: the unwinder declares no map {name!r} in "
                              f"SEC(\".maps\") (it declares "
                              f"{', '.join(sorted(self.maps)) or 'none'})")
        return found

    def to_json(self) -> dict[str, Any]:
        return {"version": LAYOUT_VERSION,
                "structs": {k: v.to_json() for k, v in self.structs.items()},
                "enums": self.enums,
                "maps": {k: v.to_json() for k, v in self.maps.items()},
                "programs": {k: [p.section, p.context, p.decl]
                             for k, p in self.programs.items()}}

    @classmethod
    def from_json(cls, path: str, doc: Mapping[str, Any]) -> ObjectLayout:
        structs = {k: from_json(v) for k, v in doc["structs"].items()}
        return cls(path, structs, doc["enums"],  # type: ignore[arg-type]
                   {k: MapDecl.from_json(v) for k, v in doc["maps"].items()},
                   {k: ProgramDecl(k, *v) for k, v in doc["programs"].items()})


def layout_cache_path(obj: Path) -> Path:
    return obj.with_name(obj.name + ".layout.json")


def read_layout(obj: Path, source_dir: Path | None = None) -> ObjectLayout:
    """The layout of a built object, from the JSON cache beside it or its DWARF."""
    obj = Path(obj)
    cache = layout_cache_path(obj)
    try:
        doc = json.loads(cache.read_text())
        if doc.get("version") == LAYOUT_VERSION:
            return ObjectLayout.from_json(str(obj), doc)
    except (OSError, ValueError, KeyError, TypeError):
        pass  # absent or unreadable: derive it again
    layout = _read_dwarf(obj, source_dir)
    with atomic_path(cache) as tmp:
        tmp.write_text(json.dumps(layout.to_json()))
    return layout


# ---- DWARF -----------------------------------------------------------------------


def _read_dwarf(obj: Path, source_dir: Path | None) -> ObjectLayout:
    from elftools.common.exceptions import ELFError
    from elftools.elf.elffile import ELFFile

    try:
        with open(obj, "rb") as f:
            elf = ELFFile(f)
            if not elf.has_dwarf_info():
                raise BuildError(f"{obj} has no debug info: the host build must use -g")
            sections = _symbol_sections(elf)
            reader = _DwarfReader(elf, source_dir)
            return reader.layout(str(obj), sections)
    except (ELFError, OSError) as e:
        raise BuildError(f"cannot read the debug info of {obj}: {e}") from e


def _symbol_sections(elf: Any) -> dict[str, tuple[str, str]]:
    """Global symbol -> (its section's name, symbol type)."""
    symtab = elf.get_section_by_name(".symtab")
    out: dict[str, tuple[str, str]] = {}
    if symtab is None:
        return out
    names = [s.name for s in elf.iter_sections()]
    for sym in symtab.iter_symbols():
        shndx = sym["st_shndx"]
        if sym["st_info"]["bind"] != "STB_GLOBAL" or not isinstance(shndx, int):
            continue
        out[sym.name] = (names[shndx], sym["st_info"]["type"])
    return out


class _DwarfReader:
    """Turns DIEs into CType descriptions, memoised by DIE offset."""

    def __init__(self, elf: Any, source_dir: Path | None) -> None:
        self.dwarf = elf.get_dwarf_info()
        self.source_dir = Path(source_dir).resolve() if source_dir else None
        self._types: dict[int, CType] = {}
        self._files: dict[int, list[str]] = {}

    # -- declarations

    def _file_names(self, cu: Any) -> list[str]:
        names = self._files.get(cu.cu_offset)
        if names is None:
            names = []
            lineprog = self.dwarf.line_program_for_CU(cu)
            if lineprog is not None:
                header = lineprog.header
                dirs = [d.decode(errors="replace") if isinstance(d, bytes) else str(d)
                        for d in header["include_directory"]]
                v5 = header["version"] >= 5
                comp_dir = cu.get_top_DIE().attributes.get("DW_AT_comp_dir")
                base = comp_dir.value.decode(errors="replace") if comp_dir else ""
                for entry in header["file_entry"]:
                    name = entry.name.decode(errors="replace")
                    index = entry.dir_index if v5 else entry.dir_index - 1
                    directory = dirs[index] if 0 <= index < len(dirs) else base
                    names.append(os.path.join(base, directory, name))
                if not v5:
                    names.insert(0, "")
            self._files[cu.cu_offset] = names
        return names

    def _decl(self, die: Any) -> str:
        attrs = die.attributes
        if "DW_AT_decl_file" not in attrs:
            return ""
        files = self._file_names(die.cu)
        index = attrs["DW_AT_decl_file"].value
        path = files[index] if 0 <= index < len(files) else "?"
        line = attrs["DW_AT_decl_line"].value if "DW_AT_decl_line" in attrs else 0
        return f"{self._display(path)}:{line}"

    def _display(self, path: str) -> str:
        """Relative to the repository where the file is in it (bpf_src/maps.h:16)."""
        resolved = Path(os.path.normpath(path))
        for root in (REPO_ROOT, self.source_dir.parent if self.source_dir else None):
            if root is not None and resolved.is_relative_to(root):
                return str(resolved.relative_to(root))
        return str(resolved)

    def _in_sources(self, die: Any) -> bool:
        """Declared by the unwinder, not by the harness's host glue (a build is
        content-addressed, so the sources may sit in another directory than the one
        the cached object was compiled from: the compile unit tells, not the path)."""
        top = die.cu.get_top_DIE().attributes.get("DW_AT_name")
        name = top.value.decode(errors="replace") if top else ""
        return Path(name).name != HOST_SOURCE_NAME

    # -- types

    def type_of(self, die: Any) -> CType:
        if "DW_AT_type" not in die.attributes:
            return OpaqueType("void", 0)
        return self.ctype(die.get_DIE_from_attribute("DW_AT_type"))

    def ctype(self, die: Any) -> CType:
        key = die.offset
        found = self._types.get(key)
        if found is None:
            found = self._types[key] = self._build(die)
        return found

    def _name(self, die: Any) -> str:
        attr = die.attributes.get("DW_AT_name")
        return attr.value.decode(errors="replace") if attr else ""

    def _build(self, die: Any) -> CType:
        tag = die.tag
        attrs = die.attributes
        size = attrs["DW_AT_byte_size"].value if "DW_AT_byte_size" in attrs else 0
        if tag == "DW_TAG_base_type":
            signed = attrs["DW_AT_encoding"].value in _DW_ATE_SIGNED
            if attrs["DW_AT_encoding"].value == 0x04:  # DW_ATE_float
                return OpaqueType(self._name(die), size)
            return IntType(self._name(die), size, signed)
        if tag == "DW_TAG_enumeration_type":
            signed = any(c.attributes["DW_AT_const_value"].value < 0
                         for c in die.iter_children() if c.tag == "DW_TAG_enumerator")
            return IntType(f"enum {self._name(die)}".strip(), size, signed, self._decl(die))
        if tag in ("DW_TAG_typedef", "DW_TAG_const_type", "DW_TAG_volatile_type",
                   "DW_TAG_restrict_type", "DW_TAG_atomic_type"):
            inner = self.type_of(die)
            if tag == "DW_TAG_typedef" and isinstance(inner, IntType):
                return IntType(self._name(die), inner.size, inner.signed, inner.decl)
            return inner
        if tag == "DW_TAG_pointer_type":
            return OpaqueType("pointer", size or _POINTER_SIZE)
        if tag in ("DW_TAG_structure_type", "DW_TAG_union_type"):
            return self._struct(die, size, union=tag == "DW_TAG_union_type")
        if tag == "DW_TAG_array_type":
            return self._array(die)
        return OpaqueType(tag.removeprefix("DW_TAG_"), size)

    def _struct(self, die: Any, size: int, union: bool) -> CType:
        name = self._name(die)
        if "DW_AT_declaration" in die.attributes:
            return OpaqueType(f"struct {name}", 0, self._decl(die))
        fields = []
        for child in die.iter_children():
            if child.tag != "DW_TAG_member":
                continue
            attrs = child.attributes
            member = self._name(child)
            if "DW_AT_bit_size" in attrs:
                raise LayoutError(f"struct {name} ({self._decl(die)}): field {member} is a bit "
                                  "field, which the harness does not support in shared structs")
            location = attrs.get("DW_AT_data_member_location")
            offset = location.value if location is not None and isinstance(location.value, int) \
                else 0
            fields.append(Field(member, offset, self.type_of(child)))
        return StructType(name, size, tuple(fields), self._decl(die), union)

    def _array(self, die: Any) -> CType:
        element = self.type_of(die)
        counts = []
        for child in die.iter_children():
            if child.tag != "DW_TAG_subrange_type":
                continue
            attrs = child.attributes
            if "DW_AT_count" in attrs:
                counts.append(int(attrs["DW_AT_count"].value))
            elif "DW_AT_upper_bound" in attrs and isinstance(attrs["DW_AT_upper_bound"].value,
                                                             int):
                counts.append(int(attrs["DW_AT_upper_bound"].value) + 1)
            else:
                counts.append(0)  # flexible array member
        result: CType = element
        for count in reversed(counts or [0]):
            result = ArrayType(result, count)
        return result

    # -- libbpf's map encoding

    def _map(self, name: str, die: Any) -> MapDecl:
        struct_die = die.get_DIE_from_attribute("DW_AT_type")
        while struct_die.tag in ("DW_TAG_typedef", "DW_TAG_const_type",
                                 "DW_TAG_volatile_type"):
            struct_die = struct_die.get_DIE_from_attribute("DW_AT_type")
        decl = self._decl(die)
        numbers: dict[str, int] = {}
        types: dict[str, CType] = {}
        for member in struct_die.iter_children():
            if member.tag != "DW_TAG_member" or "DW_AT_type" not in member.attributes:
                continue
            pointer = member.get_DIE_from_attribute("DW_AT_type")
            if pointer.tag != "DW_TAG_pointer_type":
                continue  # libbpf ignores what is not its encoding; so do we
            field_name = self._name(member)
            if "DW_AT_type" not in pointer.attributes:
                continue
            target = pointer.get_DIE_from_attribute("DW_AT_type")
            target_type = self.ctype(target)
            if (field_name in ("type", "key_size", "value_size", "max_entries", "map_flags",
                               "pinning", "numa_node", "map_extra")
                    and isinstance(target_type, ArrayType)):
                numbers[field_name] = target_type.count
            else:
                types[field_name] = target_type
        if "type" not in numbers:
            raise LayoutError(f"{decl}: map {name} has no __uint(type, ...)")
        key, value = types.get("key"), types.get("value")
        return MapDecl(
            name=name, map_type=numbers["type"], key=key, value=value,
            key_size=key.size if key is not None else numbers.get("key_size", 0),
            value_size=value.size if value is not None else numbers.get("value_size", 0),
            max_entries=numbers.get("max_entries", 0), flags=numbers.get("map_flags", 0),
            decl=decl)

    def _program(self, name: str, section: str, die: Any) -> ProgramDecl:
        context = None
        params = [c for c in die.iter_children() if c.tag == "DW_TAG_formal_parameter"]
        pointer = params[0] if params else None
        while pointer is not None and "DW_AT_type" in pointer.attributes:
            pointer = pointer.get_DIE_from_attribute("DW_AT_type")
            if pointer.tag == "DW_TAG_pointer_type":
                if "DW_AT_type" in pointer.attributes:
                    pointee = self.ctype(pointer.get_DIE_from_attribute("DW_AT_type"))
                    if isinstance(pointee, StructType):
                        context = pointee.name
                break
        return ProgramDecl(name, section, context, self._decl(die))

    # -- the whole object

    def _top_level(self) -> Iterator[Any]:
        for cu in self.dwarf.iter_CUs():
            yield from cu.get_top_DIE().iter_children()

    def layout(self, path: str, sections: dict[str, tuple[str, str]]) -> ObjectLayout:
        structs: dict[str, StructType] = {}
        enums: dict[str, dict[str, int]] = {}
        maps: dict[str, MapDecl] = {}
        programs: dict[str, ProgramDecl] = {}
        for die in self._top_level():
            name = self._name(die)
            tag = die.tag
            if tag == "DW_TAG_structure_type" and name and self._in_sources(die):
                built = self.ctype(die)
                if isinstance(built, StructType):
                    structs.setdefault(name, built)
            elif tag == "DW_TAG_enumeration_type" and self._in_sources(die):
                values = {self._name(c): int(c.attributes["DW_AT_const_value"].value)
                          for c in die.iter_children() if c.tag == "DW_TAG_enumerator"}
                enums.setdefault(name or f"<anonymous {self._decl(die)}>", values)
            elif tag == "DW_TAG_variable" and sections.get(name, ("",))[0] == ".maps" \
                    and "DW_AT_type" in die.attributes:
                maps.setdefault(name, self._map(name, die))
            elif tag == "DW_TAG_subprogram" and name in sections:
                section, kind = sections[name]
                if kind == "STT_FUNC" and not section.startswith(".") \
                        and "DW_AT_declaration" not in die.attributes:
                    programs.setdefault(name, self._program(name, section, die))
        return ObjectLayout(path, structs, enums, maps, programs)
