"""One map interface, two back ends: the agent fills the emulated maps of the
host build and the kernel maps of the BPF build with the same code, and both
then hold the same bytes."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from harness.bpf import libbpf
from harness.bpf.agent import Agent
from harness.bpf.bridge import get_unwinder
from harness.bpf.kernel import KernelArrayMap, KernelHashMap, KernelUnwinder
from harness.core.process import Process
from harness.helpers import ArrayMap
from harness.replay import open_case
from tests.casefiles import bundled_case

RAW_TP = libbpf.BPF_PROG_TYPE_RAW_TRACEPOINT
LIVE_PROGRAMS = {"unwind_native": RAW_TP, "live_syscall_entry": RAW_TP}


@pytest.fixture(scope="module")
def kernel() -> Iterator[KernelUnwinder]:
    reason = libbpf.bpf_unavailable_reason()
    if reason:
        pytest.skip(f"the kernel back end needs BPF: {reason}")
    with KernelUnwinder("amd64", LIVE_PROGRAMS) as loaded:
        yield loaded


@pytest.fixture(scope="module")
def process() -> Iterator[Process]:
    opened = open_case(bundled_case("threads"))
    yield opened
    opened.close()


def _filled(backend: object, process: Process) -> Agent:
    agent = Agent(backend, process)  # type: ignore[arg-type]
    agent.attach()
    agent.load_all_deltas()
    return agent


def test_both_back_ends_hold_the_same_maps(kernel: KernelUnwinder, process: Process) -> None:
    emulated = get_unwinder("amd64")
    host_agent = _filled(emulated, process)
    kernel_agent = _filled(kernel, process)
    assert host_agent._next_delta == kernel_agent._next_delta > 1000
    assert host_agent._next_rule == kernel_agent._next_rule > 10

    for name in ("pid_mappings", "delta_pages"):
        host_entries = emulated.maps[name].entries()  # type: ignore[attr-defined]
        assert host_entries, name
        assert kernel.maps[name].entries() == host_entries, name  # type: ignore[attr-defined]
    used = {"stack_deltas": host_agent._next_delta, "unwind_rules": host_agent._next_rule,
            "unwinder_config": 1}
    for name, count in used.items():
        host_map, kernel_map = emulated.maps[name], kernel.maps[name]
        assert isinstance(host_map, ArrayMap) and isinstance(kernel_map, KernelArrayMap)
        assert kernel_map.read(0, count) == host_map.read(0, count), name
    emulated.reset()


def test_kernel_values_decode_through_the_object_debug_info(kernel: KernelUnwinder,
                                                            process: Process) -> None:
    _filled(kernel, process)
    mapping = next(m for m in process.mappings if m.module is not None)
    pages = kernel.maps["delta_pages"]
    assert isinstance(pages, KernelHashMap) and len(pages) > 0
    trie = kernel.maps["pid_mappings"]
    key = {"prefixlen": 32 + 64, "pid": process.pid,
           "addr_be": int.from_bytes(mapping.start.to_bytes(8, "big"), "little")}
    # a full-length key finds the mapping's block, as the C code's lookup does
    found = trie.lookup_value(key)
    assert found is not None and found.file_id == mapping.module.file_id  # type: ignore[union-attr]


def test_reset_empties_what_the_agent_wrote(kernel: KernelUnwinder, process: Process) -> None:
    _filled(kernel, process)
    kernel.reset()
    assert len(kernel.maps["delta_pages"]) == 0  # type: ignore[arg-type]
    assert len(kernel.maps["pid_mappings"]) == 0  # type: ignore[arg-type]
    deltas = kernel.maps["stack_deltas"]
    assert isinstance(deltas, KernelArrayMap)
    assert deltas.read(0, 64) == bytes(64 * deltas.value_size)
