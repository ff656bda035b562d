"""From a core file to a process model.

`elfcore.CoreFile` parses the core (threads and registers, mappings, memory);
`module.Module` is an ELF file the process mapped; `process.Process` joins them
into one memory reader (core pages, else the module file behind the mapping).
`discovery` finds a core's module files (NT_FILE or, for qemu-user cores,
`linkmap`) through the one sysroot resolver (`sysroot`), and `memory_modules`
rebuilds modules from the core's own memory when no file is at hand.
"""
