"""The process `coredump debug` runs under gdb: replay one case with the debug build.

    python -m harness.debug.target CASE [--lwp N]

It unwinds the case's threads (or thread N only) with the unoptimised
unwinder, so a breakpoint on native_tracer_entry stops once per thread, then
prints each thread's frames and whether they match the case. The exit status
is 0 when all match, 1 when one differs, 2 on bad input.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from ..diffing import frame_diff
from ..errors import HarnessError
from .unwinder import DebugThread, replay_for_debugging


def _report(thread: DebugThread) -> None:
    if thread.expected is None:
        verdict = "not in the case"
    else:
        verdict = "matches the case" if thread.ok else "DIFFERS from the case"
    print(f"thread {thread.lwp}: {verdict}")
    if thread.expected is not None and not thread.ok:
        print(frame_diff(thread.expected, thread.frames, expected_name="case file",
                         actual_name="unwinder"))
    else:
        for i, frame in enumerate(thread.frames):
            print(f"  #{i:<3} {frame}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness.debug.target",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("case", help="a case file")
    parser.add_argument("--lwp", "-lwp", type=int, help="unwind only this thread")
    args = parser.parse_args(argv)
    try:
        threads = replay_for_debugging(args.case, args.lwp)
    except HarnessError as e:
        print(f"harness.debug.target: error: {e}", file=sys.stderr)
        return 2
    for thread in threads:
        _report(thread)
    return 0 if all(t.ok for t in threads) else 1


if __name__ == "__main__":
    sys.exit(main())
