"""`coredump live -pid PID [-compare]`: the unwinder in the running kernel on a
live process's threads, beside the replay of a core of it (harness/live/ does
the work; this prints)."""

from __future__ import annotations

import argparse

from ..diffing import frame_diff
from ..live.compare import LiveReport, ThreadComparison, run_live
from .common import Subparsers, flag


def _thread(row: ThreadComparison, compare: bool) -> list[str]:
    if not compare:
        if row.live is None:
            return [f"thread {row.tid}: no trace (running in user space, in no system call)"]
        return [f"thread {row.tid}: {row.live_status}, {len(row.live)} frames",
                *(f"  {f}" for f in row.live)]
    if row.equal is None:
        return [f"thread {row.tid}: {row.problem}",
                "  replay:", *(f"    {f}" for f in row.replay or [])]
    if row.equal:
        return [f"thread {row.tid}: EQUAL ({row.live_status}, {len(row.live or [])} frames); "
                "live = replay:", *(f"  {f}" for f in row.live or [])]
    lines = [f"thread {row.tid}: DIFFERENT: {row.problem}"]
    if row.live is not None and row.replay is not None:
        lines.append(frame_diff(row.live, row.replay, expected_name="kernel",
                                actual_name="replay"))
    return lines


def _summary(report: LiveReport, compare: bool) -> list[str]:
    t = report.live.timings
    s = report.seconds
    lines = [f"pid {report.pid}: {len(report.threads)} threads, {len(report.live.traces)} "
             f"kernel traces; gcore {s['gcore']:.2f} s, load {t.load * 1000:.0f} ms, fill "
             f"{t.fill * 1000:.0f} ms ({t.deltas} deltas), capture {t.capture * 1000:.0f} ms"
             + (f", replay {s['replay'] * 1000:.0f} ms" if compare else "")]
    if t.kernel_ns_per_trace is not None:
        lines.append(f"kernel run time: {t.kernel_ns_per_trace / 1000:.1f} us per trace "
                     f"({t.kernel_runs} runs, {t.kernel_ns} ns, {t.filtered_ns:.0f} ns per "
                     "filtered-out run subtracted)")
    if compare:
        equal = sum(1 for r in report.threads if r.equal)
        skipped = sum(1 for r in report.threads if r.equal is None)
        lines.append(f"{equal} equal, {len(report.differences)} different, "
                     f"{skipped} not compared")
    return lines


def cmd_live(args: argparse.Namespace) -> int:
    report = run_live(args.pid, compare=args.compare, timeout=args.timeout)
    for row in report.threads:
        print("\n".join(_thread(row, args.compare)))
    print("\n".join(_summary(report, args.compare)))
    return 1 if report.differences else 0


def register(sub: Subparsers) -> None:
    p = sub.add_parser("live", help="run the BPF unwinder in the kernel on a live process "
                                    "(-compare: against the replay of a core of it)")
    flag(p, "pid", type=int, required=True, help="the process")
    flag(p, "compare", action="store_true",
         help="gcore the process too, replay it, and compare each thread's traces "
              "(exit status 1 on a difference)")
    flag(p, "timeout", type=float, default=2.0,
         help="seconds to wait for the threads' traces (default 2)")
    p.set_defaults(func=cmd_live)
