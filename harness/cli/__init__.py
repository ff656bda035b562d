"""The `coredump` command: a thin layer over the library.

Flags are accepted in the reference tool's single-dash form (`-pid`, `-name`)
and the double-dash form (`--pid`). Each module here adds one group of
subcommands (its `register`); nothing in the library imports this package.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import shutil
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

from ..errors import HarnessError
from ..paths import BPF_SRC_ENV
from .common import flag

# One module per group of subcommands, in the order `coredump --help` lists them,
# and the commands each registers. Running a command imports its group only: the
# others' libraries (unicorn, capstone, libbpf, the gdb oracle) cost more than many
# whole runs (tests/test_cli.py checks that this table matches the modules).
COMMAND_GROUPS: dict[str, tuple[str, ...]] = {
    "record": ("new", "verify", "record-qemu", "reskinny"),
    "cases": ("analyze", "replay", "rebase", "list"),
    "check": ("validate", "validate-deltas"),
    "debug": ("debug", "gdb"),
    "bpf": ("bpf-build", "bpf-verify"),
    "live": ("live",),
    "bench": ("bench",),
    "data": ("upload", "export-module", "clean"),
}


class _Formatter(argparse.HelpFormatter):
    """argparse asks the terminal for its width once per flag it adds; ask once."""

    _columns: int | None = None

    def __init__(self, prog: str, **kwargs: object) -> None:
        if _Formatter._columns is None:
            _Formatter._columns = shutil.get_terminal_size().columns - 2
        kwargs.setdefault("width", _Formatter._columns)
        super().__init__(prog, **kwargs)  # type: ignore[arg-type]


class _Parser(argparse.ArgumentParser):
    def __init__(self, *args: object, **kwargs: object) -> None:
        kwargs.setdefault("formatter_class", _Formatter)
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The whole parser, or (for running `command`) one whose other commands are
    placeholders that import nothing."""
    parser = _Parser(prog="coredump", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for group, commands in COMMAND_GROUPS.items():
        if command is None or command in commands:
            importlib.import_module(f"{__name__}.{group}").register(sub)
        else:
            for name in commands:
                sub.add_parser(name)
    for command_parser in sub.choices.values():
        flag(command_parser, "bpf-src", dest="bpf_src", metavar="DIR",
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


def _command(argv: Sequence[str]) -> str | None:
    """The subcommand argv runs, if it names one (the first word that is not a flag)."""
    first = next((a for a in argv if not a.startswith("-")), None)
    known = {c for commands in COMMAND_GROUPS.values() for c in commands}
    return first if first in known else None


def _tolerant_output() -> None:
    """Names from a core or a module are bytes, kept undecodable as surrogates
    (elf.cstring); print them escaped rather than die on them."""
    for stream in (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None:
            reconfigure(errors="backslashreplace")


def main(argv: Sequence[str] | None = None) -> int:
    _tolerant_output()
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(_command(argv))
    args = parser.parse_args(argv)
    try:
        with _unwinder_sources(getattr(args, "bpf_src", None)):
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
