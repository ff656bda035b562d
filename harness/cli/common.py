"""What every subcommand module shares: the flag spelling, case-path defaults, and
messages to stderr."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from ..cases.case_file import find_cases
from ..cases.selection import resolve_cases, resolve_one
from ..errors import HarnessError
from ..paths import TESTDATA

# The type of `add_subparsers()`'s result (generic in typeshed only).
Subparsers = argparse._SubParsersAction  # type: ignore[type-arg]


def flag(parser: argparse.ArgumentParser, name: str, **kwargs: object) -> None:
    """A flag in the reference tool's single-dash spelling and the double-dash one."""
    parser.add_argument(f"-{name}", f"--{name}", **kwargs)  # type: ignore[arg-type]


def testdata_flag(parser: argparse.ArgumentParser, help: str = "testdata directory "
                  "(default: the repository's)") -> None:
    flag(parser, "testdata", default=str(TESTDATA), help=help)


def case_paths(given: Sequence[str], testdata: Path = TESTDATA) -> list[Path]:
    """The cases named (files, arch/name or name), or every case under testdata."""
    if given:
        return resolve_cases(given, testdata)
    cases = find_cases(testdata)
    if not cases:
        raise HarnessError(f"no cases under {testdata}")
    return cases


def stderr(message: str) -> None:
    print(message, file=sys.stderr)


def one_case(given: str | None, testdata: Path = TESTDATA) -> str | None:
    """A -case argument (a file, arch/name or name) as the path of one case file."""
    return None if given is None else str(resolve_one(given, testdata))
