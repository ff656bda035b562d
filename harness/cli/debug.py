"""`coredump debug` and `coredump gdb`: a case in gdb (see harness/debug/).

    coredump debug -case FILE [-lwp N] [-no-run] [-- GDB-ARGS...]
    coredump gdb -case FILE [-lwp N] [-- GDB-ARGS...]

Everything after `--` goes to gdb before the program, e.g.
`-- -batch -ex step -ex 'info locals'`; without it gdb is interactive.
"""

from __future__ import annotations

import argparse

from ..debug.case_gdb import case_sysroot, core_gdb_argv
from ..debug.gdb import run_gdb
from ..debug.unwinder import debug_argv, debug_env, prepare_debug
from ..record.gdb_oracle import find_gdb
from .common import Subparsers, flag, one_case


def cmd_debug(args: argparse.Namespace) -> int:
    args.case = one_case(args.case)
    prepare_debug(args.case, args.lwp)
    gdb = find_gdb()
    argv = debug_argv(args.case, args.lwp, args.gdb_args, run=not args.no_run, gdb=gdb)
    return run_gdb(argv, debug_env())


def cmd_gdb(args: argparse.Namespace) -> int:
    args.case = one_case(args.case)
    with case_sysroot(args.case, args.lwp) as root:
        return run_gdb(core_gdb_argv(root, args.lwp, args.gdb_args, gdb=find_gdb(root.arch)))


def _common(p: argparse.ArgumentParser) -> None:
    flag(p, "case", required=True, help="a case: its file, arch/name or name")
    flag(p, "lwp", type=int, help="only this thread")
    p.add_argument("gdb_args", nargs="*", metavar="-- GDB-ARGS",
                   help="extra gdb arguments after --, e.g. -- -batch -ex bt")


def register(sub: Subparsers) -> None:
    p = sub.add_parser("debug", help="single-step the unwinder on a case in gdb "
                       "(debug build, stops in native_tracer_entry)")
    _common(p)
    flag(p, "no-run", dest="no_run", action="store_true",
         help="set the breakpoint but do not start the program")
    p.set_defaults(func=cmd_debug)

    p = sub.add_parser("gdb", help="open a case's core and bundled modules in gdb (bt works)")
    _common(p)
    p.set_defaults(func=cmd_gdb)
