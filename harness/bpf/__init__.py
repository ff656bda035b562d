"""The unwinder in bpf_src as a program: its C layouts mirrored for Python (abi),
its two builds (build: the host shared object and the clang -target bpf object),
the kernel's verdict on the latter (verifier, through libbpf), the ctypes bridge
that runs the former with the Python helpers and maps (bridge), and the agent
that fills those maps for one process, as a profiler's agent would (agent).
"""
