"""BPF helpers and maps implemented in Python for the host build of bpf_src."""

from .bpf_helpers import HelperEnv, make_helpers
from .maps import (
    MAP_CLASSES,
    ArrayMap,
    BpfMap,
    HashMap,
    LpmTrieMap,
    PerCpuArrayMap,
    PerfEventArrayMap,
    ProgArrayMap,
    RingBufMap,
)

__all__ = [
    "MAP_CLASSES", "ArrayMap", "BpfMap", "HashMap", "HelperEnv", "LpmTrieMap",
    "PerCpuArrayMap", "PerfEventArrayMap", "ProgArrayMap", "RingBufMap", "make_helpers",
]
