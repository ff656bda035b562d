"""`coredump new`, `verify` and `record-qemu`: recording cases and checking them
against gdb."""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from rich.console import Console

from ..cases.case_file import TestCase, load_case
from ..cases.selection import case_label
from ..errors import HarnessError
from ..record.new import record_case
from ..record.qemu import DEFAULT_SYSROOT, SITES, record_under_qemu
from ..record.skinny import reskinny_case
from ..record.verify import verify_case
from .common import Subparsers, case_paths, flag, stderr, testdata_flag


def _summary(case: TestCase, bundled: str, started: float | None = None) -> str:
    frames = sum(len(t.frames) for t in case.threads)
    took = f", {time.perf_counter() - started:.1f} s" if started is not None else ""
    return f"wrote {case.path}: {len(case.threads)} threads, {frames} frames, {bundled}{took}"


# Messages that are results, not progress: shown whether or not stderr is a terminal.
ALWAYS_SHOWN = ("warning:", "note:", "waived:")


@contextmanager
def progress_reporter(console: Console | None = None) -> Iterator[Callable[[str], None]]:
    """Progress of a long recording (gcore, bundling, the oracle run): a live status
    line with the elapsed time on a terminal, nothing when stderr is a file or a
    pipe. Warnings and notes are printed either way."""
    console = console or Console(stderr=True)
    if not console.is_terminal:
        def quiet(message: str) -> None:
            if message.startswith(ALWAYS_SHOWN):
                stderr(message)
        yield quiet
        return
    started = time.monotonic()
    with console.status("recording") as status:
        def show(message: str) -> None:
            if message.startswith(ALWAYS_SHOWN):
                console.print(message, markup=False, highlight=False)
            else:
                status.update(f"{message}  [dim]({time.monotonic() - started:.0f} s)[/]")
        yield show


def cmd_new(args: argparse.Namespace) -> int:
    with progress_reporter() as progress:
        case = record_case(
            args.name, core=args.core, pid=args.pid, sysroot=args.sysroot,
            executable=args.executable, gdb_differences=args.gdb_differences,
            check_gdb=not args.no_gdb_check, force=args.force, progress=progress,
            testdata=Path(args.testdata), bundle_modules=not args.no_module_bundling,
            full_core=args.full,
            strip_debug=args.strip_debug,
            gdb_executable=args.gdb_executable,
        )
    bundled = ("modules read from the core" if args.no_module_bundling
               else f"{len(case.modules)} modules bundled")
    print(_summary(case, bundled))
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    failures = 0
    for path in case_paths(args.cases):
        case = load_case(path)
        comparison = verify_case(case)
        if not comparison.problems:
            explained = len(comparison.waived)
            python = comparison.python
            print(f"{path}: matches gdb" + (f" apart from {explained} explained "
                                            f"difference(s)" if explained else "")
                  + (f"; pystack agrees on {python.frames} Python frames of "
                     f"{python.threads} threads" if python else ""))
            for w in comparison.waived:
                print(f"  thread {w.lwp} frame #{w.frame}: {w.why}")
        else:
            failures += 1
            print(f"{path}: DIFFERS from gdb or pystack:\n  "
                  + "\n  ".join(comparison.problems))
    return 1 if failures else 0


def cmd_record_qemu(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    with progress_reporter() as progress:
        case = record_under_qemu(args.name, args.program, sysroot=args.sysroot,
                                 site_spec=args.site, testdata=Path(args.testdata),
                                 force=args.force, gdb_differences=args.gdb_differences,
                                 progress=progress, full_core=args.full)
    print(_summary(case, f"{len(case.modules)} modules", started))
    return 0


def cmd_reskinny(args: argparse.Namespace) -> int:
    if bool(args.all) == bool(args.cases):
        raise HarnessError("give -all or cases (not both)")
    paths = case_paths([] if args.all else args.cases)
    full = skinny = 0
    failed = []
    for path in paths:
        case = load_case(path)
        try:
            done = reskinny_case(case, check_gdb=not args.no_gdb_check)
        except HarnessError as e:
            failed.append(f"{path}: {e}")
            print(f"{case_label(path)}: FAILED: {e}")
            continue
        full += done.full_size
        skinny += done.size
        print(f"{done.label}: {done.message}" + ("" if done.changed else " (unchanged)"))
    print(f"{len(paths) - len(failed)} cases: cores {skinny} bytes, {full} full "
          "(uncompressed); `coredump clean` removes the blobs no case uses any more")
    return 1 if failed else 0


def register(sub: Subparsers) -> None:
    p = sub.add_parser("new", help="record a case from a running process or a core file")
    flag(p, "name", required=True, help="case name (testdata/<arch>/<name>.json)")
    flag(p, "pid", type=int, help="snapshot this running process with gcore")
    flag(p, "core", help="import this core file")
    flag(p, "sysroot", action="append",
         help="find the mapped files under this directory, symbolic links resolved inside "
              "it (repeatable: searched in order; default /)")
    flag(p, "executable", help="the executable's file, for a core without a file list "
         "whose executable is not under -sysroot (qemu-user runs it from the host)")
    flag(p, "no-module-bundling", dest="no_module_bundling", action="store_true",
         help="bundle no module; replay rebuilds them from the core's memory (needs a "
              "core with file pages: coredump_filter 0x3f, set by -pid itself)")
    flag(p, "gdb-differences", dest="gdb_differences",
         help="record even though gdb disagrees: each difference found now is stored "
              "as a waiver with this explanation (any later difference still fails)")
    flag(p, "no-gdb-check", dest="no_gdb_check", action="store_true",
         help="skip the gdb comparison")
    flag(p, "full", action="store_true",
         help="store the whole core, not the skinny one (only the memory replay and the "
              "oracles read; see the README's 'Skinny cores')")
    flag(p, "strip-debug", dest="strip_debug", action="store_true",
         help="store modules without their DWARF sections (objcopy --strip-debug): a "
              "lean bundle of a build with full debug info, such as pyenv's libpython")
    flag(p, "gdb-executable", dest="gdb_executable",
         help="give gdb this file as the executable: the unstripped twin of a stripped "
              "build (stored with the case; `verify` uses it again)")
    flag(p, "force", action="store_true", help="overwrite an existing case")
    testdata_flag(p, "testdata directory to write to (default: the repository's)")
    p.set_defaults(func=cmd_new)

    p = sub.add_parser("verify", help="compare cases with gdb's backtraces")
    p.add_argument("cases", nargs="*", help="cases: files, arch/name or name (default: all)")
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser("record-qemu", help="record an arm64 case by running a program under "
                       "qemu-user (optionally stopped at an exact instruction)")
    flag(p, "name", required=True, help="case name (testdata/arm64/<name>.json)")
    flag(p, "site", help="stop at FUNCTION:SITE (" + ", ".join(SITES) + ") or FUNCTION+OFFSET; "
         "without it the program is frozen once it prints `ready`")
    flag(p, "sysroot", default=DEFAULT_SYSROOT, help="guest sysroot (qemu -L)")
    testdata_flag(p, "testdata directory to write to")
    flag(p, "gdb-differences", dest="gdb_differences",
         help="record even though gdb-multiarch disagrees, with this explanation")
    flag(p, "force", action="store_true", help="overwrite an existing case")
    flag(p, "full", action="store_true",
         help="store the whole core, not the skinny one (only the memory replay and the "
              "oracles read; see the README's 'Skinny cores')")
    p.add_argument("program", nargs="+", help="the aarch64 program and its arguments")
    p.set_defaults(func=cmd_record_qemu)

    p = sub.add_parser("reskinny", help="rebuild cases' skinny cores from their full cores "
                       "(after the unwinder starts reading more memory)")
    p.add_argument("cases", nargs="*", help="cases: files, arch/name or name")
    flag(p, "all", action="store_true", help="every case")
    flag(p, "no-gdb-check", dest="no_gdb_check", action="store_true",
         help="skip gdb's part of the proof")
    p.set_defaults(func=cmd_reskinny)
