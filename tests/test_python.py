"""CPython frames: line tables against the interpreters themselves, layout facts against
the builds' DWARF, and what the unwinder does when a read fails or a fact is missing."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from harness.cases.case_file import ThreadFrames
from harness.core.process import Process
from harness.formatting import is_interpreter_frame
from harness.interpreters.python import python_layouts
from harness.interpreters.python.code import CodeInfo, line_for
from harness.interpreters.python.facts import FACTS, FRAME_OBJECTS
from harness.record.pystack_oracle import compare_with_pystack, parse_pystack
from harness.replay import open_case, replay_case, unwind_process
from tests.casefiles import bundled_case

PYENV = Path("/root/.pyenv/versions")


def _pyenv_python(version: tuple[int, int]) -> Path:
    found = sorted(PYENV.glob(f"{version[0]}.{version[1]}.*/bin/python{version[0]}.{version[1]}"))
    if not found:
        pytest.skip(f"no pyenv CPython {version[0]}.{version[1]} under {PYENV}")
    return found[-1]


# Run by each interpreter: every code object of a snippet with loops, branches,
# comprehensions, closures and a multi-line call, its line table and the line of
# every instruction offset as the interpreter itself computes it.
_DUMP = r'''
import dis, json, sys, types
src = """
def f(a, b):
    total = 0
    for i in range(a):
        if i % 2:
            total += i
        else:
            total -= (
                b
            )
    return [x * 2
            for x in range(total)]

class K:
    def m(self):
        def inner():
            return lambda q: q + 1
        return inner
"""
out = []
def walk(co):
    table = co.co_linetable if sys.version_info >= (3, 10) else co.co_lnotab
    if sys.version_info >= (3, 10):
        lines = [(s, e, l) for s, e, l in co.co_lines()]
    else:
        starts = list(dis.findlinestarts(co))
        ends = [s for s, _ in starts[1:]] + [len(co.co_code)]
        lines = [(s, e, l) for (s, l), e in zip(starts, ends)]
    out.append({"table": table.hex(), "first": co.co_firstlineno, "lines": lines,
                "size": len(co.co_code)})
    for c in co.co_consts:
        if isinstance(c, types.CodeType):
            walk(c)
walk(compile(src, "snippet", "exec"))
print(json.dumps(out))
'''


@pytest.mark.parametrize("version", sorted(FACTS), ids=lambda v: f"{v[0]}.{v[1]}")
def test_line_tables_agree_with_the_interpreter(version: tuple[int, int]) -> None:
    python = _pyenv_python(version)
    dumped = json.loads(subprocess.run([str(python), "-c", _DUMP], capture_output=True,
                                       text=True, check=True).stdout)
    checked = 0
    for code in dumped:
        info = CodeInfo("f", "snippet", code["first"], bytes.fromhex(code["table"]))
        for start, end, line in code["lines"]:
            for offset in range(start, end, 2):
                assert line_for(version, info, offset) == line, (version, code, offset)
                checked += 1
    assert checked > 50


def _gdb_offset(gdb: str, lib: Path, expression: str) -> int:
    out = subprocess.run([gdb, "-q", "-batch", "-ex", f"print (long)&(({expression}))",
                          str(lib)], capture_output=True, text=True).stdout
    return int(out.rsplit("=", 1)[1])


# facts.py field -> the C expression of its offset per frame model.
_INTERP_FIELDS = {
    "tstate_next": "((PyThreadState*)0)->next",
    "frame_previous": "((_PyInterpreterFrame*)0)->previous",
    "frame_instr": "((_PyInterpreterFrame*)0)->{instr}",
    "frame_entry": "((_PyInterpreterFrame*)0)->{entry}",
    "frame_code": "((_PyInterpreterFrame*)0)->{code}",
    "code_instructions": "((PyCodeObject*)0)->co_code_adaptive",
    "tstate_native_thread_id": "((PyThreadState*)0)->native_thread_id",
}
_OBJECT_FIELDS = {
    "tstate_next": "((PyThreadState*)0)->next",
    "tstate_thread_id": "((PyThreadState*)0)->thread_id",
    "tstate_frame": "((PyThreadState*)0)->frame",
    "interp_threads_head": "((PyInterpreterState*)0)->tstate_head",
    "frame_previous": "((PyFrameObject*)0)->f_back",
    "frame_code": "((PyFrameObject*)0)->f_code",
    "frame_instr": "((PyFrameObject*)0)->f_lasti",
}


@pytest.mark.gdb
@pytest.mark.parametrize("version", sorted(FACTS), ids=lambda v: f"{v[0]}.{v[1]}")
def test_facts_match_the_builds_debug_info(version: tuple[int, int]) -> None:
    """The hard facts are the pyenv builds' own layout (their DWARF, read by gdb)."""
    gdb = shutil.which("gdb")
    if gdb is None:
        pytest.skip("gdb is not installed")
    python = _pyenv_python(version)
    libs = sorted(python.parent.parent.glob("lib/libpython3*.so.1.0"))
    if not libs:
        pytest.skip(f"{python} has no shared libpython to read DWARF from")
    facts = FACTS[version]
    if facts.frame_model == FRAME_OBJECTS:
        fields = _OBJECT_FIELDS
    else:
        fields = dict(_INTERP_FIELDS)
        names = {"instr": "instr_ptr" if version >= (3, 13) else "prev_instr",
                 "entry": "is_entry" if version == (3, 11) else "owner",
                 "code": "f_executable" if version >= (3, 13) else "f_code"}
        fields = {k: v.format(**names) for k, v in fields.items()}
    for name, expression in fields.items():
        assert getattr(facts, name) == _gdb_offset(gdb, libs[0], expression), (version, name)


def test_code_fields_come_from_the_binary() -> None:
    """3.13 reads its offsets from _Py_DebugOffsets, the others code-object offsets from
    PyCode_Type.tp_members; both agree with the DWARF-checked facts where they overlap."""
    for name, where in (("py3.13.sigill", "_Py_DebugOffsets"),
                        ("py3.11", "PyCode_Type.tp_members")):
        process = open_case(bundled_case(name))
        try:
            (layout,) = python_layouts(process)
        finally:
            process.close()
        assert layout.sources["code object"] == where
        assert layout.code.qualname is not None
        assert layout.facts.code_instructions == FACTS[layout.version].code_instructions


def test_an_unreadable_code_object_still_gives_its_frame() -> None:
    """py3.11.fault makes one code object unreadable: that one frame is an error frame,
    every other frame is the one of the same core without the fault."""
    faulty = replay_case(bundled_case("py3.11.fault"))
    assert faulty.ok, faulty.problems
    clean = {t.lwp: t.frames for t in bundled_case("py3.11").threads}
    changed = [(t.lwp, i) for t in faulty.actual
               for i, (a, b) in enumerate(zip(t.frames, clean[t.lwp], strict=True)) if a != b]
    assert len(changed) == 1
    lwp, index = changed[0]
    assert next(t for t in faulty.actual if t.lwp == lwp).frames[index] == \
        "<error python_code_unreadable>"


def test_without_the_thread_pointer_3_9_says_so() -> None:
    """<= 3.10 finds its thread state by pthread_self(), the thread pointer: a core
    without it ends the trace with a named error at the first eval-loop frame."""
    process = open_case(bundled_case("py3.9"))
    try:
        for thread in process.threads:
            thread.tls = None
        result = unwind_process(process)
    finally:
        process.close()
    for t in result.threads:
        assert not any(is_interpreter_frame(f) for f in t.frames)
        assert t.frames[-1] == "<unwinding aborted due to error python_no_thread_pointer>"


def _pystack_text(threads: list[ThreadFrames], shift_innermost: int) -> str:
    """`pystack core` output for these frames (co_name, outermost first), the
    innermost Python frame's line shifted."""
    out = []
    for t in threads:
        out.append(f"Traceback for thread {t.lwp} (python) [] (most recent call last):")
        ours = [f for f in t.frames if is_interpreter_frame(f)]
        for i in reversed(range(len(ours))):
            name_offset, where = ours[i].split(" in ", 1)
            file, line = where.rsplit(":", 1)
            name = name_offset.rsplit("+", 1)[0].rsplit(".", 1)[-1]
            shown = int(line) + (shift_innermost if i == 0 else 0)
            out.append(f'    (Python) File "{file}", line {shown}, in {name}')
    return "\n".join(out)


def test_pystack_differences_are_reported() -> None:
    """pystack's output is parsed into the same frames; one wrong line per thread
    fails each thread."""
    threads = bundled_case("py3.11").threads
    same = compare_with_pystack(threads, parse_pystack(_pystack_text(threads, 0)))
    assert not same.problems
    assert same.frames == sum(is_interpreter_frame(f) for t in threads for f in t.frames) > 0
    problems = compare_with_pystack(threads, parse_pystack(_pystack_text(threads, 1))).problems
    assert len(problems) == len(threads)
    assert all("differ from pystack" in p for p in problems)


def _innermost_frame(process: Process, lwp: int) -> int:
    """The thread's current _PyInterpreterFrame (3.11), found in Python as the BPF
    program finds it, for a fault on it."""
    (layout,) = python_layouts(process)
    f = layout.facts

    def word(addr: int) -> int:
        data = process.read(addr, 8)
        assert data is not None, hex(addr)
        return int.from_bytes(data, "little")
    tstate = word(word(layout.runtime + layout.bias + f.runtime_interpreters_head)
                  + f.interp_threads_head)
    while word(tstate + f.tstate_native_thread_id) != lwp:
        tstate = word(tstate + f.tstate_next)
    assert f.cframe_current_frame is not None
    return word(word(tstate + f.tstate_frame) + f.cframe_current_frame)


def test_an_unreadable_frame_ends_the_trace_with_its_error() -> None:
    """A fault on the innermost interpreter frame of one thread: that thread's trace
    ends with python_read_frame where its Python frames began; the others are as
    recorded."""
    case = bundled_case("py3.11")
    lwp = case.threads[1].lwp
    process = open_case(case)
    try:
        frame = _innermost_frame(process, lwp)
        result = unwind_process(process, frozenset({frame + FACTS[(3, 11)].frame_previous}))
    finally:
        process.close()
    for t in result.threads:
        expected = next(c.frames for c in case.threads if c.lwp == t.lwp)
        if t.lwp != lwp:
            assert t.frames == expected
            continue
        first_python = next(i for i, f in enumerate(expected) if is_interpreter_frame(f))
        assert t.frames == expected[:first_python] + [
            "<unwinding aborted due to error python_read_frame>"]
