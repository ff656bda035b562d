"""Instruction-level validation: every case against unicorn, site classes of the
arm64 site cases, validate-deltas on bundled modules, and proof that both
checks catch a corrupted stack delta."""

from __future__ import annotations

import bisect
import dataclasses
import re
from pathlib import Path

import pytest

from harness.bpf import agent
from harness.bpf.delta_tables import DeltaTables, TableFormat
from harness.cases.case_file import load_case
from harness.cases.store import store_for
from harness.check.case_check import MATCH, MISMATCH, ThreadCheck, validate_case
from harness.check.delta_check import validate_module
from harness.check.sites import BODY, EPILOGUE, PROLOGUE, RETURN, top_frame_sites
from harness.cli import main
from harness.core.module import Module
from harness.paths import REPO_ROOT, cache_root
from harness.replay import open_case
from harness.unwind_data import ModuleUnwindData, load_unwind_data

ARM64 = REPO_ROOT / "testdata" / "arm64"
AMD64 = REPO_ROOT / "testdata" / "amd64"


def test_validate_case(case_path: Path) -> None:
    """The unwinder's frame-0 CFA and frame-1 return address equal what the CPU
    does when the top function returns, for every thread that gets there."""
    check = validate_case(case_path)
    if check.skip:
        pytest.skip(f"case skipped: {check.skip}")
    report = "\n".join(check.report(verbose=True))
    assert check.ok, f"validation mismatch in {case_path.name}:\n{report}"
    if check.count(MATCH) == 0:
        pytest.skip(f"no thread of {case_path.name} reached its return under emulation, "
                    f"nothing was compared:\n{report}")


# The arm64 site cases are named after the instruction they stop at
# (testsources/record_cases.py); the classifier must agree on real code.
SITE_CLASSES = {
    "sites.f5.pro.entry": PROLOGUE,
    "sites.f5.pro.stp": PROLOGUE,
    "sites.f4.pro.sub": PROLOGUE,
    "sites.f5.body": BODY,
    "sites.f5.epi.ldp": EPILOGUE,
    "sites.f4.epi.ldp": EPILOGUE,
    "sites.f5.epi.ret": RETURN,
    "sites.leaf.loop": BODY,
}


@pytest.mark.parametrize("name", sorted(SITE_CLASSES))
def test_site_class_of_arm64_site_cases(name: str) -> None:
    case = load_case(ARM64 / f"{name}.json")
    process = open_case(case, store_for(case))
    try:
        sites = list(top_frame_sites(process).values())
    finally:
        process.close()
    assert len(sites) == 1
    assert sites[0].kind == SITE_CLASSES[name], sites[0].describe()
    function = name.split(".")[1]
    assert sites[0].function is not None and sites[0].function.name == function


def _matching_thread(case_path: Path) -> ThreadCheck:
    check = validate_case(case_path)
    return next(t for t in check.threads if t.verdict == MATCH)


def _module_of(case_path: Path, module_name: str) -> tuple[Path, str]:
    case = load_case(case_path)
    ref = next(m.ref for m in case.modules if Path(m.local_path).name == module_name)
    return store_for(case).local_path(ref), ref


def _corrupt(data: ModuleUnwindData, vaddr: int) -> tuple[ModuleUnwindData, int]:
    """The deltas with the one in force at vaddr off by 16 in its CFA offset."""
    addrs = [addr for addr, _ in data.deltas]
    i = bisect.bisect_right(addrs, vaddr) - 1
    assert i >= 0, f"no delta covers {vaddr:#x}"
    addr, rule = data.deltas[i]
    bad = dataclasses.replace(rule, cfa_param=rule.cfa_param + 16)
    deltas = list(data.deltas)
    deltas[i] = (addr, bad)
    return dataclasses.replace(data, deltas=deltas), addr


CORRUPTED = [AMD64 / "chain.O2.nofp.json", ARM64 / "sites.f5.body.json"]


@pytest.mark.parametrize("corrupted_case", CORRUPTED, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_corrupted_delta_is_caught_by_both_checks(corrupted_case: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    case_path = corrupted_case
    thread = _matching_thread(case_path)  # the clean data passes at this thread
    site = thread.site
    assert site.function is not None
    path, ref = _module_of(case_path, site.module)
    clean = load_unwind_data(path, ref, cache_root())
    corrupted, delta_addr = _corrupt(clean, site.vaddr)

    # Module check, on the function holding the PC: clean passes, corrupted fails
    # at an instruction the corrupted delta covers.
    function = hex(site.function.start)
    assert validate_module(path, function, unwind=clean).ok
    bad = validate_module(path, function, unwind=corrupted)
    assert not bad.ok
    assert any(m.what == "cfa" and m.rule == corrupted.deltas[
        [a for a, _ in corrupted.deltas].index(delta_addr)][1]
        for m in bad.mismatches.values())

    # Case check: the C unwinder reads the corrupted delta (tables built from it,
    # so nothing cached from the clean data is used) and the CPU disagrees.
    real_tables = agent.module_tables

    def tables(module: Module, fmt: TableFormat, cache_dir: Path) -> DeltaTables:
        if module.content_id == ref:
            return fmt.build(corrupted)
        return real_tables(module, fmt, cache_dir)

    monkeypatch.setattr(agent, "module_tables", tables)
    check = validate_case(case_path)
    verdicts = {t.lwp: t for t in check.threads}
    caught = verdicts[thread.lwp]
    assert caught.verdict == MISMATCH, caught.summary()
    text = "\n".join(caught.details)
    assert "CPU: caller's SP" in text  # the truth is shown beside the unwinder's values
    assert "=>" in text  # and the disassembly around the PC


def test_validate_cli(capsys: pytest.CaptureFixture[str]) -> None:
    case = ARM64 / "sites.f5.epi.ldp.json"
    assert main(["validate", "-case", str(case)]) == 0
    out = capsys.readouterr().out
    assert "sites.f5.epi.ldp: ok (1 match" in out and "epilogue of sites!f5" in out


def test_validate_deltas_cli_on_a_bundled_module(capsys: pytest.CaptureFixture[str]) -> None:
    case = AMD64 / "chain.O2.nofp.json"
    assert main(["validate-deltas", "chain.O2.nofp", "-case", str(case)]) == 0
    out = capsys.readouterr().out
    assert "functions:" in out and "coverage" in out
    assert "mismatches: 0 sites with CFI" in out


def test_validate_deltas_names_missing_modules(capsys: pytest.CaptureFixture[str]) -> None:
    case = AMD64 / "chain.O2.nofp.json"
    assert main(["validate-deltas", "nosuch.so", "-case", str(case)]) != 0
    err = capsys.readouterr().err
    assert "bundles no module 'nosuch.so'" in err and "libc.so.6" in err


def test_analyze_shows_the_site_class(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["analyze", "-sites", "-case", str(ARM64 / "sites.f5.epi.ret.json")]) == 0
    assert "(PC at: return of sites!f5+" in capsys.readouterr().out
    assert main(["analyze", "-case", str(ARM64 / "sites.f5.epi.ret.json")]) == 0
    assert "PC at" not in capsys.readouterr().out  # capstone only when asked


def test_calls_that_never_return_end_the_path() -> None:
    """libc's code after `call __assert_fail` belongs to another path with another
    CFA (compilers emit no CFI for unreachable code); stepping over the call would
    report false mismatches there."""
    libc, _ = _module_of(AMD64 / "cxx.json", "libc.so.6")
    check = validate_module(libc, "0x123e20")  # sub rsp,8; ...; call __assert_fail
    assert check.ok and not check.mismatches, "\n".join(check.report())
    assert check.stops["noreturn-call"] >= 1
    assert "__assert_fail" in check.stop_examples["noreturn-call"]


def test_validate_names_arch_syscalls_and_caller_frames(
        capsys: pytest.CaptureFixture[str]) -> None:
    """Case names carry their arch, system calls their names, return addresses are
    shown minus one (the frame convention of case files)."""
    assert main(["validate", "-case", "arm64/threads", "-case", "amd64/threads"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^arm64/threads: ok", out, re.M) and re.search(r"^amd64/threads: ok",
                                                                       out, re.M)
    assert re.search(r"inconclusive: system call [a-z_0-9]+ \(\d+\) at", out), out
    case = load_case(REPO_ROOT / "testdata" / "amd64" / "threads.json")
    callers = {t.frames[1] for t in case.threads if len(t.frames) > 1}
    shown = set(re.findall(r"and caller frame (\S+) match", out))
    assert shown and shown <= callers | {f for t in load_case(
        REPO_ROOT / "testdata" / "arm64" / "threads.json").threads for f in t.frames}


def test_validate_deltas_names_blobs_and_explains_its_summary(
        capsys: pytest.CaptureFixture[str]) -> None:
    case = load_case(REPO_ROOT / "testdata" / "amd64" / "threads.json")
    exe = next(m for m in case.modules if m.local_path.endswith("/threads"))
    assert main(["validate-deltas", exe.ref]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert first.startswith(f"module: threads ({exe.local_path}, blob {exe.ref[:12]})")
    with pytest.raises(SystemExit):
        main(["validate-deltas", "-h"])
    help_text = capsys.readouterr().out
    for counter in ("started:", "runs ended", "coverage", "no usable rule", "exit status"):
        assert counter in help_text
