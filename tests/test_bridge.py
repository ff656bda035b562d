"""The ctypes bridge: the C unwinder under bad input, helper failures and tail calls."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from harness.arch import AMD64, ARM64
from harness.bpf.agent import Agent
from harness.bpf.bridge import get_unwinder, trace_log
from harness.cases.store import store_for
from harness.errors import HarnessError
from harness.formatting import format_trace
from harness.paths import REPO_ROOT
from harness.replay import open_case, replay_case
from tests.casefiles import bundled_case

CASES = REPO_ROOT / "testdata" / "amd64"




def _unwind(case_name: str, read=None, **reg_overrides: int):  # type: ignore[no-untyped-def]
    case = bundled_case(case_name)
    process = open_case(case, store_for(case))
    unwinder = get_unwinder(process.arch)
    Agent(unwinder, process).attach()
    thread = process.threads[0]
    regs = {**thread.regs, **reg_overrides}
    trace = unwinder.unwind(regs, process.pid, thread.lwp, read or process.read)
    names = {m.file_id: m.name for m in process.modules.values()}
    return trace, format_trace(trace, names), process


def test_both_architectures_build_with_their_register_context() -> None:
    for arch, pc_field in ((AMD64, "ip"), (ARM64, "pc")):
        unwinder = get_unwinder(arch)
        assert unwinder.path.exists()
        assert unwinder.abi.context.field("regs").type.field(pc_field)  # type: ignore[attr-defined]


def test_unreadable_memory_gives_an_error_frame_not_a_crash() -> None:
    trace, frames, process = _unwind("chain.O2.nofp", read=lambda addr, size: None)
    process.close()
    assert frames[0].startswith("libc.so.6+")
    assert frames[-1] == "<unwinding aborted due to error native_read_return_address>"
    assert trace.failed_reads >= 1


def test_wild_registers_give_an_error_frame() -> None:
    trace, frames, process = _unwind("chain.O2.nofp", rip=0xDEAD_BEEF, rsp=0x10, rbp=0x20)
    process.close()
    assert frames == ["<unwinding aborted due to error native_pc_not_mapped>"]


def test_helper_exception_is_reported() -> None:
    def broken(addr: int, size: int) -> bytes:
        raise RuntimeError("disk on fire")

    with pytest.raises(HarnessError, match="disk on fire"):
        _unwind("chain.O2.nofp", read=broken)


def test_frames_per_program_and_tail_calls() -> None:
    """The entry tail-calls unwind_native, which walks FRAMES_PER_PROGRAM frames per
    invocation (one bpf_loop) and tail-calls itself for more."""
    trace, frames, process = _unwind("recurse")
    process.close()
    per_program = get_unwinder(AMD64).layout.constant("FRAMES_PER_PROGRAM")
    assert len(frames) > 220
    assert trace.tail_calls == 1 + (len(frames) - 1) // per_program


def test_fault_addresses(tmp_path: Path) -> None:
    trace, frames, process = _unwind("chain.O2.nofp")
    process.close()
    ra_slot = trace.frames[0].cfa - 8  # frame 0's return address on the stack
    case = bundled_case("chain.O2.nofp")
    case.fault_addresses = [ra_slot]
    case.path = CASES / "chain.O2.nofp.json"
    result = replay_case(case)
    assert result.actual[0].frames[-1] == (
        "<unwinding aborted due to error native_read_return_address>")
    assert not any("never read" in p for p in result.problems)

    case.fault_addresses = [0x10]
    stale = replay_case(case)
    assert any("never read" in p and "0x10" in p for p in stale.problems)


def test_debug_prints_reach_the_python_logger(caplog: pytest.LogCaptureFixture) -> None:
    """DEBUG_PRINT in the C code is the `harness.bpf.trace` logger at DEBUG level."""
    caplog.set_level(logging.DEBUG, logger=trace_log.name)
    _, frames, process = _unwind("chain.O2.nofp", rip=0xDEAD_BEEF, rsp=0x10, rbp=0x20)
    process.close()
    messages = [r.getMessage() for r in caplog.records if r.name == trace_log.name]
    assert any("0xdeadbeef" in m and "no known module" in m for m in messages), messages

    caplog.clear()
    caplog.set_level(logging.INFO, logger=trace_log.name)
    _, again, process = _unwind("chain.O2.nofp", rip=0xDEAD_BEEF, rsp=0x10, rbp=0x20)
    process.close()
    assert again == frames and not [r for r in caplog.records if r.name == trace_log.name]


@pytest.mark.parametrize("count, error", [(0, "native_empty_delta_page"),
                                          (1 << 20, "native_delta_search_exhausted")])
def test_broken_delta_page_is_its_own_error(count: int, error: str) -> None:
    """A page the bounded search cannot finish (or with no deltas at all) ends the
    trace with an error of its own, not with whatever entry the search stopped at."""
    case = bundled_case("chain.O2.nofp")
    process = open_case(case, store_for(case))
    try:
        unwinder = get_unwinder(process.arch)
        agent = Agent(unwinder, process)
        agent.attach()
        thread = process.threads[0]
        found = process.module_at(thread.regs["rip"])
        assert found is not None
        module, vaddr = found
        agent.load_module_deltas(module)
        agent.loaded_file_ids.add(module.file_id)
        pages = unwinder.maps["delta_pages"]
        key = {"file_id": module.file_id,
               "page": vaddr >> unwinder.layout.constant("DELTA_PAGE_BITS")}
        assert pages.lookup_value(key), "the top frame's page has deltas"
        assert pages.update_value(key, {"first": 0, "count": count}) == 0
        trace = unwinder.unwind(thread.regs, process.pid, thread.lwp, process.read)
        names = {m.file_id: m.name for m in process.modules.values()}
        assert format_trace(trace, names) == [
            f"{module.name}+{vaddr:#x}", f"<unwinding aborted due to error {error}>"]
    finally:
        process.close()


def test_trace_records_are_as_long_as_their_frames(monkeypatch: pytest.MonkeyPatch) -> None:
    """A short trace is a short record: the header and the frames in use only."""
    unwinder = get_unwinder(AMD64)
    seen: list[int] = []
    decode = unwinder.decode_trace
    monkeypatch.setattr(unwinder, "decode_trace",
                        lambda record: (seen.append(len(record)), decode(record))[1])
    trace, frames, process = _unwind("chain.O2.nofp")
    process.close()
    trace_type = unwinder.abi.trace_struct
    frame_size = unwinder.abi.frames_field.element.size
    assert seen == [trace_type.field("frames").offset + len(frames) * frame_size]
    assert seen[0] < trace_type.size
