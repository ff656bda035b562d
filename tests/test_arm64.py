"""arm64 on any host: link_map discovery for qemu cores, site resolution,
recording under qemu-user, and pointer-authentication stripping."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from harness.cases.store import store_for
from harness.core import elfcore, linkmap
from harness.core.elfcore import CoreFile
from harness.paths import REPO_ROOT
from harness.record.gdb_oracle import gdb_available
from harness.record.qemu import record_under_qemu, resolve_site
from harness.replay import open_case, replay_case, unwind_process
from tests.casefiles import bundled_case

ARM64 = REPO_ROOT / "testdata" / "arm64"




def test_qemu_core_modules_come_from_link_map() -> None:
    case = bundled_case("threads", "arm64")
    process = open_case(case, store_for(case))
    try:
        assert process.arch == "arm64" and not process.core.mappings  # no NT_FILE
        objects = {o.path: o.bias for o in process.loaded_objects()}
        assert set(objects) == {m.local_path for m in case.modules}
        # The loader's own link_map entry agrees with the aux vector.
        assert objects["/lib/ld-linux-aarch64.so.1"] == process.core.auxv[elfcore.AT_BASE]
        exe = linkmap.executable_path(process.core)
        assert exe and objects[exe] == process.core.auxv[elfcore.AT_ENTRY] - \
            process.modules[exe].entry
    finally:
        process.close()


def test_site_case_stops_where_its_name_says() -> None:
    """sites.f5.epi.ldp: the PC is the instruction right after `ldp x29, x30`."""
    import capstone

    case = bundled_case("sites.f5.epi.ldp", "arm64")
    process = open_case(case, store_for(case))
    try:
        pc = process.threads[0].regs["pc"]
        prev = process.read(pc - 4, 4)
        assert prev is not None
        insn = next(capstone.Cs(capstone.CS_ARCH_ARM64, capstone.CS_MODE_ARM).disasm(prev, 0))
        assert insn.mnemonic == "ldp" and insn.op_str.startswith("x29, x30")
    finally:
        process.close()


def _sites_binary(tmp_path: Path) -> Path:
    if shutil.which("aarch64-linux-gnu-gcc") is None:
        pytest.skip("aarch64-linux-gnu-gcc not installed (apt-get install gcc-aarch64-linux-gnu)")
    out = tmp_path / "sites"
    subprocess.run(["aarch64-linux-gnu-gcc", "-g", "-O2", str(REPO_ROOT / "testsources" /
                    "sites.c"), "-o", str(out)], check=True)
    return out


def test_resolve_sites(tmp_path: Path) -> None:
    binary = str(_sites_binary(tmp_path))
    assert resolve_site(binary, "f5:entry").offset == 0
    stp = resolve_site(binary, "f5:after-stp").offset
    ldp = resolve_site(binary, "f5:after-ldp").offset
    ret = resolve_site(binary, "f5:ret").offset
    assert 0 < stp < ldp <= ret
    assert resolve_site(binary, "f5+0x8").offset == 8
    from harness.errors import HarnessError
    with pytest.raises(HarnessError, match="unknown site"):
        resolve_site(binary, "f5:nowhere")


@pytest.mark.qemu
@pytest.mark.gdb
def test_record_under_qemu_end_to_end(tmp_path: Path) -> None:
    for tool, package in (("qemu-aarch64", "qemu-user"), ("gdb-multiarch", "gdb-multiarch")):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} not installed (apt-get install {package})")
    if gdb_available("gdb-multiarch") is None:
        pytest.skip("gdb-multiarch lacks Python support")
    binary = _sites_binary(tmp_path)
    testdata = tmp_path / "testdata"
    case = record_under_qemu("t.f4.body", [str(binary)], site_spec="f4:body",
                             testdata=testdata, progress=lambda _: None)
    assert case.path == testdata / "arm64" / "t.f4.body.json"
    frames = case.threads[0].frames
    assert frames[0].startswith("sites+") and frames[-1].startswith("sites+")  # f4 .. _start
    assert any(f.startswith("libc.so.6+") for f in frames)
    assert replay_case(case.path).ok


def test_pac_bits_are_stripped_from_return_addresses() -> None:
    """Return addresses signed with pointer authentication unwind once the PAC
    mask from NT_ARM_PAC_MASK is applied, and do not without it."""
    case = bundled_case("sites.f5.body", "arm64")
    pac_bits = 0x007F_0000_0000_0000

    def run(with_mask: bool) -> list[str]:
        process = open_case(case, store_for(case))
        plain_read = process.read
        code = [(m.start, m.end) for m in process.mappings if m.module is not None]

        def signed_read(addr: int, size: int) -> bytes | None:
            data = plain_read(addr, size)
            if data is not None and size == 8:
                value = int.from_bytes(data, "little")
                if any(s <= value < e for s, e in code):
                    return (value | pac_bits).to_bytes(8, "little")
            return data

        process.read = signed_read  # type: ignore[method-assign]
        process.threads[0].pac_mask = pac_bits if with_mask else None
        try:
            return unwind_process(process).threads[0].frames
        finally:
            process.close()

    assert run(with_mask=True) == case.threads[0].frames
    assert run(with_mask=False)[-1].startswith("<unwinding aborted")


def test_core_file_has_no_file_notes() -> None:
    case = bundled_case("recurse", "arm64")
    core = CoreFile(store_for(case).local_path(case.coredump_ref))
    try:
        assert core.machine == "arm64" and core.mappings == [] and core.siginfo is None
        assert len(case.threads[0].frames) > 220
    finally:
        core.close()


CLONE_SOURCE = """
#include <stdio.h>
static int sink;
static __attribute__((noinline)) int scale(int x, int k) {
    for (int i = 0; i < k; i++) x = x * 3 + i;
    return x;
}
int main(int argc, char **argv) {
    (void)argv;
    sink = scale(argc, 7) + scale(argc + 1, 7);  /* GCC clones it: scale.constprop.0 */
    printf("%d\\n", sink);
    return 0;
}
"""


def _clone_binary(tmp_path: Path) -> Path:
    if shutil.which("aarch64-linux-gnu-gcc") is None:
        pytest.skip("aarch64-linux-gnu-gcc not installed (apt-get install gcc-aarch64-linux-gnu)")
    source = tmp_path / "clone.c"
    source.write_text(CLONE_SOURCE)
    out = tmp_path / "clone"
    subprocess.run(["aarch64-linux-gnu-gcc", "-g", "-O2", str(source), "-o", str(out)],
                   check=True)
    return out


def test_site_errors_name_the_fix(tmp_path: Path) -> None:
    from harness.errors import HarnessError
    binary = str(_clone_binary(tmp_path))
    with pytest.raises(HarnessError, match=r"no function 'scale'; did you mean "
                                           r"scale\.constprop\.0\?"):
        resolve_site(binary, "scale:entry")
    with pytest.raises(HarnessError, match="no function 'mian'; did you mean main"):
        resolve_site(binary, "mian+4")
    with pytest.raises(HarnessError, match="does not exist"):
        resolve_site(str(tmp_path / "nope"), "main:entry")
    assert resolve_site(binary, "main+4").gdb_location == "*(main+4)"
    assert resolve_site(binary, "scale.constprop.0:entry").gdb_location == \
        "*('scale.constprop.0'+0)"


def test_waiting_for_ready_is_bounded() -> None:
    from harness.errors import HarnessError
    from harness.record.qemu import _wait_ready

    proc = subprocess.Popen(["sleep", "30"], stdout=subprocess.PIPE, text=True)
    try:
        with pytest.raises(HarnessError, match=r"did not print `ready` within 0\.5 s"):
            _wait_ready(proc, 0.5)
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.qemu
@pytest.mark.gdb
def test_record_at_a_gcc_clone(tmp_path: Path) -> None:
    """`foo.constprop.0` used to hang gdb for 120 s and end in a traceback."""
    for tool, package in (("qemu-aarch64", "qemu-user"), ("gdb-multiarch", "gdb-multiarch")):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} not installed (apt-get install {package})")
    if gdb_available("gdb-multiarch") is None:
        pytest.skip("gdb-multiarch lacks Python support")
    binary = _clone_binary(tmp_path)
    case = record_under_qemu("clone.entry", [str(binary)], site_spec="scale.constprop.0:entry",
                             testdata=tmp_path / "testdata", progress=lambda _: None)
    frames = case.threads[0].frames
    assert frames[0].startswith("clone+") and len(frames) >= 4
    assert replay_case(case.path).ok


@pytest.mark.qemu
@pytest.mark.gdb
def test_a_failed_qemu_recording_keeps_its_core(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """qemu's core lives in a temporary directory: on failure it moves to the cache."""
    for tool, package in (("qemu-aarch64", "qemu-user"), ("gdb-multiarch", "gdb-multiarch")):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} not installed (apt-get install {package})")
    if gdb_available("gdb-multiarch") is None:
        pytest.skip("gdb-multiarch lacks Python support")
    from harness.errors import HarnessError
    from harness.record import new

    def fail(*_: object, **__: object) -> None:
        raise HarnessError("simulated failure")

    monkeypatch.setenv("COREDUMP_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(new, "_check_replay", fail)
    binary = _clone_binary(tmp_path)
    with pytest.raises(HarnessError, match="simulated failure") as failure:
        record_under_qemu("clone.kept", [str(binary)], site_spec="main+0",
                          testdata=tmp_path / "testdata", progress=lambda _: None)
    kept = tmp_path / "cache" / "failed" / "clone.kept.core"
    assert kept.is_file() and f"the core is kept at {kept}" in str(failure.value)
    with CoreFile(kept) as core:
        assert core.machine == "arm64"
