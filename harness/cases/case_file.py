"""Test-case JSON files, in the reference tool's shape.

```json
{"coredump-ref": "<sha256>", "threads": [{"lwp": 1, "frames": ["libc.so.6+0x..."]}],
 "modules": [{"ref": "<sha256>", "local-path": "/usr/lib/..."}],
 "skip": "reason", "fault-addresses": ["0x..."]}
```
Besides those, `gdb-differences` lists the explained differences from gdb, one
per frame or run of frames (GdbWaiver), and `no-module-bundling` says the
modules are rebuilt from the core's memory. `gdb-executable` names the blob gdb
gets as the executable instead of the bundled one: the unstripped twin of a
stripped build (the same code; the symbols and DWARF gdb unwinds with). Fields
this code does not know are kept and written back unchanged.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..arch import ARCH_NAMES
from ..confine import open_regular, original_path_problem
from ..errors import CaseError
from ..files import atomic_file
from .blobs import BLOB_ID

NO_MODULE_BUNDLING = "no-module-bundling"
FULL_REF = "full-ref"
GDB_EXECUTABLE = "gdb-executable"
KNOWN_KEYS = ("coredump-ref", "threads", "modules", "skip", "fault-addresses",
              "gdb-differences", NO_MODULE_BUNDLING, FULL_REF, GDB_EXECUTABLE)


@dataclass
class ThreadFrames:
    lwp: int
    frames: list[str]


@dataclass
class GdbWaiver:
    """One accepted difference from gdb: in thread `lwp`, from our frame `frame` on,
    gdb printed `gdb` where we print `ours`, because `why`. It covers that difference
    only; any other difference in the case still fails (record/verify.py)."""

    lwp: int
    frame: int
    gdb: list[str]
    ours: list[str]
    why: str

    def to_json(self) -> dict[str, Any]:
        return {"lwp": self.lwp, "frame": self.frame, "gdb": list(self.gdb),
                "ours": list(self.ours), "why": self.why}


@dataclass
class ModuleRef:
    ref: str
    local_path: str


@dataclass
class TestCase:
    coredump_ref: str
    threads: list[ThreadFrames]
    modules: list[ModuleRef]
    skip: str | None = None
    fault_addresses: list[int] = field(default_factory=list)
    # The differences from gdb that are understood, each with its reason.
    gdb_differences: list[GdbWaiver] = field(default_factory=list)
    # No module is bundled: replay rebuilds them from the core's memory
    # (harness/core/memory_modules.py). Explicit, so that an empty module list is
    # never ambiguous ("nothing needed" or "read them from the core").
    no_module_bundling: bool = False
    # gdb's executable instead of the bundled one (a blob id): a stripped build's twin
    gdb_executable: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None
    # The full core of a case whose coredump-ref is a skinny one (core/skinny.py):
    # kept in the local full-core store and, once uploaded, in the remote store.
    full_ref: str | None = None

    __test__ = False  # not a pytest class

    @property
    def name(self) -> str:
        return self.path.stem if self.path else "<unsaved>"

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "coredump-ref": self.coredump_ref,
            "threads": [{"lwp": t.lwp, "frames": list(t.frames)} for t in self.threads],
            "modules": [{"ref": m.ref, "local-path": m.local_path} for m in self.modules],
        }
        if self.skip:
            doc["skip"] = self.skip
        if self.fault_addresses:
            doc["fault-addresses"] = [f"{a:#x}" for a in self.fault_addresses]
        if self.gdb_differences:
            doc["gdb-differences"] = [w.to_json() for w in self.gdb_differences]
        if self.no_module_bundling:
            doc[NO_MODULE_BUNDLING] = True
        if self.full_ref:
            doc[FULL_REF] = self.full_ref
        if self.gdb_executable:
            doc[GDB_EXECUTABLE] = self.gdb_executable
        doc.update(self.extra)
        return doc

    def save(self, path: str | os.PathLike[str] | None = None) -> Path:
        """Write atomically (an interrupted rebase never leaves half a file)."""
        target = Path(path) if path is not None else self.path
        if target is None:
            raise CaseError("no path to save the case to")
        text = json.dumps(self.to_json(), indent=2) + "\n"
        with atomic_file(target) as out:
            out.write(text.encode())
        self.path = target
        return target


# Limits of a case file, far above any real case (the largest bundled one is a few
# KiB) and far below what would exhaust memory or time: a file over them is not a
# case someone recorded, and is refused naming the field.
MAX_CASE_BYTES = 64 << 20
MAX_THREADS = 100_000
MAX_FRAMES = 8192  # per thread; the unwinder's traces are shorter
MAX_MODULES = 10_000
MAX_FAULT_ADDRESSES = 4096
MAX_NAME = 4096  # a frame or a path (PATH_MAX)
MAX_TEXT = 1 << 16  # skip, gdb-differences
MAX_DEPTH = 32  # nesting of the fields this code does not know (kept as they are)
MAX_INT_DIGITS = 40  # every number in a case is below 2**64 (20 digits)
_U64_LIMIT = 1 << 64
_LWP_LIMIT = 1 << 31


class _Checker:
    """Validation of one case document against the schema: each error names the file
    and the field (`threads[2].frames[7]`)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def fail(self, where: str, problem: str) -> CaseError:
        return CaseError(f"{self.path}: {where} {problem}")

    def require(self, cond: bool, where: str, problem: str) -> None:
        if not cond:
            raise self.fail(where, problem)

    def list_of(self, value: Any, where: str, limit: int) -> list[Any]:
        self.require(isinstance(value, list), where, f"must be a list, got {_kind(value)}")
        self.require(len(value) <= limit, where,
                     f"has {len(value)} entries, more than the limit of {limit}")
        return list(value)

    def obj(self, value: Any, where: str) -> dict[str, Any]:
        self.require(isinstance(value, dict), where, f"must be an object, got {_kind(value)}")
        return dict(value)

    def string(self, value: Any, where: str, limit: int = MAX_NAME) -> str:
        self.require(isinstance(value, str), where, f"must be a string, got {_kind(value)}")
        self.require(len(value) <= limit, where,
                     f"is {len(value)} characters long, more than the limit of {limit}")
        return str(value)

    def integer(self, value: Any, where: str, limit: int) -> int:
        self.require(isinstance(value, int) and not isinstance(value, bool), where,
                     f"must be an integer, got {_kind(value)}")
        self.require(0 <= value < limit, where, f"must be in [0, {limit:#x}), got {value}")
        return int(value)

    def blob_ref(self, value: Any, where: str) -> str:
        self.require(isinstance(value, str) and bool(BLOB_ID.match(value)), where,
                     "must be a sha256 blob id (64 lowercase hex digits), got "
                     f"{_short(value)}")
        return str(value)

    def address(self, value: Any, where: str) -> int:
        if isinstance(value, str) and len(value) <= MAX_INT_DIGITS:
            try:
                value = int(value, 0)
            except ValueError:
                pass
        if not isinstance(value, int) or isinstance(value, bool):
            raise CaseError(f"{self.path}: {where}: fault address {_short(value)} is not a "
                            "number")
        return self.integer(value, where, _U64_LIMIT)

    def depth(self, value: Any, where: str) -> None:
        """Nesting of a field kept as it is, checked without recursion."""
        stack = [(value, 1)]
        while stack:
            item, level = stack.pop()
            if isinstance(item, dict | list):
                self.require(level <= MAX_DEPTH, where,
                             f"is nested more than {MAX_DEPTH} levels deep")
                children = item.values() if isinstance(item, dict) else item
                stack.extend((child, level + 1) for child in children)


def _kind(value: Any) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "true/false",
             type(None): "null", float: "a fraction"}
    return names.get(type(value), "a number" if isinstance(value, int) else type(value).__name__)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _frame_list(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(f, str) for f in value)


def _waivers(doc: Any, path: Path, check: _Checker) -> list[GdbWaiver]:
    """The "gdb-differences" list. The old case-wide string is refused: it silenced
    every difference of the case, including ones nobody had looked at."""
    check.require(not isinstance(doc, str), '"gdb-differences"',
                  'is a list of per-frame waivers ({"lwp", "frame", "gdb", "ours", "why"}), '
                  "not one string for the whole case; re-record the case with "
                  '-gdb-differences "why" to store them')
    waivers = []
    for i, w in enumerate(check.list_of(doc, '"gdb-differences"', MAX_THREADS)):
        where = f"gdb-differences[{i}]"
        entry = check.obj(w, where)
        check.require(isinstance(entry.get("lwp"), int) and isinstance(entry.get("frame"), int)
                      and not isinstance(entry.get("frame"), bool) and entry["frame"] >= 0,
                      where, 'needs an integer "lwp" and a frame index "frame" (>= 0)')
        lwp = check.integer(entry["lwp"], f"{where}.lwp", _LWP_LIMIT)
        frame = check.integer(entry["frame"], f"{where}.frame", MAX_FRAMES)
        check.require(_frame_list(entry.get("gdb")) and _frame_list(entry.get("ours")), where,
                      '"gdb" and "ours" must be lists of frame strings')
        gdb = [check.string(f, f"{where}.gdb[{j}]") for j, f in
               enumerate(check.list_of(entry["gdb"], f"{where}.gdb", MAX_FRAMES))]
        ours = [check.string(f, f"{where}.ours[{j}]") for j, f in
                enumerate(check.list_of(entry["ours"], f"{where}.ours", MAX_FRAMES))]
        check.require(isinstance(entry.get("why"), str) and bool(entry["why"].strip()), where,
                      '"why" must say why the difference is accepted')
        waivers.append(GdbWaiver(lwp, frame, gdb, ours,
                                 check.string(entry["why"], f"{where}.why", MAX_TEXT)))
    return waivers


def parse_case(doc: Any, path: Path) -> TestCase:
    """A TestCase from a decoded case document; CaseError naming the field if it does
    not fit the schema (the module docstring) or its limits."""
    check = _Checker(path)
    if not isinstance(doc, dict):
        raise CaseError(f"{path}: the top level must be a JSON object")
    core_ref = check.blob_ref(doc.get("coredump-ref"), '"coredump-ref"')

    threads = []
    seen: dict[int, int] = {}
    for i, t in enumerate(check.list_of(doc.get("threads"), '"threads"', MAX_THREADS)):
        where = f"threads[{i}]"
        entry = check.obj(t, where)
        check.require("lwp" in entry, where, 'must be an object with an integer "lwp"')
        lwp = check.integer(entry["lwp"], f"{where}.lwp", _LWP_LIMIT)
        check.require(lwp not in seen, f"{where}.lwp",
                      f"{lwp} is the lwp of threads[{seen.get(lwp)}] too")
        seen[lwp] = i
        frames_doc = entry.get("frames")
        check.require(isinstance(frames_doc, list), f"{where}.frames",
                      "must be a list of strings")
        frames = [check.string(f, f"{where}.frames[{j}] (a list of strings)")
                  for j, f in enumerate(check.list_of(frames_doc, f"{where}.frames",
                                                      MAX_FRAMES))]
        threads.append(ThreadFrames(lwp, frames))

    modules = []
    for i, m in enumerate(check.list_of(doc.get("modules", []), '"modules"', MAX_MODULES)):
        where = f"modules[{i}]"
        entry = check.obj(m, where)
        check.require(isinstance(entry.get("local-path"), str), where,
                      'must be an object with a string "local-path"')
        local = check.string(entry["local-path"], f"{where}.local-path")
        problem = original_path_problem(local)
        check.require(problem is None, f"{where}.local-path", f"{problem}: {_short(local)}")
        modules.append(ModuleRef(check.blob_ref(entry.get("ref"), f"{where}.ref"), local))

    skip = doc.get("skip")
    if skip is not None:
        skip = check.string(skip, '"skip"', MAX_TEXT)
    faults = [check.address(a, f"fault-addresses[{i}]") for i, a in enumerate(
        check.list_of(doc.get("fault-addresses", []), '"fault-addresses"',
                      MAX_FAULT_ADDRESSES))]
    gdb_diff = _waivers(doc.get("gdb-differences", []), path, check)
    no_bundling = doc.get(NO_MODULE_BUNDLING, False)
    check.require(isinstance(no_bundling, bool), f'"{NO_MODULE_BUNDLING}"',
                  f"must be true or false, got {_short(no_bundling)}")
    full_ref = doc.get(FULL_REF)
    if full_ref is not None:
        full_ref = check.blob_ref(full_ref, f'"{FULL_REF}"')
    gdb_exe = doc.get(GDB_EXECUTABLE)
    if gdb_exe is not None:
        gdb_exe = check.blob_ref(gdb_exe, f'"{GDB_EXECUTABLE}"')
    extra = {k: v for k, v in doc.items() if k not in KNOWN_KEYS}
    for key, value in extra.items():
        check.depth(value, f'"{key[:80]}"')
    return TestCase(core_ref, threads, modules, skip or None, faults, gdb_diff, no_bundling,
                    gdb_executable=gdb_exe, extra=extra, path=path, full_ref=full_ref)


def _json_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise ValueError(f"an integer of {len(text)} digits (at most {MAX_INT_DIGITS})")
    return int(text)


def _json_constant(name: str) -> float:
    raise ValueError(f"{name} is not JSON (no case field takes it)")


def decode_case(raw: bytes, path: Path) -> Any:
    """The JSON document in a case file's bytes: strict UTF-8, no NaN or Infinity, no
    integer of more than MAX_INT_DIGITS digits, bounded nesting."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        hint = " (it looks like UTF-16)" if raw[:2] in (b"\xff\xfe", b"\xfe\xff") else ""
        raise CaseError(f"{path}: not UTF-8 text: byte {e.start} is {raw[e.start]:#04x}{hint}; "
                        "case files are UTF-8 JSON") from None
    try:
        return json.loads(text, parse_int=_json_int, parse_constant=_json_constant)
    except json.JSONDecodeError as e:
        raise CaseError(f"{path}: malformed JSON at line {e.lineno} column {e.colno}: {e.msg}"
                        ) from None
    except ValueError as e:  # from the hooks above
        raise CaseError(f"{path}: {e}") from None
    except RecursionError:
        raise CaseError(f"{path}: JSON nested too deeply (a case needs {MAX_DEPTH} levels "
                        "at most)") from None


def load_case(path: str | os.PathLike[str]) -> TestCase:
    """Read and validate a case file (see the module docstring for its schema)."""
    p = Path(path)
    try:
        fd = open_regular(p, "case file", CaseError, max_size=MAX_CASE_BYTES)
    except CaseError as e:
        raise CaseError(f"cannot read {e}") from None
    with os.fdopen(fd, "rb") as f:
        raw = f.read(MAX_CASE_BYTES + 1)
    if len(raw) > MAX_CASE_BYTES:
        raise CaseError(f"{p}: more than {MAX_CASE_BYTES} bytes; not a case file")
    return parse_case(decode_case(raw, p), p)


def find_cases(root: str | os.PathLike[str]) -> list[Path]:
    """All case files under testdata/<arch>/, sorted."""
    base = Path(root)
    return sorted(p for p in base.glob("*/*.json") if p.parent.name in ARCH_NAMES)
