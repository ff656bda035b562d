"""`coredump analyze`, `replay` and `rebase`: the unwinder over cases and cores."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys

from ..bpf.bridge import trace_log
from ..cases.case_file import load_case
from ..core.discovery import discover_modules
from ..core.elfcore import CoreFile
from ..core.process import Process
from ..errors import HarnessError
from ..replay import (
    open_case,
    process_from,
    replay_case,
    replay_process,
    thread_frames,
    unwind_process,
)
from .common import Subparsers, case_paths, flag, stderr


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
    from ..check.sites import top_frame_sites  # capstone: only when printing sites

    return {lwp: site.describe() for lwp, site in top_frame_sites(process).items()}


def _open_core(path: str, sysroot: list[str] | None) -> Process:
    core = CoreFile(path)
    try:
        files = discover_modules(core, sysroot, progress=stderr)
    except BaseException:
        core.close()
        raise
    return process_from(core, files)


def _show_debug_prints() -> None:
    """The C code's DEBUG_PRINT messages on stderr, as the reference tool's -debug-ebpf."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("ebpf: %(message)s"))
    trace_log.addHandler(handler)
    trace_log.setLevel(logging.DEBUG)


def cmd_analyze(args: argparse.Namespace) -> int:
    if bool(args.case) == bool(args.core):
        raise HarnessError("give exactly one of -case FILE and -core FILE")
    if args.debug_ebpf:
        _show_debug_prints()
    case = load_case(args.case) if args.case else None
    process = open_case(case) if case else _open_core(args.core, args.sysroot)
    try:
        threads = replay_process(case, process).actual if case else \
            thread_frames(unwind_process(process))
        sites = None if args.json else _site_texts(process)
    finally:
        process.close()
    _print_threads([(t.lwp, t.frames) for t in threads], args.json, sites)
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="coredump replay")
    for column in ("case", "threads", "frames", "result", "time"):
        table.add_column(column, justify="left" if column in ("case", "result") else "right")
    failures = 0
    for path in case_paths(args.cases):
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
            stderr(f"{label}:\n" + "\n".join(result.problems))
    Console().print(table)
    if failures:
        stderr(f"{failures} case(s) failed; `pytest -k NAME` shows the frame diff")
    return 1 if failures else 0


def cmd_rebase(args: argparse.Namespace) -> int:
    changed = 0
    for path in case_paths(args.cases):
        case = load_case(path)
        result = replay_case(case)
        if result.ok:
            continue
        changed += 1
        print(f"{path}:")
        for problem in result.problems:
            print("  " + problem.replace("\n", "\n  "))
        if not args.dry_run:
            dataclasses.replace(case, threads=result.actual).save(path)
    verb = "would change" if args.dry_run else "changed"
    print(f"{changed} case(s) {verb}")
    return 0


def register(sub: Subparsers) -> None:
    p = sub.add_parser("analyze", help="print each thread's frames for a case or a core")
    flag(p, "case", help="a case file")
    flag(p, "core", help="a core file (modules from -sysroot or the local disk)")
    flag(p, "sysroot", action="append",
         help="look the core's files up under this directory (repeatable: searched in "
              "order; default /)")
    flag(p, "json", action="store_true", help="print the threads array of a case file")
    flag(p, "debug-ebpf", dest="debug_ebpf", action="store_true",
         help="print the unwinder's DEBUG_PRINT messages on stderr while it runs")
    p.set_defaults(func=cmd_analyze)

    p = sub.add_parser("replay", help="replay cases and print a table (all by default)")
    p.add_argument("cases", nargs="*", help="case files (default: testdata/*/*.json)")
    flag(p, "verbose", action="store_true", help="print frame diffs of failures")
    p.set_defaults(func=cmd_replay)

    p = sub.add_parser("rebase", help="rewrite expected frames from the current unwinder")
    p.add_argument("cases", nargs="*", help="case files (default: all)")
    flag(p, "dry-run", dest="dry_run", action="store_true", help="show changes only")
    p.set_defaults(func=cmd_rebase)
