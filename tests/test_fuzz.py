"""The fuzz suite (issue 20): mutated real inputs never give a traceback or a hang.

Four targets (tests/fuzz_targets.py): the core loader, the case loader, the blob
store's check, and the whole `analyze -core -sysroot` path. Inputs are the bundled
case's core, modules, case file and blob with a few edits, mostly where parsers look
(ELF and program headers, notes, NT_FILE names, case fields). The normal run tries a
fixed, derandomised handful per target (a few seconds in all); `scripts/fuzz` sets
COREDUMP_FUZZ_EXAMPLES and runs for as long as it is given, with random seeds.
A failure is shrunk by hypothesis; its minimised input becomes a regression test in
tests/test_fuzz_regressions.py.
"""

from __future__ import annotations

import copy
import json
import os
import signal
import struct
from collections import Counter
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any

import pytest

hypothesis = pytest.importorskip("hypothesis", reason="the fuzz suite needs hypothesis "
                                 "(pip install -e '.[dev]')")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from tests import fuzz_targets as targets  # noqa: E402
from tests.hostile import with_file_paths  # noqa: E402

LONG = int(os.environ.get("COREDUMP_FUZZ_EXAMPLES", "0"))
EXAMPLE_SECONDS = 60  # one input taking longer is a hang
TALLY: Counter[tuple[str, str]] = Counter()


def budget(normal: int) -> Any:
    """Settings of one target: `normal` derandomised examples in the suite, or LONG random
    ones under scripts/fuzz."""
    return settings(max_examples=LONG or normal, deadline=None, derandomize=not LONG,
                    suppress_health_check=list(HealthCheck), database=None if not LONG
                    else settings.default.database)


class Hang(Exception):
    """An input ran past EXAMPLE_SECONDS."""


def _alarm(_signum: int, _frame: FrameType | None) -> None:
    raise Hang(f"one input ran for more than {EXAMPLE_SECONDS} s")


def judged(target: str, run: Callable[[], str]) -> None:
    """Run one input with a time limit and count its outcome."""
    old = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(EXAMPLE_SECONDS)
    try:
        TALLY[(target, run())] += 1
    except Hang:
        TALLY[(target, "hang")] += 1
        raise
    except MemoryError:
        TALLY[(target, "memory")] += 1
        raise
    except BaseException:
        TALLY[(target, "traceback")] += 1
        raise
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


@pytest.fixture(scope="module", autouse=True)
def report() -> Iterator[None]:
    yield
    lines = [f"  {t:8} {o:10} {n}" for (t, o), n in sorted(TALLY.items())]
    print("\nfuzz outcomes (target, outcome, inputs):\n" + "\n".join(lines))


# ----------------------------------------------------------------- mutations

U64_EDGES = [0, 1, 0x7F, 0x80, 0xFF, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF, 1 << 32, 1 << 63,
             (1 << 64) - 1, (1 << 64) - 8, 4096, 0x10000, 56, 64]


@st.composite
def mutated(draw: st.DrawFn, data: bytes, regions: list[tuple[int, int]]) -> bytes:
    """data with 1 to 6 edits: a byte, a u16/u32/u64 set to an edge value, a cut, a
    splice; offsets mostly inside `regions`."""
    buf = bytearray(data)
    for _ in range(draw(st.integers(1, 6))):
        if not buf:
            break
        if regions and draw(st.integers(0, 9)) < 9:
            start, size = draw(st.sampled_from(regions))
            at = min(len(buf) - 1, start + draw(st.integers(0, max(0, size - 1))))
        else:
            at = draw(st.integers(0, len(buf) - 1))
        kind = draw(st.sampled_from(["byte", "u16", "u32", "u64", "cut", "splice", "zero"]))
        if kind == "byte":
            buf[at] = draw(st.integers(0, 255))
        elif kind in ("u16", "u32", "u64"):
            width = {"u16": 2, "u32": 4, "u64": 8}[kind]
            value = draw(st.sampled_from(U64_EDGES + [len(buf), len(buf) + 1]))
            value &= (1 << (8 * width)) - 1
            buf[at:at + width] = value.to_bytes(width, "little")
        elif kind == "cut":
            del buf[at:]
        elif kind == "splice":
            buf[at:at] = draw(st.binary(min_size=1, max_size=64))
        else:
            del buf[at:at + draw(st.integers(1, 256))]
    return bytes(buf)


HOSTILE_NAMES = [b"/../../../../../../etc/passwd", b"/\xff\xfe/libc.so.6", b"", b"relative",
                 b"/" + b"a" * 5000, b"/dev/zero", b"/proc/self/mem", b"/.", b"/..",
                 b"/usr/lib/x86_64-linux-gnu/../../../../etc/shadow", b"/a (deleted)"]


@st.composite
def renamed_core(draw: st.DrawFn) -> bytes:
    """The seed core with some NT_FILE names made hostile."""
    names = draw(st.lists(st.sampled_from(HOSTILE_NAMES) | st.binary(max_size=40),
                          min_size=1, max_size=4))
    picks: dict[bytes, bytes] = {}

    def rename(path: bytes) -> bytes:
        if path not in picks:
            picks[path] = names[len(picks) % len(names)] if len(picks) % 2 == 0 else path
        return picks[path].replace(b"\0", b"")
    return with_file_paths(targets.seed().core, rename)


def _deep(levels: int) -> Any:
    value: Any = 1
    for _ in range(levels):
        value = [value]
    return value


# Values a field may be set to: most are wrong somewhere, some are fine everywhere they
# land (an unknown field, a frame string), so both outcomes are exercised.
HOSTILE_VALUES: list[Any] = ["a frame+0x1", {"future": [1, 2]}, None, True, False, -1, 0,
                             2 ** 64, 2 ** 63 - 1, 1e308, -0.0, "", "\x00",
                             "/../../x", "rel/path", "a" * 5000, "0x", "0xzz", [], {},
                             _deep(34),
                             {"lwp": 1}, "\ud800", "libc.so.6+0x1", ["x"] * 3]


def _paths(doc: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield prefix
    if isinstance(doc, dict):
        for k, v in doc.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(doc, list):
        for i, v in enumerate(doc[:4]):
            yield from _paths(v, (*prefix, i))


@st.composite
def mutated_case(draw: st.DrawFn) -> bytes:
    """The seed case file with a field replaced by a hostile value, or its bytes edited."""
    text = targets.SEED_CASE.read_bytes()
    mode = draw(st.sampled_from(["bytes", "fields", "extra"]))
    if mode == "bytes":
        return draw(mutated(text, [(0, len(text))]))
    doc = json.loads(text)
    if mode == "extra":  # fields this code does not know are kept as they are
        doc[draw(st.text(max_size=20))] = copy.deepcopy(draw(st.sampled_from(HOSTILE_VALUES)))
    for _ in range(draw(st.integers(1, 3)) if mode == "fields" else 0):
        where = draw(st.sampled_from(list(_paths(doc))))
        value = copy.deepcopy(draw(st.sampled_from(HOSTILE_VALUES)))
        if not where:
            doc = value
            continue
        node = doc
        for key in where[:-1]:
            node = node[key]
        node[where[-1]] = value
    raw = json.dumps(doc).encode("utf-8", "surrogatepass")
    encoding = draw(st.sampled_from(["utf-8"] * 8 + ["utf-16", "latin-1-ish"]))
    if encoding == "utf-16":
        return raw.decode("utf-8", "surrogatepass").encode("utf-16", "surrogatepass")
    if encoding == "latin-1-ish":
        return raw.replace(b"libc", b"lib\xe7")
    return raw


# ----------------------------------------------------------------- the targets


@budget(300)
@given(st.data())
def test_core_loader(data: st.DataObject) -> None:
    core = targets.seed().core
    mutant = data.draw(mutated(core, targets.header_regions(core)))
    judged("core", lambda: targets.run_core(mutant))


@budget(300)
@given(mutated_case())
def test_case_loader(raw: bytes) -> None:
    judged("case", lambda: targets.run_case(raw))


@budget(100)
@given(st.data())
def test_blob_store(data: st.DataObject) -> None:
    seed = targets.seed()
    blob = data.draw(mutated(seed.blob, [(0, 32), (len(seed.blob) - 16, 16)]))
    judged("blob", lambda: targets.run_blob(blob, seed.blob_id))


@budget(60)
@given(st.data())
def test_analyze_core(data: st.DataObject) -> None:
    """The whole `analyze -core -sysroot` path, with the core's headers and notes, its
    NT_FILE names, its stacks, or a module's headers and sections (CFI, symbols) corrupted."""
    seed = targets.seed()
    core, modules = seed.core, dict(seed.modules)
    what = data.draw(st.sampled_from(["core", "names", "stack", "executable", "libc"]))
    if what == "core":
        core = data.draw(mutated(core, targets.header_regions(core)))
    elif what == "names":
        core = data.draw(renamed_core())
    elif what == "stack":
        core = data.draw(mutated(core, targets.stack_regions(core)))
    else:
        exe = next(p for p in modules if p.endswith("chain.O2.nofp" if what == "executable"
                                                    else "libc.so.6"))
        regions = targets.header_regions(modules[exe]) + targets.section_regions(modules[exe])
        modules[exe] = data.draw(mutated(modules[exe], regions))
    judged("analyze", lambda: targets.run_analyze(core, modules))


@budget(40)
@given(st.data())
def test_modules_rebuilt_from_memory(data: st.DataObject) -> None:
    """-no-module-bundling: ELF headers and .eh_frame read back from the core's memory."""
    core = targets.nobundle_core()
    mutant = data.draw(mutated(core, targets.header_regions(core)
                               + targets.stack_regions(core)
                               + [(o, 4096) for o in _elf_images(core)]))
    judged("rebuild", lambda: targets.run_rebuild(mutant))


def _elf_images(core: bytes) -> list[int]:
    """File offsets in the core where a module's ELF header was dumped."""
    found, at = [], core.find(b"\x7fELF", 64)
    while at != -1 and len(found) < 16:
        found.append(at)
        at = core.find(b"\x7fELF", at + 4)
    return found


@budget(200)
@given(st.data())
def test_go_pclntab(data: st.DataObject) -> None:
    """Go's .gopclntab, from a bundled Go executable: its header, function table and
    the start of its pc-value tables corrupted."""
    table = targets.go_table()
    mutant = data.draw(mutated(table, [(0, 256), (len(table) // 3, 4096),
                                       (len(table) // 2, 4096)]))
    judged("pclntab", lambda: targets.run_pclntab(mutant))


def test_the_mutations_reach_the_error_paths() -> None:
    """The suite is not vacuous: the targets see both good and refused inputs."""
    seed = targets.seed()
    assert targets.run_core(seed.core) == "ok"
    assert targets.run_core(seed.core[:100]) == "error"
    assert targets.run_case(targets.SEED_CASE.read_bytes()) == "ok"
    assert targets.run_case(b"{") == "error"
    assert targets.run_blob(seed.blob, seed.blob_id) == "ok"
    assert targets.run_blob(seed.blob[:20], seed.blob_id) == "error"
    assert targets.run_analyze(seed.core, seed.modules) == "ok"
    truncated = bytearray(seed.core)
    struct.pack_into("<H", truncated, 56, 0xFFFF)
    assert targets.run_analyze(bytes(truncated), seed.modules) == "error"
    assert targets.run_rebuild(targets.nobundle_core()) == "ok"
    assert targets.run_pclntab(targets.go_table()) == "ok"
    assert targets.run_pclntab(targets.go_table()[:12]) == "error"
    assert targets.section_regions(seed.modules[next(iter(seed.modules))])
    assert targets.stack_regions(seed.core)
