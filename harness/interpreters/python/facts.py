"""Every CPython layout fact the harness uses, per version, in one place, with its source.

Most facts are read from the binary itself (python/layout.py):
- 3.13 carries `_Py_DebugOffsets` at the start of `_PyRuntime` (Include/internal/
  pycore_debug_offsets.h, cookie "xdebugpy"): runtime, interpreter, thread, frame and
  code-object offsets come from there;
- every version exports `PyCode_Type` (and `PyFrame_Type`), whose `tp_members` table
  (struct PyMemberDef: name, type, offset, flags, doc) gives the offsets of
  co_filename, co_name, co_qualname, co_firstlineno, co_lnotab / co_linetable;
- symbols `_PyRuntime` and `_PyEval_EvalFrameDefault` (.dynsym even in Debian's
  stripped static python3.11), `_PyEval_EvalFrameDefault.cold` where a .symtab has it.

What no binary before 3.13 describes is below: the offsets of private structures
(_PyRuntimeState, PyInterpreterState, PyThreadState, _PyCFrame, _PyInterpreterFrame,
PyCodeObject.co_code_adaptive), from CPython's headers of that version
(Include/internal/pycore_runtime.h, pycore_interp.h, cpython/pystate.h,
pycore_frame.h, cpython/code.h), checked against the DWARF of the pyenv builds on this
machine (tests/test_python_facts.py re-checks them with gdb where those builds exist).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["VersionFacts", "FACTS", "facts_for", "SUPPORTED"]

# enum python_frame_model / python_entry_marker of bpf_src/types.h (read from the
# build's debug info by the agent; named here for the tables).
FRAME_OBJECTS = "PYTHON_FRAME_OBJECTS"
INTERPRETER_FRAMES = "PYTHON_INTERPRETER_FRAMES"
ENTRY_IS_ENTRY = "PYTHON_ENTRY_IS_ENTRY"
ENTRY_SHIM = "PYTHON_ENTRY_SHIM"


@dataclass(frozen=True)
class VersionFacts:
    """Offsets (bytes, 64-bit builds) that the version's binary does not carry."""

    runtime_interpreters_head: int   # _PyRuntimeState.interpreters.head
    interp_threads_head: int         # PyInterpreterState.tstate_head (<=3.11) / threads.head
    tstate_next: int                 # PyThreadState.next
    tstate_native_thread_id: int     # PyThreadState.native_thread_id (3.11+)
    tstate_frame: int                # PyThreadState.frame / .cframe / .current_frame
    cframe_current_frame: int | None  # _PyCFrame.current_frame (3.11, 3.12)
    frame_previous: int              # _PyInterpreterFrame.previous
    frame_code: int                  # _PyInterpreterFrame.f_code / f_executable
    frame_instr: int                 # .prev_instr (3.11, 3.12) / .instr_ptr (3.13)
    frame_entry: int                 # .is_entry (3.11) / .owner (3.12+)
    code_instructions: int           # offsetof(PyCodeObject, co_code_adaptive)
    entry_marker: str
    owner_cstack: int = 0            # enum _frameowner FRAME_OWNED_BY_CSTACK (3.12+)
    frame_model: str = INTERPRETER_FRAMES
    # sizeof(PyASCIIObject) and sizeof(PyCompactUnicodeObject) (Include/cpython/
    # unicodeobject.h): where a compact str's characters start (wstr went in 3.12).
    ascii_size: int = 48
    compact_size: int = 72
    tstate_thread_id: int = 0        # PyThreadState.thread_id (pthread_self())
    # The variable the interpreter list hangs from: _PyRuntime (3.7+), whose
    # interpreters.head is at runtime_interpreters_head, or 3.6's pystate.c
    # `static PyInterpreterState *interp_head` (in .symtab only).
    runtime_symbol: str = "_PyRuntime"


FACTS: dict[tuple[int, int], VersionFacts] = {
    # 3.11.7 pycore_runtime.h: _PyRuntimeState {_initialized, preinitializing,
    # preinitialized, core_initialized, initialized, _finalizing, interpreters
    # {mutex, head, ...}}: head at 40. pycore_interp.h: threads {next_unique_id, head}
    # at 8 + 8. cpython/pystate.h: PyThreadState {prev, next, interp, ..., cframe at 56,
    # ..., thread_id 152, native_thread_id 160}; _PyCFrame {use_tracing, current_frame
    # at 8, previous}. pycore_frame.h: _PyInterpreterFrame {f_func, f_globals,
    # f_builtins, f_locals, f_code 32, frame_obj, previous 48, prev_instr 56,
    # stacktop 64, is_entry 68, owner 69}. cpython/code.h: co_code_adaptive at 184.
    (3, 11): VersionFacts(40, 16, 8, 160, 56, 8, 48, 32, 56, 68, 184, ENTRY_IS_ENTRY),
    # 3.12.1: interpreters.head 40; PyInterpreterState.threads.head at 72;
    # PyThreadState.cframe 56, native_thread_id 144; _PyCFrame.current_frame 0;
    # _PyInterpreterFrame {f_code 0, previous 8, ..., prev_instr 56, stacktop 64,
    # return_offset 68, owner 70}; co_code_adaptive 192; FRAME_OWNED_BY_CSTACK = 3.
    (3, 12): VersionFacts(40, 72, 8, 144, 56, 0, 8, 0, 56, 70, 192, ENTRY_SHIM, 3,
                          ascii_size=40, compact_size=56),
    # 3.13.0: the binary's _Py_DebugOffsets wins; these are what 3.13.0 carries there
    # (runtime_state.interpreters_head 632, interpreter_state.threads_head 7344,
    # thread_state.next 8 / current_frame 72 / native_thread_id 160,
    # interpreter_frame.previous 8 / executable 0 / instr_ptr 56 / owner 70,
    # code_object.co_code_adaptive 200, unicode_object.asciiobject_size 40).
    (3, 13): VersionFacts(632, 7344, 8, 160, 72, None, 8, 0, 56, 70, 200, ENTRY_SHIM, 3,
                          ascii_size=40, compact_size=56),
}


def _frame_objects(interpreters_head: int, thread_id: int, lasti: int,
                   runtime_symbol: str = "_PyRuntime") -> VersionFacts:
    """<= 3.10: PyThreadState {prev, next 8, interp, frame 24, ...}, PyInterpreterState
    {next, tstate_head 8, ...}, PyFrameObject {PyObject_VAR_HEAD, f_back 24, f_code 32,
    ..., f_lasti}; no native_thread_id, so threads are matched by thread_id."""
    return VersionFacts(interpreters_head, 8, 8, 0, 24, None, 24, 32, lasti, 0, 0,
                        ENTRY_IS_ENTRY, frame_model=FRAME_OBJECTS,
                        tstate_thread_id=thread_id, runtime_symbol=runtime_symbol)


FACTS.update({
    # 3.6.15: no _PyRuntime; interp_head's pointee is the head (offset 0);
    # PyThreadState.thread_id 152; PyFrameObject.f_lasti 120.
    (3, 6): _frame_objects(0, 152, 120, "interp_head"),
    # 3.7.16: _PyRuntimeState {initialized, core_initialized, finalizing,
    # interpreters {mutex, head 24}}; thread_id 176; f_lasti 104.
    (3, 7): _frame_objects(24, 176, 104),
    # 3.8.18, 3.9.18: interpreters.head 32 (a preinitializing flag came before it).
    (3, 8): _frame_objects(32, 176, 104),
    (3, 9): _frame_objects(32, 176, 104),
    # 3.10.13: f_lasti 96 and counts code units (2 bytes: lasti_unit).
    (3, 10): _frame_objects(32, 176, 96),
})

SUPPORTED = tuple(sorted(FACTS))


def facts_for(version: tuple[int, int]) -> VersionFacts | None:
    return FACTS.get(version)
