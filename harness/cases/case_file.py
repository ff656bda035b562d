"""Test-case JSON files, in the reference tool's shape.

```json
{"coredump-ref": "<sha256>", "threads": [{"lwp": 1, "frames": ["libc.so.6+0x..."]}],
 "modules": [{"ref": "<sha256>", "local-path": "/usr/lib/..."}],
 "skip": "reason", "fault-addresses": ["0x..."]}
```
Besides those, `gdb-differences` lists the explained differences from gdb, one
per frame or run of frames (GdbWaiver), and `no-module-bundling` says the
modules are rebuilt from the core's memory. Fields this code does not know are
kept and written back unchanged.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..arch import ARCH_NAMES
from ..errors import CaseError
from ..files import atomic_file
from .blobs import BLOB_ID

NO_MODULE_BUNDLING = "no-module-bundling"
KNOWN_KEYS = ("coredump-ref", "threads", "modules", "skip", "fault-addresses",
              "gdb-differences", NO_MODULE_BUNDLING)


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
    extra: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None

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


def _require(cond: bool, path: Path, what: str) -> None:
    if not cond:
        raise CaseError(f"{path}: {what}")


def _blob_ref(value: Any, path: Path, where: str) -> str:
    _require(isinstance(value, str) and bool(BLOB_ID.match(value)), path,
             f"{where} must be a sha256 blob id (64 lowercase hex digits), got {value!r}")
    return str(value)


def _frame_list(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(f, str) for f in value)


def _waivers(doc: Any, path: Path) -> list[GdbWaiver]:
    """The "gdb-differences" list. The old case-wide string is refused: it silenced
    every difference of the case, including ones nobody had looked at."""
    _require(not isinstance(doc, str), path,
             '"gdb-differences" is a list of per-frame waivers ({"lwp", "frame", "gdb", '
             '"ours", "why"}), not one string for the whole case; re-record the case with '
             '-gdb-differences "why" to store them')
    _require(isinstance(doc, list), path, '"gdb-differences" must be a list')
    waivers = []
    for i, w in enumerate(doc):
        where = f"gdb-differences[{i}]"
        _require(isinstance(w, dict), path, f"{where} must be an object")
        _require(isinstance(w.get("lwp"), int) and isinstance(w.get("frame"), int)
                 and w["frame"] >= 0, path,
                 f'{where} needs an integer "lwp" and a frame index "frame" (>= 0)')
        _require(_frame_list(w.get("gdb")) and _frame_list(w.get("ours")), path,
                 f'{where}: "gdb" and "ours" must be lists of frame strings')
        _require(isinstance(w.get("why"), str) and bool(w["why"].strip()), path,
                 f'{where}: "why" must say why the difference is accepted')
        waivers.append(GdbWaiver(w["lwp"], w["frame"], list(w["gdb"]), list(w["ours"]),
                                 w["why"]))
    return waivers


def parse_case(doc: Any, path: Path) -> TestCase:
    _require(isinstance(doc, dict), path, "the top level must be a JSON object")
    core_ref = _blob_ref(doc.get("coredump-ref"), path, '"coredump-ref"')

    threads_doc = doc.get("threads")
    _require(isinstance(threads_doc, list), path, '"threads" must be a list')
    threads = []
    for i, t in enumerate(threads_doc):
        _require(isinstance(t, dict) and isinstance(t.get("lwp"), int), path,
                 f"threads[{i}] must be an object with an integer \"lwp\"")
        frames = t.get("frames")
        _require(isinstance(frames, list) and all(isinstance(f, str) for f in frames), path,
                 f"threads[{i}].frames must be a list of strings")
        threads.append(ThreadFrames(t["lwp"], list(frames)))

    modules_doc = doc.get("modules", [])
    _require(isinstance(modules_doc, list), path, '"modules" must be a list')
    modules = []
    for i, m in enumerate(modules_doc):
        _require(isinstance(m, dict) and isinstance(m.get("local-path"), str), path,
                 f"modules[{i}] must be an object with a string \"local-path\"")
        modules.append(ModuleRef(_blob_ref(m.get("ref"), path, f"modules[{i}].ref"),
                                 m["local-path"]))

    skip = doc.get("skip")
    _require(skip is None or isinstance(skip, str), path, '"skip" must be a string')
    faults = []
    for a in doc.get("fault-addresses", []):
        try:
            faults.append(int(a, 0) if isinstance(a, str) else int(a))
        except (TypeError, ValueError):
            raise CaseError(f"{path}: fault address {a!r} is not a number") from None
    gdb_diff = _waivers(doc.get("gdb-differences", []), path)
    no_bundling = doc.get(NO_MODULE_BUNDLING, False)
    _require(isinstance(no_bundling, bool), path,
             f'"{NO_MODULE_BUNDLING}" must be true or false, got {no_bundling!r}')
    extra = {k: v for k, v in doc.items() if k not in KNOWN_KEYS}
    return TestCase(core_ref, threads, modules, skip or None, faults, gdb_diff, no_bundling,
                    extra, path)


def load_case(path: str | os.PathLike[str]) -> TestCase:
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as e:
        raise CaseError(f"cannot read test case {p}: {e.strerror}") from e
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        raise CaseError(f"{p}: malformed JSON at line {e.lineno} column {e.colno}: {e.msg}") from e
    return parse_case(doc, p)


def find_cases(root: str | os.PathLike[str]) -> list[Path]:
    """All case files under testdata/<arch>/, sorted."""
    base = Path(root)
    return sorted(p for p in base.glob("*/*.json") if p.parent.name in ARCH_NAMES)
