"""C types as the compiled unwinder describes them, and Python values through them.

The harness keeps no mirror of the unwinder's structs. bpf/debuginfo.py reads
them from the object's debug info into these descriptions: integers, arrays,
structs and unions with every field's offset, and opaque things (pointers,
functions) that have only a size. A description turns Python values into the
bytes a map holds and back:

- `encode(value)`: an int for an integer, a sequence for an array, and for a
  struct a mapping (or dataclass, or named tuple) of field name to value.
  Missing fields are zero, as in a C initialiser; a field the struct does not
  have, or a value that does not fit, is a `LayoutError` naming the struct,
  the field and where the struct is declared.
- `decode(data)`: ints, tuples, and for a struct a named tuple with one
  attribute per field (`record_type`), so a field added in C shows up in
  Python without a change here.

Everything goes through the `struct` module with explicit padding, so the byte
layout is exactly the one the debug info gives, whatever the host's own
alignment rules are.
"""

from __future__ import annotations

import dataclasses
import struct
from collections import namedtuple
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from ..errors import HarnessError

_INT_CODES = {1: "B", 2: "H", 4: "I", 8: "Q"}


class LayoutError(HarnessError):
    """A value does not fit the unwinder's declared type, or the type lacks what
    the harness needs."""


class CType:
    """Base of the type descriptions: a name, a size and where it is declared."""

    name: str
    size: int
    decl: str

    def describe(self) -> str:
        where = f" ({self.decl})" if self.decl else ""
        return f"{self.name}{where}"

    def flat_format(self) -> str:
        """struct-module codes of the whole type, pads as 'x' (no byte-order prefix)."""
        raise NotImplementedError

    def flatten(self, value: Any, out: list[Any], path: str) -> None:
        """Append this type's flat values for `value` (what flat_format packs)."""
        raise NotImplementedError

    def rebuild(self, flat: Iterable[Any]) -> Any:
        """Inverse of flatten over an iterator of unpacked values."""
        raise NotImplementedError

    @cached_property
    def codec(self) -> struct.Struct:
        return struct.Struct("<" + self.flat_format())

    @cached_property
    def zero_flat(self) -> list[Any]:
        """Flat values of an all-zero instance: what an unset field packs as."""
        return list(self.codec.unpack(bytes(self.size)))

    def encode(self, value: Any, path: str = "") -> bytes:
        """`path` names the value in errors (default: the type's name)."""
        out: list[Any] = []
        self.flatten(value, out, path or self.name)
        try:
            return self.codec.pack(*out)
        except struct.error as e:  # flatten checks ranges; this is a last resort
            raise LayoutError(f"{self.describe()}: {e}") from e

    def decode(self, data: bytes | bytearray | memoryview, offset: int = 0) -> Any:
        if len(data) - offset < self.size:
            data = bytes(data[offset:]).ljust(self.size, b"\0")
            offset = 0
        return self._decode_flat(self.codec.unpack_from(data, offset))

    def _decode_flat(self, flat: tuple[Any, ...]) -> Any:
        return self.rebuild(iter(flat))

    def to_json(self) -> dict[str, Any]:
        raise NotImplementedError


@dataclass(frozen=True, eq=False)
class IntType(CType):
    """An integer, enum or bool: its value is an int."""

    name: str
    size: int
    signed: bool = False
    decl: str = ""

    def flat_format(self) -> str:
        code = _INT_CODES.get(self.size)
        if code is None:
            raise LayoutError(f"{self.describe()}: integers of {self.size} bytes are not "
                              "supported")
        return code.lower() if self.signed else code

    def flatten(self, value: Any, out: list[Any], path: str) -> None:
        if isinstance(value, bool) or not isinstance(value, int):
            raise LayoutError(f"{path}: expected an integer for {self.name}, got "
                              f"{type(value).__name__}")
        bits = 8 * self.size
        low, high = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if self.signed \
            else (0, (1 << bits) - 1)
        if not low <= value <= high:
            raise LayoutError(f"{path}: {value:#x} does not fit {self.name} "
                              f"({self.size} bytes, {'signed' if self.signed else 'unsigned'})")
        out.append(value)

    def rebuild(self, flat: Iterable[Any]) -> Any:
        return next(iter(flat))

    def to_json(self) -> dict[str, Any]:
        return {"kind": "int", "name": self.name, "size": self.size, "signed": self.signed,
                "decl": self.decl}


@dataclass(frozen=True, eq=False)
class OpaqueType(CType):
    """A pointer, function or anything else Python does not look into: `size`
    zero bytes on the way in, skipped on the way out (None)."""

    name: str
    size: int
    decl: str = ""

    def flat_format(self) -> str:
        return f"{self.size}x" if self.size else ""

    def flatten(self, value: Any, out: list[Any], path: str) -> None:
        if value not in (None, 0):
            raise LayoutError(f"{path}: {self.name} is opaque to the harness; it cannot "
                              "be set from Python")

    def rebuild(self, flat: Iterable[Any]) -> Any:
        return None

    def to_json(self) -> dict[str, Any]:
        return {"kind": "opaque", "name": self.name, "size": self.size, "decl": self.decl}


@dataclass(frozen=True, eq=False)
class ArrayType(CType):
    """`count` elements; a flexible array member has count 0."""

    element: CType
    count: int
    decl: str = ""

    @property
    def name(self) -> str:  # type: ignore[override]
        return f"{self.element.name}[{self.count}]"

    @property
    def size(self) -> int:  # type: ignore[override]
        return self.element.size * self.count

    def flat_format(self) -> str:
        return self.element.flat_format() * self.count

    def flatten(self, value: Any, out: list[Any], path: str) -> None:
        if isinstance(value, (bytes, bytearray)) and self.element.size == 1:
            value = list(value)
        if not isinstance(value, Sequence) or isinstance(value, str):
            raise LayoutError(f"{path}: expected a sequence for {self.name}, got "
                              f"{type(value).__name__}")
        if len(value) > self.count:
            raise LayoutError(f"{path}: {len(value)} elements do not fit {self.name}")
        for i, item in enumerate(value):
            self.element.flatten(item, out, f"{path}[{i}]")
        zero = self.element.zero_flat
        for _ in range(self.count - len(value)):
            out.extend(zero)

    def rebuild(self, flat: Iterable[Any]) -> Any:
        it = iter(flat)
        return tuple(self.element.rebuild(it) for _ in range(self.count))

    def decode_prefix(self, data: bytes | bytearray | memoryview, offset: int,
                      count: int) -> list[Any]:
        """The first `count` elements only (a trace's used frames, not all of them)."""
        count = max(0, min(count, self.count))
        size = self.element.size
        end = offset + count * size
        if len(data) < end:
            data = bytes(data).ljust(end, b"\0")
        if not size:
            return [self.element.decode(b"") for _ in range(count)]
        element = self.element
        chunk = memoryview(data)[offset:end]
        return [element._decode_flat(flat) for flat in element.codec.iter_unpack(chunk)]

    def to_json(self) -> dict[str, Any]:
        return {"kind": "array", "element": self.element.to_json(), "count": self.count,
                "decl": self.decl}


@dataclass(frozen=True)
class Field:
    name: str
    offset: int
    type: CType


@dataclass(frozen=True, eq=False)
class StructType(CType):
    """A struct (or union) with every field at the offset the compiler chose."""

    name: str
    size: int
    fields: tuple[Field, ...]
    decl: str = ""
    union: bool = False
    _by_name: dict[str, Field] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        self._by_name.update((f.name, f) for f in self.fields)

    def field(self, name: str) -> Field:
        found = self._by_name.get(name)
        if found is None:
            raise LayoutError(f"struct {self.describe()} has no field {name!r}; it has "
                              f"{', '.join(self._by_name) or 'no fields'}")
        return found

    def has_field(self, name: str) -> bool:
        return name in self._by_name

    @cached_property
    def record_type(self) -> type:
        """The named tuple that decode() returns for this struct."""
        return namedtuple(self.name.replace(" ", "_") or "anonymous",  # type: ignore[misc]
                          [f.name for f in self.fields], rename=True)

    def _layout(self) -> list[tuple[Field, int]]:
        """Fields in offset order with the pad bytes before each (unions: the first
        field only carries data; the rest overlap it)."""
        if self.union:
            return [(self.fields[0], 0)] if self.fields else []
        out, pos = [], 0
        for f in sorted(self.fields, key=lambda f: f.offset):
            if f.offset < pos:
                raise LayoutError(f"struct {self.describe()}: field {f.name} overlaps the one "
                                  "before it (bit fields are not supported)")
            out.append((f, f.offset - pos))
            pos = f.offset + f.type.size
        return out

    def flat_format(self) -> str:
        parts, end = [], 0
        for f, pad in self._layout():
            parts.append(f"{pad}x" if pad else "")
            parts.append(f.type.flat_format())
            end = f.offset + f.type.size
        if self.size > end:
            parts.append(f"{self.size - end}x")
        return "".join(parts)

    def _values(self, value: Any, path: str) -> Mapping[str, Any]:
        if isinstance(value, Mapping):
            return value
        if hasattr(value, "_asdict"):
            return value._asdict()  # type: ignore[no-any-return]
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            return {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
        raise LayoutError(f"{path}: expected a mapping of field values for struct "
                          f"{self.name}, got {type(value).__name__}")

    def encode(self, value: Any, path: str = "") -> bytes:
        if self._all_ints_in_order and isinstance(value, dict):
            # the agent's common case (a map entry per mapping, per page): one pack call
            by_name = self._by_name
            for name in value:
                if name not in by_name:
                    break
            else:
                try:
                    return self.codec.pack(*[value.get(f.name, 0) for f in self.fields])
                except struct.error:
                    pass  # flatten below says which field and why
        return super().encode(value, path)

    def flatten(self, value: Any, out: list[Any], path: str) -> None:
        values = self._values(value, path)
        for name in values:
            if name not in self._by_name:
                raise LayoutError(f"{path}: struct {self.describe()} has no field {name!r}; "
                                  f"it has {', '.join(self._by_name) or 'no fields'}")
        for f, _pad in self._layout():
            if f.name in values:
                f.type.flatten(values[f.name], out, f"{path}.{f.name}")
            else:
                out.extend(f.type.zero_flat)

    def rebuild(self, flat: Iterable[Any]) -> Any:
        it = iter(flat)
        decoded = {f.name: f.type.rebuild(it) for f, _pad in self._layout()}
        return self.record_type(*(decoded.get(f.name) for f in self.fields))

    @cached_property
    def _all_ints_in_order(self) -> bool:
        """Flat ints declared in offset order: a record is the unpacked tuple as is."""
        offsets = [f.offset for f in self.fields]
        return (not self.union and offsets == sorted(offsets)
                and all(isinstance(f.type, IntType) for f in self.fields))

    def _decode_flat(self, flat: tuple[Any, ...]) -> Any:
        if self._all_ints_in_order:
            return self.record_type._make(flat)  # type: ignore[attr-defined]
        return self.rebuild(iter(flat))

    def decode_field(self, data: bytes | bytearray | memoryview, name: str,
                     offset: int = 0) -> Any:
        f = self.field(name)
        return f.type.decode(data, offset + f.offset)

    def packer(self, names: Sequence[str]) -> RowPacker:
        """A packer of many instances that set only `names` (the rest is zero)."""
        return RowPacker(self, tuple(names))

    def to_json(self) -> dict[str, Any]:
        return {"kind": "struct", "name": self.name, "size": self.size, "decl": self.decl,
                "union": self.union,
                "fields": [{"name": f.name, "offset": f.offset, "type": f.type.to_json()}
                           for f in self.fields]}


class RowPacker:
    """Packs rows of a few integer fields into consecutive struct instances with
    one struct-module call per chunk: bulk map writes (stack deltas) cost what
    the data costs, not a dict per entry."""

    CHUNK = 4096

    def __init__(self, struct_type: StructType, names: tuple[str, ...]) -> None:
        self.struct_type = struct_type
        self.names = names
        fields = [struct_type.field(n) for n in names]
        for f in fields:
            if not isinstance(f.type, IntType):
                raise LayoutError(f"struct {struct_type.describe()}: field {f.name} is not an "
                                  "integer; it cannot be bulk-packed")
        order = sorted(range(len(fields)), key=lambda i: fields[i].offset)
        self._order = order
        parts, pos = [], 0
        for i in order:
            f = fields[i]
            if f.offset < pos:
                raise LayoutError(f"struct {struct_type.describe()}: fields overlap")
            parts.append(f"{f.offset - pos}x" if f.offset > pos else "")
            parts.append(f.type.flat_format())
            pos = f.offset + f.type.size
        parts.append(f"{struct_type.size - pos}x" if struct_type.size > pos else "")
        self._row = "".join(parts)
        self._sorted = order == list(range(len(fields)))
        self._chunk = struct.Struct("<" + self._row * self.CHUNK)

    def pack(self, flat: Sequence[int]) -> bytes:
        """`flat` holds len(names) values per row, in the order of `names`."""
        width = len(self.names)
        if len(flat) % width:
            raise LayoutError(f"{self.struct_type.name}: {len(flat)} values are not whole rows "
                              f"of {width}")
        if not self._sorted:
            flat = [flat[r + i] for r in range(0, len(flat), width) for i in self._order]
        rows = len(flat) // width
        out = bytearray()
        step = self.CHUNK * width
        try:
            for start in range(0, rows - rows % self.CHUNK, self.CHUNK):
                out += self._chunk.pack(*flat[start * width:start * width + step])
            rest = rows % self.CHUNK
            if rest:
                tail = struct.Struct("<" + self._row * rest)
                out += tail.pack(*flat[(rows - rest) * width:])
        except struct.error as e:
            raise LayoutError(f"{self.struct_type.describe()}: a value does not fit its "
                              f"field ({e})") from e
        return bytes(out)


def from_json(doc: Mapping[str, Any]) -> CType:
    """Inverse of CType.to_json (the debug-info cache)."""
    kind = doc["kind"]
    if kind == "int":
        return IntType(doc["name"], doc["size"], doc["signed"], doc["decl"])
    if kind == "opaque":
        return OpaqueType(doc["name"], doc["size"], doc["decl"])
    if kind == "array":
        return ArrayType(from_json(doc["element"]), doc["count"], doc["decl"])
    if kind == "struct":
        fields = tuple(Field(f["name"], f["offset"], from_json(f["type"]))
                       for f in doc["fields"])
        return StructType(doc["name"], doc["size"], fields, doc["decl"], doc["union"])
    raise LayoutError(f"unknown type kind {kind!r} in the layout cache")


