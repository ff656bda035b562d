"""Unwind rules checked against what the CPU does (unicorn executes, capstone reads).

`emulate` runs code over a frozen process or a lone module; `code` is a module's
code model (sections, symbols, function bounds); `sites` classifies a PC as
prologue, body, epilogue or return; `rules` prints and looks up stack-delta rules.
The two tools: `case_check` (`coredump validate`: each thread's top frame of a
case) and `delta_check` (`coredump validate-deltas`: every delta of a module).
"""
