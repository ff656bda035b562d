"""`coredump analyze`, `replay`, `rebase` and `list`: the unwinder over cases and cores."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from collections.abc import Iterable

from ..bpf.bridge import trace_log
from ..cases.case_file import TestCase, ThreadFrames, load_case
from ..cases.selection import case_label, resolve_case, resolve_one
from ..core.discovery import discover_modules
from ..core.elfcore import CoreFile
from ..core.process import Process
from ..diffing import Annotate, annotated, frame_annotator, hunks
from ..errors import HarnessError
from ..paths import TESTDATA
from ..replay import (
    dropped_reads_problem,
    iter_threads,
    open_case,
    process_from,
    replay_case,
    replay_process,
)
from .common import Subparsers, case_paths, flag, stderr


def _thread_lines(threads: list[tuple[int, list[str]]], sites: dict[int, str] | None,
                  annotate: Annotate | None) -> list[str]:
    """Each thread's frames for a person: the case-file string, then the symbol."""
    lines = []
    for lwp, frames in threads:
        site = (sites or {}).get(lwp)
        lines.append(f"PID: {lwp}" + (f"  (PC at: {site})" if site else ""))
        lines += [f"  #{i:<3} {annotated(frame, annotate)}" for i, frame in enumerate(frames)]
    return lines


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


def _analyze(case: TestCase | None, args: argparse.Namespace) -> None:
    """One case's or the core's threads, as JSON or annotated for a person, printed
    thread by thread (a core may have thousands; nothing is kept once printed)."""
    process = open_case(case) if case else _open_core(args.core, args.sysroot)
    try:
        if case:
            threads: Iterable[ThreadFrames] = replay_process(case, process).actual
        else:
            threads = (ThreadFrames(t.lwp, t.frames) for t in iter_threads(process))
        if args.json:
            _print_json_threads(threads)
            _warn_dropped(process)
            return
        # Symbols need the modules open; the JSON keeps the case-file format.
        sites = _site_texts(process) if args.sites else None
        annotate = frame_annotator(process.all_modules())
        for t in threads:
            print("\n".join(_thread_lines([(t.lwp, t.frames)], sites, annotate)))
        _warn_dropped(process)
    finally:
        process.close()


def _warn_dropped(process: Process) -> None:
    dropped = dropped_reads_problem(process)
    if dropped:
        stderr(f"warning: {dropped}")


def _print_json_threads(threads: Iterable[ThreadFrames]) -> None:
    """The threads array of a case file, written one thread at a time (the same text
    json.dumps(..., indent=2) gives for the whole list)."""
    print("[", end="")
    first = True
    for t in threads:
        item = json.dumps({"lwp": t.lwp, "frames": t.frames}, indent=2)
        print(("\n" if first else ",\n") + "\n".join("  " + line for line in item.splitlines()),
              end="")
        first = False
    print("\n]" if not first else "]")


def cmd_analyze(args: argparse.Namespace) -> int:
    if bool(args.case) == bool(args.core):
        raise HarnessError("give exactly one of -case FILE and -core FILE")
    if args.debug_ebpf:
        _show_debug_prints()
    if args.core:
        _analyze(None, args)
        return 0
    # A bare name may be a case of each arch: a person gets both, under headers;
    # -json is one case's threads array, so it needs arch/name.
    paths = resolve_case(args.case, TESTDATA) if not args.json else \
        [resolve_one(args.case, TESTDATA)]
    for path in paths:
        if len(paths) > 1:
            print(f"== {case_label(path)}")
        _analyze(load_case(path), args)
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="coredump replay")
    for column in ("case", "threads", "frames", "result", "time"):
        table.add_column(column, justify="left" if column in ("case", "result") else "right")
    failed: list[str] = []
    for path in case_paths(args.cases):
        case = load_case(path)
        label = f"{path.parent.name}/{path.stem}"
        if case.skip:
            table.add_row(label, str(len(case.threads)), "-", f"skip: {case.skip}", "-")
            continue
        result = replay_case(case)
        table.add_row(label, str(len(result.actual)), str(result.frame_count),
                      "[green]pass[/]" if result.ok else "[red]FAIL[/]",
                      f"{result.seconds * 1000:.0f} ms")
        if not result.ok:
            failed.append(f"{label}:\n" + "\n".join(result.problems))
    # Table and diffs on one stream, in this order, so a pipe keeps them together.
    Console().print(table)
    for report in failed:
        print("\n" + report)
    if failed:
        print(f"\n{len(failed)} case(s) failed")
    return 1 if failed else 0


def _changed_frames(old: TestCase, new: TestCase) -> dict[int, set[int]]:
    """Per thread, the indices of the new frames that a rebase changes or inserts."""
    before = {t.lwp: t.frames for t in old.threads}
    changed: dict[int, set[int]] = {}
    for t in new.threads:
        indices: set[int] = set()
        for h in hunks(before.get(t.lwp, []), t.frames):
            # A deletion changes no new frame: count the one now at its place.
            indices |= set(range(h.act_start, max(h.act_end, h.act_start + 1)))
        changed[t.lwp] = indices
    return changed


def _oracle_report(old: TestCase, new: TestCase) -> tuple[bool, list[str]]:
    """(checked, lines): gdb's verdict on a rebased case, naming first the changed
    frames gdb disagrees with; no lines if it agrees (apart from waivers)."""
    from ..record.gdb_oracle import gdb_available, gdb_for  # rebase only
    from ..record.verify import verify_case

    gdb = gdb_for(new.path.parent.name if new.path else "amd64")
    if gdb_available(gdb) is None:
        return False, [f"not checked against gdb: {gdb} with Python support is not "
                       "installed (-no-verify silences this)"]
    comparison = verify_case(new)
    if not comparison.problems:
        return True, []
    changed = _changed_frames(old, new)
    waived = {(w.lwp, w.frame) for w in comparison.waived}
    ours = [d for d in comparison.differences if (d.lwp, d.frame) not in waived and
            set(range(d.frame, d.frame + max(len(d.ours), 1))) & changed.get(d.lwp, set())]
    lines = [f"gdb disagrees with {len(ours)} change(s) of this rebase:"]
    lines += [f"  {d.describe()}" for d in ours]
    return True, lines + ["gdb's comparison:"] + comparison.problems


def cmd_rebase(args: argparse.Namespace) -> int:
    changed = disagree = 0
    for path in case_paths(args.cases):
        case = load_case(path)
        result = replay_case(case)
        if result.ok:
            continue
        changed += 1
        print(f"{path}:")
        for problem in result.problems:
            print("  " + problem.replace("\n", "\n  "))
        rebased = dataclasses.replace(case, threads=result.actual)
        if not args.no_verify:
            checked, oracle = _oracle_report(case, rebased)
            disagree += checked and bool(oracle)
            verdict = "gdb agrees with the new frames" if checked and not oracle else \
                "\n".join(oracle)
            print("  " + verdict.replace("\n", "\n  "))
        if not args.dry_run:
            rebased.save(path)
    verb = "would change" if args.dry_run else "changed"
    print(f"{changed} case(s) {verb}")
    if disagree:
        print(f"{disagree} of them disagree with gdb: fix the unwinder, or re-record with "
              "-gdb-differences if the difference is understood (`coredump verify` shows it)")
    return 1 if disagree else 0


def _size(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 1e6 else f"{n / 1e3:.0f} KB"


def cmd_list(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from ..record.catalog import summarize

    table = Table(title="coredump list")
    for column in ("case", "threads", "frames", "modules", "core", "size", "recorded", "skip"):
        table.add_column(column, justify="right" if column in (
            "threads", "frames", "modules", "core", "size") else "left")
    for path in case_paths(args.cases):
        s = summarize(path)
        core = _size(s.core_bytes) + (" skinny" if s.skinny else " full")
        table.add_row(s.label, str(s.threads), str(s.frames), str(s.modules), core,
                      _size(s.stored_bytes), s.recorded, s.skip or "")
    # Wide enough for every column when piped (rich assumes 80 columns there).
    Console(width=max(Console().width, 140)).print(table)
    return 0


def register(sub: Subparsers) -> None:
    p = sub.add_parser("analyze", help="print each thread's frames for a case or a core")
    flag(p, "case", help="a case: its file, arch/name or name")
    flag(p, "core", help="a core file (modules from -sysroot or the local disk)")
    flag(p, "sysroot", action="append",
         help="look the core's files up under this directory (repeatable: searched in "
              "order; default /)")
    flag(p, "json", action="store_true", help="print the threads array of a case file")
    flag(p, "debug-ebpf", dest="debug_ebpf", action="store_true",
         help="print the unwinder's DEBUG_PRINT messages on stderr while it runs")
    flag(p, "sites", action="store_true",
         help="say where in its function each thread's PC is (prologue, body, epilogue, "
              "return; capstone): what `validate` checks")
    p.set_defaults(func=cmd_analyze)

    p = sub.add_parser("replay", help="replay cases and print a table (all by default)")
    p.add_argument("cases", nargs="*", help="cases: files, arch/name or name (exact, unlike "
                   "pytest -k; default: testdata/*/*.json)")
    flag(p, "verbose", action="store_true",
         help="accepted for compatibility; failures always print their frame diffs")
    p.set_defaults(func=cmd_replay)

    p = sub.add_parser("rebase", help="rewrite expected frames from the current unwinder")
    p.add_argument("cases", nargs="*", help="cases: files, arch/name or name (default: all)")
    flag(p, "dry-run", dest="dry_run", action="store_true", help="show changes only")
    flag(p, "no-verify", dest="no_verify", action="store_true",
         help="do not re-check changed cases against gdb")
    p.set_defaults(func=cmd_rebase)

    p = sub.add_parser("list", help="the cases: arch, threads, frames, modules, size, how "
                       "recorded, skip reason")
    p.add_argument("cases", nargs="*", help="cases: files, arch/name or name (default: all)")
    p.set_defaults(func=cmd_list)
