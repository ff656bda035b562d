"""`coredump bpf-build` and `coredump bpf-verify`: the unwinder as real BPF.

bpf-build compiles bpf_src with clang -target bpf for each target
architecture; bpf-verify loads every program, with its maps, into the running
kernel's verifier and prints the verdict, the verified instruction count and
the stack depth (harness/bpf/ does the work).
"""

from __future__ import annotations

import argparse
import errno
from pathlib import Path

from rich.console import Console
from rich.table import Table
from rich.text import Text

from ..arch import ARCH_NAMES
from ..bpf import verifier
from ..bpf.build import btf_size, build_bpf_object, default_source
from ..bpf.verifier import Verdict
from .common import Subparsers, flag


def _arches(arch: str) -> tuple[str, ...]:
    return ARCH_NAMES if arch == "all" else (arch,)


def cmd_bpf_build(args: argparse.Namespace) -> int:
    for arch in _arches(args.arch):
        source = Path(args.source) if args.source else default_source().main_file
        obj = build_bpf_object(source, arch)
        print(f"{arch}: {obj} ({obj.stat().st_size} bytes, "
              f".BTF {btf_size(obj)} bytes)")
    return 0


def _table(verdicts: list[Verdict]) -> Table:
    table = Table(title="coredump bpf-verify",
                  caption="insns: in the program; verified: instructions the verifier "
                          "walked; stack: bytes (per subprogram)")
    for column in ("arch", "program", "type", "result", "insns", "verified", "stack", "time"):
        table.add_column(column, justify="left" if column in
                         ("arch", "program", "type", "result") else "right")
    for v in verdicts:
        result = Text("verified", "green") if v.verified else \
            Text(f"REJECTED {errno.errorcode.get(v.errno, v.errno)}", "red")
        time = f"{v.verification_usec / 1000:.0f} ms" if v.verification_usec is not None else "-"
        processed = v.verified_insns if v.verified_insns is not None else v.processed_insns
        table.add_row(v.arch, v.program, v.prog_type + ("*" if v.note else ""), result,
                      str(v.insn_count), "-" if processed is None else str(processed),
                      v.stack_text, time)
    return table


def cmd_bpf_verify(args: argparse.Namespace) -> int:
    verdicts: list[Verdict] = []
    if args.source:
        for arch in _arches(args.arch):
            obj = build_bpf_object(Path(args.source), arch)
            verdicts += verifier.verify_object(obj, arch, args.trace)
    else:
        verdicts = verifier.verify_unwinder(_arches(args.arch), args.trace)
    console = Console(width=max(Console().width, 120))
    console.print(_table(verdicts))
    for v in verdicts:
        if v.note:
            print(f"* {v.arch} {v.program}: {v.note}")
    for v in verdicts:
        if not v.verified:
            print(f"\n{v.arch} {v.program}: rejected ({v.error}); "
                  f"last lines of the verifier log:")
            print("  " + "\n  ".join(v.log_tail(args.log_lines)))
    over = [v for v in verdicts if v.verified and v.stack_depth > verifier.MAX_STACK]
    for v in over:  # the verifier enforces this; kept as a guard against a misparse
        print(f"{v.arch} {v.program}: stack depth {v.stack_depth} > {verifier.MAX_STACK}")
    return 0 if all(v.verified for v in verdicts) and not over else 1


def _common(p: argparse.ArgumentParser) -> None:
    flag(p, "arch", choices=[*ARCH_NAMES, "all"], default="all",
         help="target architecture (default: all)")
    flag(p, "source", help="one BPF C file instead of the unwinder's (-bpf-src)")


def register(sub: Subparsers) -> None:
    p = sub.add_parser("bpf-build", help="compile bpf_src with clang -target bpf (with BTF)")
    _common(p)
    p.set_defaults(func=cmd_bpf_build)

    p = sub.add_parser("bpf-verify",
                       help="load every BPF program into the kernel verifier and report")
    _common(p)
    flag(p, "log-lines", dest="log_lines", type=int, default=12,
         help="verifier log lines shown for a rejected program (default 12)")
    flag(p, "trace", action="store_true",
         help="for rejected programs, show the end of the instruction-level verifier log "
              "(the path that failed) instead of the summary")
    p.set_defaults(func=cmd_bpf_verify)
