"""The gdb side of `coredump debug`: loaded into gdb with `-x`, never imported by
the harness.

gdb's own way to break in a library that is not loaded yet prints two lines of
alarm ('Function "native_tracer_entry" not defined.', '... pending.'), and its
start of a Python process prints libthread_db and fork notices. None of it helps
a person stepping the unwinder, so the breakpoint is set when the unwinder's
shared object is loaded, and `quiet-run` runs the program with those lines
dropped (everything else gdb says is printed as it was).
"""

from __future__ import annotations

import re

import gdb  # type: ignore[import-not-found]  # only exists inside gdb

NOISE = re.compile(r"\[Thread debugging using libthread_db enabled\]"
                   r"|Using host libthread_db library .*"
                   r"|\[Detaching after v?fork from child process \d+\]"
                   r"|\[New Thread .*\]|\[Thread .* exited\]")


def arm(function: str, library: str) -> None:
    """Break on `function` once a shared object whose name contains `library` loads."""

    def on_load(event: object) -> None:
        name = getattr(getattr(event, "new_objfile", None), "filename", "") or ""
        if library in name and not any(b.location == function for b in gdb.breakpoints()):
            gdb.execute(f"break {function}", to_string=True)

    gdb.events.new_objfile.connect(on_load)


class QuietRun(gdb.Command):  # type: ignore[misc]
    """quiet-run: `run`, without gdb's start-up notices."""

    def __init__(self) -> None:
        super().__init__("quiet-run", gdb.COMMAND_RUNNING)

    def invoke(self, argument: str, from_tty: bool) -> None:
        out = gdb.execute(f"run {argument}", from_tty, to_string=True)
        kept = [line for line in out.splitlines() if not NOISE.fullmatch(line)]
        if kept:
            print("\n".join(kept))


QuietRun()
