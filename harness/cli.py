"""The `coredump` command: a thin layer over the library.

Flags are accepted in the reference tool's single-dash form (`-pid`, `-name`)
and the double-dash form (`--pid`).
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console
from rich.table import Table

from .errors import HarnessError
from .process import Process
from .record import TESTDATA, record_case, verify_case
from .replay import open_case, open_process, replay_case, store_for, unwind_process
from .testcase import TestCase, find_cases, load_case

# Modules adding subcommands: each has register(subparsers, flag) that adds
# its parsers with set_defaults(func=...). One line per feature area.
COMMAND_MODULES: list[str] = [
    "harness.qemu_record",
    "harness.cmd_debug",
    "harness.cmd_bpf",
    "harness.cmd_data",
    "harness.cmd_validate",
]


def _flag(parser: argparse.ArgumentParser, name: str, **kwargs: object) -> None:
    parser.add_argument(f"-{name}", f"--{name}", **kwargs)  # type: ignore[arg-type]


def _case_paths(args_cases: Sequence[str], all_cases: bool = True) -> list[Path]:
    if args_cases:
        return [Path(c) for c in args_cases]
    cases = find_cases(TESTDATA)
    if not cases:
        raise HarnessError(f"no cases under {TESTDATA}")
    return cases


def _stderr(message: str) -> None:
    print(message, file=sys.stderr)


def cmd_new(args: argparse.Namespace) -> int:
    case = record_case(
        args.name, core=args.core, pid=args.pid, sysroot=args.sysroot,
        gdb_differences=args.gdb_differences, check_gdb=not args.no_gdb_check,
        force=args.force, progress=_stderr, testdata=Path(args.testdata),
        bundle_modules=not args.no_module_bundling,
    )
    frames = sum(len(t.frames) for t in case.threads)
    bundled = ("modules read from the core" if args.no_module_bundling
               else f"{len(case.modules)} modules bundled")
    print(f"wrote {case.path}: {len(case.threads)} threads, {frames} frames, {bundled}")
    return 0


def _print_threads(threads: list[tuple[int, list[str]]], as_json: bool,
                   sites: dict[int, str] | None = None) -> None:
    if as_json:
        print(json.dumps([{"lwp": lwp, "frames": frames} for lwp, frames in threads], indent=2))
        return
    for lwp, frames in threads:
        site = (sites or {}).get(lwp)
        print(f"PID: {lwp}" + (f"  (PC at: {site})" if site else ""))
        for i, frame in enumerate(frames):
            print(f"  #{i:<3} {frame}")


def _site_texts(process: Process) -> dict[int, str]:
    """Each thread's PC classified (prologue, body, epilogue, return) for display."""
    from .sites import top_frame_sites

    return {lwp: site.describe() for lwp, site in top_frame_sites(process).items()}


def cmd_analyze(args: argparse.Namespace) -> int:
    if bool(args.case) == bool(args.core):
        raise HarnessError("give exactly one of -case FILE and -core FILE")
    if args.case:
        result = replay_case(args.case)
        sites = None
        if not args.json:
            process = open_case(result.case, store_for(result.case))
            try:
                sites = _site_texts(process)
            finally:
                process.close()
        _print_threads([(t.lwp, t.frames) for t in result.actual], args.json, sites)
        return 0
    from .elfcore import CoreFile
    from .record import candidate_modules

    with CoreFile(args.core) as core:
        modules = candidate_modules(core, args.sysroot, _stderr)
    process = open_process(args.core, modules)
    try:
        result_p = unwind_process(process)
        sites = None if args.json else _site_texts(process)
    finally:
        process.close()
    _print_threads([(t.lwp, t.frames) for t in result_p.threads], args.json, sites)
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    table = Table(title="coredump replay")
    for column in ("case", "threads", "frames", "result", "time"):
        table.add_column(column, justify="left" if column in ("case", "result") else "right")
    failures = 0
    for path in _case_paths(args.cases):
        case = load_case(path)
        label = f"{path.parent.name}/{path.stem}"
        if case.skip:
            table.add_row(label, str(len(case.threads)), "-", f"skip: {case.skip}", "-")
            continue
        result = replay_case(case)
        failures += not result.ok
        table.add_row(label, str(len(result.actual)), str(result.frame_count),
                      "[green]pass[/]" if result.ok else "[red]FAIL[/]",
                      f"{result.seconds * 1000:.0f} ms")
        if not result.ok and args.verbose:
            _stderr(f"{label}:\n" + "\n".join(result.problems))
    Console().print(table)
    if failures:
        _stderr(f"{failures} case(s) failed; `pytest -k NAME` shows the frame diff")
    return 1 if failures else 0


def cmd_rebase(args: argparse.Namespace) -> int:
    changed = 0
    for path in _case_paths(args.cases):
        case = load_case(path)
        result = replay_case(case)
        if result.ok:
            continue
        changed += 1
        print(f"{path}:")
        for problem in result.problems:
            print("  " + problem.replace("\n", "\n  "))
        if not args.dry_run:
            TestCase(case.coredump_ref, result.actual, case.modules, case.skip,
                     case.fault_addresses, case.gdb_differences, case.extra).save(path)
    verb = "would change" if args.dry_run else "changed"
    print(f"{changed} case(s) {verb}")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    failures = 0
    for path in _case_paths(args.cases):
        case = load_case(path)
        comparison = verify_case(case)
        if not comparison.problems:
            print(f"{path}: matches gdb")
        elif case.gdb_differences:
            print(f"{path}: differs from gdb, explained: {case.gdb_differences}")
        else:
            failures += 1
            print(f"{path}: DIFFERS from gdb:\n  " + "\n  ".join(comparison.problems))
    return 1 if failures else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="coredump", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("new", help="record a case from a running process or a core file")
    _flag(p, "name", required=True, help="case name (testdata/<arch>/<name>.json)")
    _flag(p, "pid", type=int, help="snapshot this running process with gcore")
    _flag(p, "core", help="import this core file")
    _flag(p, "sysroot", help="find the mapped files under this prefix")
    _flag(p, "no-module-bundling", dest="no_module_bundling", action="store_true",
          help="bundle no module; replay rebuilds them from the core's memory (needs a "
               "core with file pages: coredump_filter 0x3f, set by -pid itself)")
    _flag(p, "gdb-differences", dest="gdb_differences",
          help="record even though gdb disagrees, with this explanation")
    _flag(p, "no-gdb-check", dest="no_gdb_check", action="store_true",
          help="skip the gdb comparison")
    _flag(p, "force", action="store_true", help="overwrite an existing case")
    _flag(p, "testdata", default=str(TESTDATA),
          help="testdata directory to write to (default: the repository's)")
    p.set_defaults(func=cmd_new)

    p = sub.add_parser("analyze", help="print each thread's frames for a case or a core")
    _flag(p, "case", help="a case file")
    _flag(p, "core", help="a core file (modules from -sysroot or the local disk)")
    _flag(p, "sysroot", help="prefix for the core's mapped files")
    _flag(p, "json", action="store_true", help="print the threads array of a case file")
    p.set_defaults(func=cmd_analyze)

    p = sub.add_parser("replay", help="replay cases and print a table (all by default)")
    p.add_argument("cases", nargs="*", help="case files (default: testdata/*/*.json)")
    _flag(p, "verbose", action="store_true", help="print frame diffs of failures")
    p.set_defaults(func=cmd_replay)

    p = sub.add_parser("rebase", help="rewrite expected frames from the current unwinder")
    p.add_argument("cases", nargs="*", help="case files (default: all)")
    _flag(p, "dry-run", dest="dry_run", action="store_true", help="show changes only")
    p.set_defaults(func=cmd_rebase)

    p = sub.add_parser("verify", help="compare cases with gdb's backtraces")
    p.add_argument("cases", nargs="*", help="case files (default: all)")
    p.set_defaults(func=cmd_verify)

    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).register(sub, _flag)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
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


if __name__ == "__main__":
    sys.exit(main())
