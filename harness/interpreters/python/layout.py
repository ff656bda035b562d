"""What the agent learns about one CPython build in a process: where its eval loop is,
the offsets its frames are walked with, and where a code object keeps its names.

Facts come from the binary wherever it carries them (facts.py says which and why):
the symbols, `PyCode_Type.tp_members`, and in 3.13 `_Py_DebugOffsets`. Members and
debug offsets are read through the process (the core), since a shared libpython's
pointers are only relocated in memory.
"""

from __future__ import annotations

import json
import re
import struct
from dataclasses import dataclass, field, replace

from ...core.module import Module
from ...core.process import Process
from ...core.symbols import named_symbols
from ...errors import HarnessError
from ...files import atomic_path
from ...paths import cache_root
from .facts import ENTRY_SHIM, VersionFacts, facts_for

__all__ = ["PythonLayout", "CodeFields", "python_version", "python_layout",
           "python_layouts"]

_VERSION_IN_NAME = re.compile(r"python(\d)\.(\d+)")
EVAL_LOOP = "_PyEval_EvalFrameDefault"
_SYMBOLS = ("_PyRuntime", "interp_head", "PyCode_Type", EVAL_LOOP, EVAL_LOOP + ".cold")

# PyTypeObject.tp_members (Include/cpython/object.h; the same slot in 3.6 to 3.13).
TP_MEMBERS = 240
# struct PyMemberDef {const char *name; int type; Py_ssize_t offset; int flags;
# const char *doc;} (Include/structmember.h, descrobject.h in 3.12+): 40 bytes.
_MEMBER = struct.Struct("<QiiqiiQ")
_MAX_MEMBERS = 64
_DEBUG_COOKIE = b"xdebugpy"


@dataclass(frozen=True)
class CodeFields:
    """Offsets of a code object's fields that symbolization reads (tp_members)."""

    filename: int
    name: int
    firstlineno: int
    linetable: int        # co_lnotab (<= 3.9) or co_linetable (3.10+)
    qualname: int | None  # co_qualname (3.11+)


@dataclass(frozen=True)
class PythonLayout:
    """One interpreter build as mapped in one process."""

    version: tuple[int, int]
    module: Module
    bias: int
    runtime: int                       # ELF address of _PyRuntime
    eval_ranges: tuple[tuple[int, int], ...]  # ELF address ranges of the eval loop
    facts: VersionFacts
    code: CodeFields
    sources: dict[str, str] = field(default_factory=dict)  # fact group -> where from

    def bpf_fields(self) -> dict[str, int | str]:
        """struct python_layout of bpf_src/types.h, by field name (enums by name)."""
        f = self.facts
        return {
            "runtime": self.runtime,
            "runtime_interpreters_head": f.runtime_interpreters_head,
            "interp_threads_head": f.interp_threads_head,
            "tstate_next": f.tstate_next,
            "tstate_native_thread_id": f.tstate_native_thread_id,
            "tstate_thread_id": f.tstate_thread_id,
            "tstate_frame": f.tstate_frame,
            "cframe_current_frame": f.cframe_current_frame or 0,
            "frame_previous": f.frame_previous,
            "frame_code": f.frame_code,
            "frame_instr": f.frame_instr,
            "frame_entry": f.frame_entry,
            "code_instructions": f.code_instructions,
            "frame_model": f.frame_model,
            "entry_marker": f.entry_marker,
            "via_cframe": int(f.cframe_current_frame is not None),
            "lasti_unit": 2 if self.version == (3, 10) else 1,
            "owner_cstack": f.owner_cstack if f.entry_marker == ENTRY_SHIM else 0,
        }


def python_version(module: Module) -> tuple[int, int] | None:
    """The CPython version a module is the interpreter of, from its file name
    (libpython3.11.so.1.0, python3.11): the one place every build spells it."""
    found = _VERSION_IN_NAME.search(module.name)
    return (int(found.group(1)), int(found.group(2))) if found else None


def _u64(process: Process, addr: int) -> int | None:
    data = process.read(addr, 8)
    return int.from_bytes(data, "little") if data is not None else None


def _cstring(process: Process, addr: int, limit: int = 64) -> str | None:
    data = process.read(addr, limit)
    if data is None:
        return None
    return data.split(b"\0", 1)[0].decode(errors="replace")


def type_members(process: Process, type_addr: int) -> dict[str, int]:
    """{member name: offset} of a type object's tp_members table, read from memory."""
    table = _u64(process, type_addr + TP_MEMBERS)
    members: dict[str, int] = {}
    if not table:
        return members
    for i in range(_MAX_MEMBERS):
        raw = process.read(table + i * _MEMBER.size, _MEMBER.size)
        if raw is None:
            break
        name_ptr, _type, _pad, offset, _flags, _pad2, _doc = _MEMBER.unpack(raw)
        if not name_ptr:
            break
        name = _cstring(process, name_ptr)
        if name is None:
            break
        members[name] = offset
    return members


def _debug_offsets(process: Process, runtime_addr: int, facts: VersionFacts
                   ) -> tuple[VersionFacts, CodeFields] | None:
    """3.13's _Py_DebugOffsets (pycore_debug_offsets.h) at the start of _PyRuntime."""
    raw = process.read(runtime_addr, 584)
    if raw is None or raw[:8] != _DEBUG_COOKIE:
        return None
    q = struct.unpack_from("<73Q", raw)  # the struct, one u64 per field

    def at(offset: int) -> int:
        return q[offset // 8]
    updated = replace(
        facts,
        runtime_interpreters_head=at(40), interp_threads_head=at(72),
        tstate_next=at(168), tstate_frame=at(184), tstate_native_thread_id=at(200),
        frame_previous=at(232), frame_code=at(240), frame_instr=at(248),
        frame_entry=at(264), code_instructions=at(344), ascii_size=at(560))
    code = CodeFields(filename=at(280), name=at(288), qualname=at(296), linetable=at(304),
                      firstlineno=at(312))
    return updated, code


_SYMBOL_CACHE_VERSION = 1


def _interpreter_symbols(module: Module) -> dict[str, tuple[int, int]]:
    """named_symbols(module, _SYMBOLS), cached on disk per content hash: walking
    libpython's 8,000 symbols was most of a warm replay's map filling (27 ms per
    interpreter module, in every process)."""
    path = (cache_root() / "symbols"
            / f"{module.content_id}.python.v{_SYMBOL_CACHE_VERSION}.json")
    try:
        doc = json.loads(path.read_text())
        if isinstance(doc, dict) and all(isinstance(v, list) and len(v) == 2
                                         and all(isinstance(x, int) for x in v)
                                         for v in doc.values()):
            return {name: (v[0], v[1]) for name, v in doc.items()}
    except (OSError, ValueError):
        pass
    found = named_symbols(module.read, _SYMBOLS)
    try:
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(found))
    except (OSError, HarnessError):
        pass  # a cache that cannot be written costs time, not results
    return found


def python_layout(process: Process, module: Module) -> PythonLayout | None:
    """The layout of the CPython build `module` is, if it is one this harness knows
    (its eval loop and _PyRuntime in the module, its version in FACTS)."""
    version = python_version(module)
    facts = facts_for(version) if version else None
    if version is None or facts is None:
        return None
    if not facts.tstate_native_thread_id and process.arch != "amd64":
        return None  # thread_id is pthread_self(), the thread pointer only on x86-64
    symbols = _interpreter_symbols(module)
    if EVAL_LOOP not in symbols or facts.runtime_symbol not in symbols \
            or "PyCode_Type" not in symbols:
        return None
    bias = next((m.bias for m in process.mappings if m.module is module), None)
    if bias is None:
        return None
    ranges = tuple((addr, addr + max(size, 1)) for name, (addr, size) in symbols.items()
                   if name.startswith(EVAL_LOOP))
    sources = {"eval loop": ", ".join(n for n in symbols if n.startswith(EVAL_LOOP)),
               "private structs": f"harness/interpreters/python/facts.py {version}"}
    runtime = symbols[facts.runtime_symbol][0]
    members = type_members(process, symbols["PyCode_Type"][0] + bias)
    linetable = members.get("co_linetable", members.get("co_lnotab"))
    needed = ("co_filename", "co_name", "co_firstlineno")
    code = None
    if linetable is not None and all(n in members for n in needed):
        code = CodeFields(members["co_filename"], members["co_name"],
                          members["co_firstlineno"], linetable, members.get("co_qualname"))
        sources["code object"] = "PyCode_Type.tp_members"
    debug = _debug_offsets(process, runtime + bias, facts) if version >= (3, 13) else None
    if debug is not None:
        facts, code = debug
        sources["private structs"] = sources["code object"] = "_Py_DebugOffsets"
    if code is None:
        return None
    return PythonLayout(version, module, bias, runtime, ranges, facts, code, sources)


def python_layouts(process: Process) -> list[PythonLayout]:
    """Every CPython build the process maps (normally one)."""
    found = []
    seen: set[int] = set()
    for mapping in process.mappings:
        module = mapping.module
        if module is None or module.file_id in seen:
            continue
        seen.add(module.file_id)
        if python_version(module) is None:
            continue
        layout = python_layout(process, module)
        if layout is not None:
            found.append(layout)
    return found
