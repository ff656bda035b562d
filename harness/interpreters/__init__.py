"""Per-runtime introspection: what a profiler's agent learns about an interpreter in
a process (where its loop is, how its frames chain) and how its frames are named.

The unwinder in bpf_src/ walks the interpreter's frames; this stage gives it the
layout facts and turns the (code object, offset) pairs it records into names.
Only CPython is covered so far (python/).
"""
