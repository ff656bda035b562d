"""The `coredump` command: a thin layer over the library.

Flags are accepted in the reference tool's single-dash form (`-pid`, `-name`)
and the double-dash form (`--pid`). Each module here adds one group of
subcommands (its `register`); nothing in the library imports this package.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

from ..errors import HarnessError
from ..paths import BPF_SRC_ENV
from . import bench, bpf, cases, check, data, debug, record
from .common import flag

# One module per group of subcommands, in the order `coredump --help` lists them.
COMMAND_GROUPS = (record, cases, check, debug, bpf, bench, data)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="coredump", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for group in COMMAND_GROUPS:
        group.register(sub)
    for command in sub.choices.values():
        flag(command, "bpf-src", dest="bpf_src", metavar="DIR",
             help="the unwinder's sources: a directory with one .c file (default: bpf_src/, "
                  "or bpf-src in [tool.coredump]); see 'Bring your own unwinder' in the README")
    return parser


@contextlib.contextmanager
def _unwinder_sources(directory: str | None) -> Iterator[None]:
    """-bpf-src: every build during the command (and the gdb or pytest it starts)
    uses it; the process's environment is restored afterwards (tests call main())."""
    if directory is None:
        yield
        return
    path = Path(directory).resolve()
    if not path.is_dir():
        raise HarnessError(f"-bpf-src {directory}: not a directory")
    before = os.environ.get(BPF_SRC_ENV)
    os.environ[BPF_SRC_ENV] = str(path)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(BPF_SRC_ENV, None)
        else:
            os.environ[BPF_SRC_ENV] = before


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        with _unwinder_sources(getattr(args, "bpf_src", None)):
            return int(args.func(args))
    except HarnessError as e:
        print(f"coredump: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("coredump: interrupted", file=sys.stderr)
        return 130
