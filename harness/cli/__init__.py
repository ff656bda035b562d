"""The `coredump` command: a thin layer over the library.

Flags are accepted in the reference tool's single-dash form (`-pid`, `-name`)
and the double-dash form (`--pid`). Each module here adds one group of
subcommands (its `register`); nothing in the library imports this package.
"""

from __future__ import annotations

import argparse
import os
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


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        status = int(args.func(args))
        sys.stdout.flush()  # a closed pipe shows here, inside the handler, not at exit
        return status
    except HarnessError as e:
        print(f"coredump: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("coredump: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return _closed_pipe()


def _closed_pipe() -> int:
    """The reader went away (`coredump list | head`): end quietly, as `cat` does.
    stdout is pointed at /dev/null so the interpreter's final flush cannot raise."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass  # stdout is not a file descriptor (tests capture it)
    return 141  # 128 + SIGPIPE, what a shell reports for a writer killed by the pipe
