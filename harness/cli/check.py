"""`coredump validate` and `coredump validate-deltas`: unwind rules against the CPU.

validate replays a case and checks each thread's frame-0 CFA and frame-1
return address against unicorn's execution of the current function to its
return; validate-deltas checks every stack delta of one module instruction by
instruction (harness/check/ does the work).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

from ..cases.blobs import BLOB_ID, check_id
from ..cases.case_file import find_cases, load_case
from ..cases.store import BlobStore, store_for
from ..check.case_check import INCONCLUSIVE, MATCH, MISMATCH, SKIPPED, validate_case
from ..check.delta_check import validate_module
from ..errors import HarnessError
from ..paths import TESTDATA
from .common import Subparsers, case_paths, flag, one_case


def cmd_validate(args: argparse.Namespace) -> int:
    paths = case_paths(args.case) if args.case else find_cases(TESTDATA)
    if not paths:
        raise HarnessError("no cases found; pass -case FILE")
    failed = 0
    for path in paths:
        check = validate_case(path, args.max_instructions)
        if check.skip:
            print(f"{check.name}: skipped ({check.skip})")
            continue
        counts = ", ".join(f"{check.count(v)} {v}" for v in (MATCH, MISMATCH, INCONCLUSIVE,
                                                            SKIPPED) if check.count(v))
        verdict = "ok" if check.ok else "FAILED"
        print(f"{check.name}: {verdict} ({counts}; {check.seconds:.2f} s)")
        for line in check.report(verbose=args.verbose):
            print(line)
        failed += not check.ok
    return 1 if failed else 0


def _module_path(module: str, case: str | None) -> tuple[Path, str]:
    """A file path, a store blob id, or (with -case) a module basename of that case."""
    if case:
        loaded = load_case(case)
        matches = [m for m in loaded.modules
                   if Path(m.local_path).name == module or m.local_path == module]
        if not matches:
            names = ", ".join(Path(m.local_path).name for m in loaded.modules)
            raise HarnessError(f"{case} bundles no module {module!r} (it has: {names})")
        ref = matches[0].ref
        return store_for(loaded).local_path(ref), f"{matches[0].local_path} ({ref[:12]})"
    path = Path(module)
    if path.exists():
        # A blob's file (.cache/blobs/<id>) is named by its id: say which module it is.
        return path, _blob_name(path.name) or str(path)
    try:
        blob_id = check_id(module)
    except HarnessError:
        raise HarnessError(f"{module}: no such file (give a path, a blob id, or "
                           "-case FILE with a module name)") from None
    return BlobStore().local_path(blob_id), _blob_name(blob_id) or f"blob {blob_id}"


def _blob_name(blob_id: str) -> str | None:
    """`libc.so.6 (/usr/lib/.../libc.so.6, blob 1a2b3c4d5e6f)` for a module blob that a
    bundled case references, else None."""
    if not BLOB_ID.fullmatch(blob_id):
        return None
    for path in find_cases(TESTDATA):
        for m in load_case(path).modules:
            if m.ref == blob_id:
                return f"{Path(m.local_path).name} ({m.local_path}, blob {blob_id[:12]})"
    return None


def _progress() -> Callable[[int, int, str], None] | None:
    if not sys.stderr.isatty():
        return None
    last = [0.0]

    def show(done: int, total: int, label: str) -> None:
        now = time.monotonic()
        if now - last[0] >= 0.2 or done == total:
            last[0] = now
            sys.stderr.write(f"\r{done}/{total} functions {label[:40]:<40}")
            if done == total:
                sys.stderr.write("\n")
            sys.stderr.flush()
    return show


def cmd_validate_deltas(args: argparse.Namespace) -> int:
    path, label = _module_path(args.module, one_case(args.case))
    check = validate_module(path, args.function, max_instructions=args.max_instructions,
                            progress=_progress(), label=label)
    for line in check.report(args.show):
        print(line)
    if args.function and not check.started:
        print("the function was not started (see above): nothing was checked")
        return 1
    return 0 if check.ok else 1


DELTAS_SUMMARY = """\
the summary:
  functions        functions of the module (FDE ranges, then symbols without an FDE);
                   started: runs begun, one per function entry and one per PLT slot
                   (one .plt FDE covers every stub)
  not started      split-off parts (.cold, .part: entered by a jump, not a call) and
                   outermost functions (_start, clone: return address undefined)
  runs ended       why each run stopped: returned (the check passed its end), limit
                   (-max-instructions), protection / unmapped-memory / fetch-unmapped
                   (left the synthetic stack and the module), syscall, interrupt,
                   invalid-instruction (unicorn lacks it), timeout, error
  instructions     executions: instructions executed and checked, with repeats;
  checked          distinct: different addresses; coverage: distinct code bytes executed
                   out of the module's executable bytes
  mismatches       sites (addresses) whose rule does not give the entry SP as CFA (cfa),
                   the sentinel return address (ra) or the marker frame pointer (fp);
                   without CFI = the frame-pointer fallback (listed, do not fail);
                   executions = how often mismatching sites ran
  no usable rule   sites whose rule is CFA_INVALID (the unwinder would stop there)
exit status: 1 if a rule from CFI is wrong (or -function started nothing), else 0
"""


def register(sub: Subparsers) -> None:
    p = sub.add_parser("validate", help="check each thread's top frame against unicorn's "
                                        "execution to the function's return")
    flag(p, "case", action="append", help="a case: file, arch/name or name (repeatable; "
         "default: every case)")
    flag(p, "max-instructions", dest="max_instructions", type=int, default=100_000,
         help="instruction bound per thread (default 100000)")
    flag(p, "verbose", action="store_true", help="details for matching threads too")
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("validate-deltas",
                       help="single-step a module's functions and check every stack delta",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog=DELTAS_SUMMARY)
    p.add_argument("module", help="an ELF file, a blob id, or with -case a module name "
                                  "of that case (e.g. libc.so.6)")
    flag(p, "case", help="take the module from this case's bundled modules (file, "
         "arch/name or name)")
    flag(p, "function", help="check only this function (name or address)")
    flag(p, "max-instructions", dest="max_instructions", type=int, default=2000,
         help="instruction bound per function (default 2000)")
    flag(p, "show", type=int, default=10, help="mismatches shown in full (default 10)")
    p.set_defaults(func=cmd_validate_deltas)
