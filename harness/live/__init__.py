"""`coredump live`: the BPF build of the unwinder in the running kernel, on a
live process, checked against the replay of a core of the same process."""
