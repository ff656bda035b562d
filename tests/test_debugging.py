"""`coredump debug` and `coredump gdb`, driven through gdb in batch mode.

The gdb tests run the real commands (python -m harness.cli ...) with
`-- -batch -ex ...` and check what a user would look at: the breakpoint is
hit, `step` lands on a bpf_src line whose text gdb can show, the unwinder's
locals print, and the core's backtrace is the case's frames.
"""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile
from elftools.elf.sections import SymbolTableSection

from harness.arch import AMD64, ARM64, host_arch
from harness.bpf.build import HOST_DIR, build_unwinder
from harness.cases.store import store_for
from harness.cli import build_parser
from harness.debug.unwinder import debug_argv, replay_for_debugging
from harness.errors import HarnessError
from harness.paths import BPF_SRC, REPO_ROOT
from harness.record.gdb_oracle import find_gdb, gdb_available
from harness.replay import open_case
from tests.casefiles import bundled_case

CASES = REPO_ROOT / "testdata" / "amd64"
# Functions that bpf_src marks __always_inline: out of line only in the debug build.
INLINE_HELPERS = ("unwind_step", "find_unwind_rule", "push_frame", "state_from_regs")




def _need_gdb(gdb: str = "gdb") -> None:
    if gdb_available(gdb) is None:
        pytest.skip("gdb with Python support is not installed (scripts/bootstrap installs it)")


def _functions(so: Path) -> set[str]:
    with open(so, "rb") as f:
        symtab = ELFFile(f).get_section_by_name(".symtab")
        assert isinstance(symtab, SymbolTableSection), f"{so} has no .symtab"
        return {s.name for s in symtab.iter_symbols() if s["st_info"]["type"] == "STT_FUNC"}


def _producer(so: Path) -> str:
    with open(so, "rb") as f:
        cu = next(ELFFile(f).get_dwarf_info().iter_CUs())
        return cu.get_top_DIE().attributes["DW_AT_producer"].value.decode()


def _coredump(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "harness.cli", *args], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=120, env=env)


# --- the debug build --------------------------------------------------------------------


def test_debug_build_is_unoptimised_not_inlined_and_cached_apart() -> None:
    release = build_unwinder(AMD64, debug=False)
    debug = build_unwinder(AMD64, debug=True)
    assert release != debug and release.parent != debug.parent
    assert "-O0" in _producer(debug).split() and "-g3" in _producer(debug).split()
    assert "-O2" in _producer(release).split()
    missing = set(INLINE_HELPERS) - _functions(debug)
    assert not missing, f"inlined in the debug build despite -D__always_inline=inline: {missing}"
    # The optimised build still forces them inline (the BPF build's behaviour).
    assert not set(INLINE_HELPERS) & _functions(release)


def test_debug_build_unwinds_like_the_case_says() -> None:
    case = bundled_case("threads")
    threads = replay_for_debugging(case.path or "", lwp=None)
    assert [t.lwp for t in threads] == [t.lwp for t in case.threads]
    assert all(t.ok for t in threads), [t for t in threads if not t.ok]
    one = replay_for_debugging(case.path or "", lwp=case.threads[2].lwp)
    assert [(t.lwp, t.frames) for t in one] == [(case.threads[2].lwp, case.threads[2].frames)]


# --- command lines ----------------------------------------------------------------------


def test_gdb_arguments_after_double_dash_reach_gdb_before_the_program() -> None:
    args = build_parser().parse_args(
        ["debug", "-case", "x.json", "-lwp", "7", "--", "-batch", "-ex", "info locals"])
    assert (args.case, args.lwp, args.gdb_args) == ("x.json", 7, ["-batch", "-ex", "info locals"])
    argv = debug_argv("x.json", 7, args.gdb_args)
    split = argv.index("--args")
    assert argv[split - 3:split] == ["-batch", "-ex", "info locals"]
    assert argv[split + 1:] == [sys.executable, "-m", "harness.debug.target",
                                str(Path("x.json").resolve()), "--lwp", "7"]
    assert argv[argv.index("quiet-run") - 1] == "-ex" and argv.index("quiet-run") < split
    assert "quiet-run" not in debug_argv("x.json", None, run=False)


def test_a_core_of_another_architecture_needs_gdb_multiarch() -> None:
    host = host_arch()
    if host is None:
        pytest.skip(f"no harness architecture for this host ({platform.machine()})")
    other = ARM64 if host == AMD64 else AMD64
    try:
        assert Path(find_gdb(other)).name == "gdb-multiarch"
    except HarnessError as e:
        assert "gdb-multiarch not found to open a" in str(e)
    if shutil.which("gdb"):
        assert Path(find_gdb(host)).name == "gdb"


@pytest.mark.parametrize("command", ["debug", "gdb"])
def test_bad_case_or_thread_is_a_clear_error(command: str) -> None:
    proc = _coredump(command, "-case", "testdata/amd64/no-such-case.json")
    assert proc.returncode == 2 and "does not exist" in proc.stderr
    case = bundled_case("chain.O2.nofp")
    proc = _coredump(command, "-case", str(case.path), "-lwp", "1")
    assert proc.returncode == 2
    assert f"has no thread 1; its threads are {case.threads[0].lwp}" in proc.stderr


# --- coredump debug under gdb -----------------------------------------------------------


def _source_line(path: Path, line: int) -> str:
    return path.read_text().splitlines()[line - 1].strip()


@pytest.mark.gdb
def test_coredump_debug_stops_steps_and_shows_unwinder_locals() -> None:
    _need_gdb()
    case = bundled_case("chain.O2.nofp")
    process = open_case(case, store_for(case))
    pc = process.threads[0].regs["rip"]
    process.close()
    proc = _coredump(
        "debug", "-case", str(case.path), "--", "-batch",
        "-ex", "next", "-ex", "info line *$pc", "-ex", "info locals",
        "-ex", "break unwind_step", "-ex", "continue",
        "-ex", "print/x scratch->state.pc", "-ex", "info source")
    out = proc.stdout
    assert "Breakpoint 1, native_tracer_entry (ctx=" in out, out + proc.stderr

    # `next` lands on a line of a bpf_src file, and gdb shows that line's text.
    m = re.search(r'Line (\d+) of "([^"]+)" starts at address', out)
    assert m, out
    line, source = int(m.group(1)), Path(m.group(2))
    assert source.parent in (BPF_SRC, HOST_DIR), source
    assert f"{line}\t  {_source_line(source, line)}" in out

    # The unwinder's locals print: this CPU's scratch, looked up in its map.
    assert re.search(r"^scratch = 0x[0-9a-f]+$", out, re.M), out
    # unwind_step is a real function in the debug build, and its state holds
    # the thread's program counter from the core.
    assert "Breakpoint 2, unwind_step (scratch=" in out, out
    assert re.search(rf"^\$1 = {pc:#x}$", out, re.M), out
    assert re.search(r"^Producer is .* -O0", out, re.M), out


@pytest.mark.gdb
def test_coredump_debug_lwp_replays_only_that_thread() -> None:
    _need_gdb()
    case = bundled_case("threads")
    lwp = case.threads[3].lwp
    proc = _coredump("debug", "-case", str(case.path), "-lwp", str(lwp), "--", "-batch",
                     "-ex", "continue", "-ex", "info breakpoints")
    out = proc.stdout
    assert out.count("Breakpoint 1, native_tracer_entry") == 1, out + proc.stderr
    assert "breakpoint already hit 1 time" in out, out
    assert f"thread {lwp}: matches the case" in out, out
    assert re.findall(r"^thread (\d+):", out, re.M) == [str(lwp)]
    assert "exited normally" in out, out


@pytest.mark.gdb
def test_plain_gdb_on_pytest_with_the_debug_build() -> None:
    """The README's manual form: gdb --args python -m pytest ... -k CASE."""
    _need_gdb()
    case = bundled_case("chain.O2.nofp")
    env = dict(os.environ, COREDUMP_DEBUG_BUILD="1")
    for name in ("PYTEST_XDIST_WORKER", "PYTEST_XDIST_WORKER_COUNT", "PYTEST_CURRENT_TEST"):
        env.pop(name, None)
    proc = subprocess.run(
        ["gdb", "-q", "-nx", "-batch", "-ex", "set breakpoint pending on",
         "-ex", "break native_tracer_entry", "-ex", "run", "-ex", "next",
         "-ex", "info source", "-ex", "kill",
         "--args", sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
         "tests/test_cases.py", "-k", case.name],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120, env=env)
    out = proc.stdout
    assert "Breakpoint 1, native_tracer_entry (ctx=" in out, out + proc.stderr
    assert re.search(r"^Located in .*/bpf_src/native_stack\.c$", out, re.M), out
    assert re.search(r"^Producer is .* -O0", out, re.M), out


# --- coredump gdb -----------------------------------------------------------------------

# Runs in gdb after `bt`: the selected thread's lwp, then every thread's
# physical frames (gdb's inline frames have no counterpart in a stack unwinder).
_WALK = r"""
import json
import gdb

selected = gdb.selected_thread()
threads = []
for t in sorted(gdb.selected_inferior().threads(), key=lambda t: t.num):
    t.switch()
    frames, f, prev = [], gdb.newest_frame(), None
    while f is not None:
        if f.type() not in (gdb.INLINE_FRAME, gdb.TAILCALL_FRAME):
            frames.append([int(f.pc()), bool(frames) and prev != gdb.SIGTRAMP_FRAME])
            prev = f.type()
        f = f.older()
    threads.append({"lwp": t.ptid[1], "frames": frames})
print("WALK " + json.dumps({"selected": selected.ptid[1], "threads": threads}))
"""


@pytest.mark.gdb
@pytest.mark.parametrize("arch", ["amd64", "arm64"])
def test_coredump_gdb_backtraces_are_the_case_frames(tmp_path: Path, arch: str) -> None:
    """arm64 cores come from qemu and have no file list: gdb is told the load biases."""
    _need_gdb("gdb" if arch == "amd64" else "gdb-multiarch")
    case = bundled_case("threads", arch)
    lwp = case.threads[4].lwp
    script = tmp_path / "walk.py"
    script.write_text(_WALK)
    proc = _coredump("gdb", "-case", str(case.path), "-lwp", str(lwp), "--", "-batch",
                     "-ex", "bt", "-x", str(script))
    out = proc.stdout
    walk = re.search(r"^WALK (.*)$", out, re.M)
    assert walk, out + proc.stderr
    doc = json.loads(walk.group(1))
    assert doc["selected"] == lwp

    # `bt` ran on the selected thread right away and reached _start's thread root.
    bt = re.findall(r"^#(\d+) ", out, re.M)
    assert len(bt) >= len(case.threads[4].frames), out
    assert "No stack." not in out and "No symbol table" not in out

    process = open_case(case, store_for(case))
    try:
        ours = {}
        for t in doc["threads"]:
            frames = []
            for pc, caller in t["frames"]:
                mapping = process.mapping_at(pc - 1 if caller else pc)
                assert mapping is not None and mapping.module is not None, hex(pc)
                frames.append(f"{mapping.module.name}+{(pc - caller) - mapping.bias:#x}")
            ours[t["lwp"]] = frames
    finally:
        process.close()
    assert ours == {t.lwp: t.frames for t in case.threads}


@pytest.mark.gdb
def test_coredump_debug_drops_gdb_noise() -> None:
    """No pending-breakpoint alarm, no libthread_db or fork notices before the stop."""
    _need_gdb()
    case = bundled_case("chain.O2.nofp")
    proc = _coredump("debug", "-case", str(case.path), "--", "-batch", "-ex", "info locals")
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    assert lines[0].startswith("Breakpoint 1, native_tracer_entry (ctx="), proc.stdout
    for noise in ("not defined", "pending", "libthread_db", "Detaching after"):
        assert noise not in proc.stdout + proc.stderr, noise
