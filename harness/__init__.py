"""coredump harness: replay real core dumps through an eBPF stack unwinder in user space."""
