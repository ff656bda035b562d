"""Recording cases and checking them against independent unwinders.

`gcore` freezes a running process; `qemu` runs an arm64 program under qemu-user
and freezes it (at an exact instruction if asked); `new` records a case from a
core (`coredump new`); `gdb_oracle` runs gdb as an independent unwinder and
`verify` compares its frames with a case's (`coredump verify`).
"""
