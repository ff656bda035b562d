"""Cases named the way people name them: a path, `arch/name`, or a bare `name`.

`coredump replay amd64/threads`, `analyze -case threads`: a name is matched
exactly (`chain.O2.nofp` is not `chain.O2.nofp.nobundle`), unlike pytest's `-k`,
which selects by substring. A bare name that exists for both architectures names
both; commands that take one case say so and ask for `arch/name`.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from pathlib import Path

from ..errors import CaseError
from .case_file import find_cases

__all__ = ["case_label", "resolve_case", "resolve_cases", "resolve_one"]


def case_label(path: Path) -> str:
    """`arch/name`, the short name a case is shown and selected by."""
    return f"{path.parent.name}/{path.stem}"


def resolve_case(given: str, testdata: Path) -> list[Path]:
    """The case files `given` names: an existing file, or `[arch/]name[.json]`
    under testdata."""
    path = Path(given)
    if path.is_file():
        return [path]
    if path.is_absolute() or len(path.parts) > 2:
        raise CaseError(f"case file {given} does not exist")
    cases = find_cases(testdata)
    wanted = given.removesuffix(".json")
    found = [p for p in cases if wanted in (case_label(p), p.stem)]
    if found:
        return found
    labels = [case_label(p) for p in cases]
    near = difflib.get_close_matches(wanted, labels + [p.stem for p in cases], n=3)
    hint = f" (did you mean {', '.join(dict.fromkeys(near))}?)" if near else ""
    raise CaseError(f"no case {given!r}: give a case file, arch/name or name{hint}; "
                    "`coredump list` shows the cases")


def resolve_cases(given: Sequence[str], testdata: Path) -> list[Path]:
    """Every case the arguments name, in order, each once."""
    found: dict[Path, None] = {}
    for name in given:
        found.update(dict.fromkeys(resolve_case(name, testdata)))
    return list(found)


def resolve_one(given: str, testdata: Path) -> Path:
    """The one case `given` names; a bare name of cases of two arches is an error."""
    found = resolve_case(given, testdata)
    if len(found) > 1:
        raise CaseError(f"{given!r} names {len(found)} cases ("
                        + ", ".join(case_label(p) for p in found) + "); say which")
    return found[0]
