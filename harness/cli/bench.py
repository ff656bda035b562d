"""`coredump bench`: our analyze against gdb and eu-stack on the same cores, and the
in-process cost per thread and per frame (harness/bench.py does the work)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .common import Subparsers, flag, stderr

DEFAULT_CASES = ("amd64/threads", "amd64/recurse", "amd64/cxx", "arm64/threads")


def _case_paths(names: list[str], testdata: Path) -> list[Path]:
    from ..cases.selection import resolve_one

    return [resolve_one(name, testdata) for name in names or DEFAULT_CASES]


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.0f} ms"


def cmd_bench(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from ..bench import OURS, bench
    from ..paths import TESTDATA

    paths = _case_paths(args.case, Path(args.testdata) if args.testdata else TESTDATA)
    progress = stderr if sys.stderr.isatty() and not args.json else None
    baseline = Path(args.baseline).resolve() if args.baseline else None
    report = bench(paths, args.repeat, peers=not args.no_peers, progress=progress,
                   baseline=baseline, suite=args.suite)
    if args.json:
        json.dump(report.to_json(), sys.stdout, indent=2)
        print()
        return 0
    table = Table(title=f"coredump bench (medians of {report.repeat} interleaved runs)",
                  caption="ratio: the tool's time over our warm analyze (above 1: we are "
                          "faster); RSS: peak of the run")
    for column in ("case", "threads", "frames", "tool", "time", "ratio", "RSS"):
        table.add_column(column, justify="left" if column in ("case", "tool") else "right")
    skipped: dict[str, set[str]] = {}
    for case in report.cases:
        ours = case.tools[f"{OURS} (warm)"].median_s
        first = True
        for name, tool in case.tools.items():
            if tool.skipped:
                skipped.setdefault(f"{name}: {tool.skipped}", set()).add(case.case)
                continue
            median = tool.median_s
            ratio = "-" if median is None or not ours else f"{median / ours:.2f}"
            rss = tool.peak_rss_kb
            table.add_row(case.case if first else "", str(case.threads) if first else "",
                          str(case.frames) if first else "", name, _ms(median), ratio,
                          f"{rss / 1024:.0f} MB" if rss else "-")
            first = False
        table.add_row("", "", "", "in one process: fill the maps", f"{case.attach_s * 1e3:.2f} ms",
                      "", "")
        table.add_row("", "", "", "in one process: unwind all threads",
                      f"{case.replay_s * 1e3:.2f} ms", "", "", end_section=True)
    Console(width=max(Console().width, 100)).print(table)
    for why, cases in sorted(skipped.items()):
        print(f"not run: {why} ({', '.join(sorted(cases))})")
    if report.per_frame_us is not None and report.per_thread_us is not None:
        print(f"in one process, unwinding: {report.per_frame_us:.1f} us per frame and "
              f"{report.per_thread_us:.1f} us per thread (least squares over the cases)")
    if report.suite_s:
        parallel, serial = report.suite_s["-n auto"], report.suite_s["-n 0"]
        print(f"test suite: {parallel:.1f} s with -n auto, {serial:.1f} s with -n 0 "
              f"({serial / parallel:.2f}x)")
    return 0


def register(sub: Subparsers) -> None:
    p = sub.add_parser("bench", help="time analyze against gdb and eu-stack on the same cores")
    flag(p, "case", action="append", default=[],
         help="a case file or name like amd64/threads (repeatable; default: "
              + ", ".join(DEFAULT_CASES) + ")")
    flag(p, "testdata", help="testdata directory for case names (default: the repository's)")
    flag(p, "repeat", type=int, default=5, help="interleaved rounds (default 5)")
    flag(p, "no-peers", dest="no_peers", action="store_true",
         help="time only our own analyze and replay")
    flag(p, "baseline", metavar="DIR",
         help="another checkout of the harness (e.g. a git worktree of main) whose warm "
              "analyze is timed in the same rounds")
    flag(p, "suite", action="store_true",
         help="also time the test suite with -n auto and -n 0 (minutes)")
    flag(p, "json", action="store_true", help="the report as JSON on stdout")
    p.set_defaults(func=cmd_bench)
