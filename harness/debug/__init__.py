"""A case in gdb, for the two questions a failing case raises: what does the
unwinder do (`unwinder`: `coredump debug`, single-stepping the BPF C code, with
`target` as the process under gdb), and what is the right answer (`case_gdb`:
`coredump gdb`, the case's core with its modules)."""
