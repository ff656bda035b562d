"""Frame lists compared the way a person reads them: aligned, folded, annotated.

A missing or an extra frame is one deleted or inserted line (difflib's sequence
alignment), not every later line differing, and long runs of equal frames fold
into one line. The hunks are also the unit the gdb waivers of a case name
(record/verify.py): one hunk is one explained difference.

Nothing here knows where frames come from; `annotate` (for example the symbol
lookup of core/symbols.py) adds text beside a frame for display only.
"""

from __future__ import annotations

import bisect
import difflib
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from .core.module import Module
from .core.symbols import SymbolTable, module_symbols
from .paths import cache_root
from .unwind_data import synthesized_ranges

# Beside a frame whose rule came from its instructions, not from CFI
# (unwind_data/synthesize.py): the frame above it was found by that rule.
SYNTHESIZED_MARK = "[synthesized rule]"

__all__ = ["Hunk", "hunks", "frame_diff", "frame_annotator", "annotated"]

# Equal frames shown around a change; longer equal runs are folded.
CONTEXT = 2

Annotate = Callable[[str], str | None]


@dataclass(frozen=True)
class Hunk:
    """One difference: expected[exp_start:exp_end] became actual[act_start:act_end]."""

    exp_start: int
    exp_end: int
    act_start: int
    act_end: int

    def expected(self, frames: list[str]) -> list[str]:
        return frames[self.exp_start:self.exp_end]

    def actual(self, frames: list[str]) -> list[str]:
        return frames[self.act_start:self.act_end]


def _opcodes(expected: list[str], actual: list[str]) -> Sequence[tuple[str, int, int, int, int]]:
    # autojunk off: frame lists are short, and repeated frames (recursion) are signal.
    return difflib.SequenceMatcher(None, expected, actual, autojunk=False).get_opcodes()


def hunks(expected: list[str], actual: list[str]) -> list[Hunk]:
    """The differences between two frame lists, aligned (empty if equal)."""
    return [Hunk(i1, i2, j1, j2) for tag, i1, i2, j1, j2 in _opcodes(expected, actual)
            if tag != "equal"]


def _line(mark: str, exp_index: int | None, act_index: int | None, frame: str,
          annotate: Annotate | None) -> str:
    left = f"#{exp_index}" if exp_index is not None else ""
    right = f"#{act_index}" if act_index is not None else ""
    return f"  {mark} {left:>4} {right:>4}  {annotated(frame, annotate)}".rstrip()


def frame_diff(expected: list[str], actual: list[str], *, expected_name: str = "expected",
               actual_name: str = "got", annotate: Annotate | None = None,
               context: int = CONTEXT) -> str:
    """A unified-style diff of two frame lists.

    `-` lines are only in `expected`, `+` lines only in `actual`; the two index
    columns are the frame numbers on each side. Runs of more than 2*context+1
    equal frames are folded into `... N equal frames`."""
    lines = [f"  - {expected_name}   + {actual_name}   (columns: {expected_name} #, "
             f"{actual_name} #)"]
    ops = _opcodes(expected, actual)
    for n, (tag, i1, i2, j1, j2) in enumerate(ops):
        if tag == "equal":
            run = i2 - i1
            head = context if n > 0 else 0
            tail = context if n < len(ops) - 1 else 0
            if run > head + tail + 1:
                shown = list(range(head)) + [None] + list(range(run - tail, run))
            else:
                shown = list(range(run))
            for k in shown:
                if k is None:
                    folded = run - head - tail
                    lines.append(f"  ... {folded} equal frame{'s' if folded != 1 else ''}")
                else:
                    lines.append(_line(" ", i1 + k, j1 + k, expected[i1 + k], annotate))
            continue
        for i in range(i1, i2):
            lines.append(_line("-", i, None, expected[i], annotate))
        for j in range(j1, j2):
            lines.append(_line("+", None, j, actual[j], annotate))
    return "\n".join(lines)


NATIVE_FRAME = re.compile(r"(?P<module>[^<\s][^\s]*)\+0x(?P<addr>[0-9a-f]+)")


def frame_annotator(modules: Iterable[Module]) -> Annotate:
    """`clock_nanosleep+0x65` for `libc.so.6+0xcf545`, from the modules' symbols
    (core/symbols.py), or None. Tables are read on first use, so a diff that shows
    no frame costs nothing; the modules must stay open while it is used."""
    by_name: dict[str, Module] = {}
    for module in modules:
        by_name.setdefault(module.name, module)
    tables: dict[str, SymbolTable] = {}

    def annotate(frame: str) -> str | None:
        found = NATIVE_FRAME.fullmatch(frame)
        module = by_name.get(found["module"]) if found else None
        if found is None or module is None:
            return None
        table = tables.get(module.name)
        if table is None:
            table = tables[module.name] = module_symbols(module)
        addr = int(found["addr"], 16)
        name = table.lookup(addr)
        if _synthesized_at(module, addr):
            return f"{name}  {SYNTHESIZED_MARK}" if name else SYNTHESIZED_MARK
        return name

    return annotate


def _synthesized_at(module: Module, addr: int) -> bool:
    ranges = synthesized_ranges(module.local_path, module.content_id, cache_root())
    i = bisect.bisect_right(ranges, (addr, 1 << 64)) - 1
    return i >= 0 and ranges[i][0] <= addr < ranges[i][1]


def annotated(frame: str, annotate: Annotate | None, width: int = 36) -> str:
    """A frame with its symbol beside it, for printing."""
    note = annotate(frame) if annotate else None
    return f"{frame:<{width}}  {note}" if note else frame
