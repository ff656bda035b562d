"""The `coredump` command: a thin layer over the library.

Flags are accepted in the reference tool's single-dash form (`-pid`, `-name`)
and the double-dash form (`--pid`). Each module here adds one group of
subcommands (its `register`); nothing in the library imports this package.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from ..errors import HarnessError
from . import bpf, cases, check, data, debug, record

# One module per group of subcommands, in the order `coredump --help` lists them.
COMMAND_GROUPS = (record, cases, check, debug, bpf, data)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="coredump", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for group in COMMAND_GROUPS:
        group.register(sub)
    return parser


def _tolerant_output() -> None:
    """Names from a core or a module are bytes, kept undecodable as surrogates
    (elf.cstring); print them escaped rather than die on them."""
    for stream in (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None:
            reconfigure(errors="backslashreplace")


def main(argv: Sequence[str] | None = None) -> int:
    _tolerant_output()
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except HarnessError as e:
        print(f"coredump: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("coredump: interrupted", file=sys.stderr)
        return 130
