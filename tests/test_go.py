"""Go support: the .gopclntab parser, stack deltas from pcsp, Go frame names.

The parser's layouts (Go 1.2, 1.16, 1.18, 1.20) are checked on synthetic tables
built here field by field (a table of each layout is what the real toolchains
write; only the Go that Debian ships is installed). The real evidence is real
binaries: the program in testsources/go/ built with the installed Go for amd64
and arm64 (cross-built, no C toolchain needed), compared with Go's own tools
(`go tool nm`, `go tool addr2line`) and with the emulator (`validate-deltas`).
Replayed Go cases are in testdata/ and run through test_cases.py.
"""

from __future__ import annotations

import os
import re
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from harness.errors import UnwindDataError
from harness.unwind_data import CFA_SP, CFA_STOP, extract_unwind_data
from harness.unwind_data.gosym import go_frame
from harness.unwind_data.pclntab import MAGICS, Pclntab, PclntabError, read_pclntab

REPO = Path(__file__).resolve().parent.parent
GO_SOURCE = REPO / "testsources" / "go" / "goroutines.go"
VERSION_MAGIC = {version: magic for magic, version in MAGICS.items()}


# ---- a writer of the four layouts (synthetic input for the parser) ----------

def _uvarint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _pcvalue(runs: list[tuple[int, int]], quantum: int) -> bytes:
    """runs: (value, length in bytes) from the function's entry on."""
    out, prev = bytearray(), -1
    for value, length in runs:
        delta = value - prev
        out += _uvarint(delta << 1 if delta >= 0 else (~delta << 1) | 1)
        out += _uvarint(length // quantum)
        prev = value
    return bytes(out + b"\0")


# Two functions: (name, entry offset from the text start, size, pcsp, pcfile, pcln);
# the pc-value tables as (value, bytes) runs, files numbered from 1 (FILES[n - 1]).
TEXT = 0x401000
FUNCS = [
    ("main.leaf", 0x0, 0x20, [(0, 0x20)], [(1, 0x20)], [(10, 0x8), (11, 0x18)]),
    ("main.main", 0x20, 0x40, [(0, 0x8), (0x48, 0x30), (0, 0x8)], [(1, 0x10), (2, 0x30)],
     [(20, 0x10), (7, 0x30)]),
]
FILES = ["/src/main.go", "/go/src/runtime/inlined.go"]


def build_table(version: str, quantum: int = 1) -> bytes:
    """A pclntab of `version`'s layout holding FUNCS (pointer size 8)."""
    ptr = 8
    names = b""
    name_offs = []
    for name, *_ in FUNCS:
        name_offs.append(len(names))
        names += name.encode() + b"\0"
    pctab = bytearray(b"\0")  # offset 0 means "no table"
    tables = []
    for _, _, _, pcsp, pcfile, pcln in FUNCS:
        offs = []
        if version != "1.2":  # file numbers: filetab[n] in 1.2 (from 1), cutab[cu + n] later
            pcfile = [(n - 1, length) for n, length in pcfile]
        for runs in (pcsp, pcfile, pcln):
            offs.append(len(pctab))
            pctab += _pcvalue(runs, quantum)
        tables.append(offs)
    end = TEXT + FUNCS[-1][1] + FUNCS[-1][2]

    if version == "1.2":
        # everything relative to the table's start; file numbers index filetab directly
        nfunc = len(FUNCS)
        functab_at = 8 + ptr
        filetab_field = functab_at + (2 * nfunc + 1) * ptr
        names_at = filetab_field + 4
        pctab_at = names_at + len(names)
        files_at = pctab_at + len(pctab)
        file_blob = b"".join(f.encode() + b"\0" for f in FILES)
        filetab_at = files_at + len(file_blob)
        funcs_at = filetab_at + 4 * (len(FILES) + 1)
        out = bytearray(struct.pack("<IBBBBQ", VERSION_MAGIC[version], 0, 0, quantum, ptr,
                                    nfunc))
        records = bytearray()
        for i, (_, off, _, *_) in enumerate(FUNCS):
            out += struct.pack("<QQ", TEXT + off, funcs_at + len(records))
            pcsp, pcfile, pcln = (pctab_at + t for t in tables[i])
            records += struct.pack("<QiiiiiiII", TEXT + off, names_at + name_offs[i], 0, 0,
                                   pcsp, pcfile, pcln, 0, 0)
        out += struct.pack("<Q", end) + struct.pack("<I", filetab_at)
        out += names + pctab + file_blob
        offs, pos = [], files_at
        for f in FILES:
            offs.append(pos)
            pos += len(f) + 1
        out += struct.pack(f"<{len(FILES) + 1}I", len(FILES) + 1, *offs)
        return bytes(out + records)

    cutab = struct.pack(f"<{len(FILES)}I", *[sum(len(f) + 1 for f in FILES[:i])
                                              for i in range(len(FILES))])
    filetab = b"".join(f.encode() + b"\0" for f in FILES)
    words = 7 if version == "1.16" else 8
    header_size = 8 + words * ptr
    funcname_at = header_size
    cu_at = funcname_at + len(names)
    file_at = cu_at + len(cutab)
    pc_at = file_at + len(filetab)
    functab_at = pc_at + len(pctab)
    entry_size = 2 * ptr if version == "1.16" else 8
    records_at = (len(FUNCS) + 1) * entry_size
    functab = bytearray()
    records = bytearray()
    for i, (_, off, *_) in enumerate(FUNCS):
        func_off = records_at + len(records)
        pcsp, pcfile, pcln = tables[i]
        if version == "1.16":
            functab += struct.pack("<QQ", TEXT + off, func_off)
            records += struct.pack("<QiiIIIIII", TEXT + off, name_offs[i], 0, 0, pcsp, pcfile,
                                   pcln, 0, 0) + bytes([0, 0, 0, 0])
        else:
            functab += struct.pack("<II", off, func_off)
            fields = [off, name_offs[i], 0, 0, pcsp, pcfile, pcln, 0, 0]
            fmt = "<IiiIIIIII" + ("i" if version == "1.20" else "")
            if version == "1.20":
                fields.append(0)
            records += struct.pack(fmt, *fields) + bytes([0, 0, 0, 0])
    functab += struct.pack("<QQ", end, 0) if version == "1.16" else struct.pack(
        "<II", end - TEXT, 0)
    head = [len(FUNCS), len(FILES)]
    if version != "1.16":
        head.append(TEXT)
    head += [funcname_at, cu_at, file_at, pc_at, functab_at]
    out = struct.pack("<IBBBB", VERSION_MAGIC[version], 0, 0, quantum, ptr)
    out += struct.pack(f"<{len(head)}Q", *head)
    return out + names + cutab + filetab + bytes(pctab) + bytes(functab + records)


def _table_of(version: str) -> Pclntab:
    return Pclntab(build_table(version))


@pytest.mark.parametrize("version", ["1.2", "1.16", "1.18", "1.20"])
def test_pclntab_layouts(version: str) -> None:
    """Each header magic selects its layout: functions, bounds, names, pc-value runs
    and source positions come out as written."""
    table = _table_of(version)
    assert table.version == version
    funcs = table.functions
    assert [(table.name(f), f.entry, f.end) for f in funcs] == [
        ("main.leaf", TEXT, TEXT + 0x20), ("main.main", TEXT + 0x20, TEXT + 0x60)]
    main = funcs[1]
    assert list(table.pcvalues(main, main.pcsp)) == [
        (TEXT + 0x20, TEXT + 0x28, 0), (TEXT + 0x28, TEXT + 0x58, 0x48),
        (TEXT + 0x58, TEXT + 0x60, 0)]
    assert table.function_at(TEXT + 0x1F) == funcs[0]
    assert table.function_at(TEXT + 0x60) is None
    assert table.function_at(TEXT - 1) is None
    assert table.source_line(TEXT + 0x28)[1:] == ("main.main", "/src/main.go", 20)
    # past the first 0x10 bytes: the second file and a line going backwards (inlined code)
    assert table.source_line(TEXT + 0x40)[1:] == ("main.main", "/go/src/runtime/inlined.go", 7)
    assert go_frame({7: table}, 7, TEXT + 0x9) == "main.leaf+0 in /src/main.go:11"
    assert go_frame({7: table}, 7, TEXT + 0x60) is None  # not in a Go function
    assert go_frame({7: table}, 8, TEXT) is None  # not a Go module


def test_pclntab_quantum() -> None:
    """arm64 tables count pc deltas in 4-byte instructions."""
    table = Pclntab(build_table("1.18", quantum=4))
    main = table.functions[1]
    assert [run[:2] for run in table.pcvalues(main, main.pcsp)] == [
        (TEXT + 0x20, TEXT + 0x28), (TEXT + 0x28, TEXT + 0x58), (TEXT + 0x58, TEXT + 0x60)]


def test_pclntab_unknown_magic() -> None:
    data = bytearray(build_table("1.18"))
    struct.pack_into("<I", data, 0, 0xFFFFFFF2)
    with pytest.raises(PclntabError, match=r"magic 0xfffffff2, which is no known Go layout"):
        Pclntab(bytes(data))
    assert issubclass(PclntabError, UnwindDataError)  # the CLI prints it in one line


@pytest.mark.parametrize("cut", [4, 40, 120, 200])
def test_pclntab_truncated(cut: int) -> None:
    """A table cut anywhere is a PclntabError, never an IndexError or struct.error."""
    data = build_table("1.20")[:cut]
    with pytest.raises(PclntabError):
        table = Pclntab(data)
        for func in table.functions:
            table.source_line(func.entry)
            list(table.pcvalues(func, func.pcsp))


def test_pcvalue_past_function_end() -> None:
    """A pc-value table that claims more code than its function is rejected."""
    data = bytearray(build_table("1.18"))
    table = Pclntab(bytes(data))
    leaf = table.functions[0]
    pos = table.pctab + leaf.pcsp
    data[pos:pos + 2] = _pcvalue([(0, 0x7F)], 1)[:2]  # 0x7f bytes in a 0x20-byte function
    broken = Pclntab(bytes(data))
    with pytest.raises(PclntabError, match="runs past the function's end"):
        list(broken.pcvalues(broken.functions[0], leaf.pcsp))


def test_not_a_go_binary(tmp_path: Path) -> None:
    assert read_pclntab("/bin/true") is None
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    assert read_pclntab(empty) is None


# ---- real binaries ------------------------------------------------------------

GO = shutil.which("go")
needs_go = pytest.mark.skipif(GO is None, reason="go is not installed (apt-get install golang-go)")


@pytest.fixture(scope="module")
def go_builds(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """testsources/go/goroutines.go for amd64 and arm64, unstripped and stripped."""
    assert GO is not None
    out = tmp_path_factory.mktemp("go")
    env = dict(os.environ, CGO_ENABLED="0", GOCACHE=str(out / "cache"), GOPATH=str(out / "gopath"),
               GOFLAGS="-trimpath")
    builds = {}
    for arch in ("amd64", "arm64"):
        for kind, flags in (("plain", []), ("stripped", ["-ldflags=-s -w"])):
            target = out / f"goroutines.{arch}.{kind}"
            subprocess.run([GO, "build", *flags, "-o", str(target), str(GO_SOURCE)], check=True,
                           env=dict(env, GOARCH=arch), cwd=out, capture_output=True)
            builds[f"{arch}.{kind}"] = target
    return builds


@needs_go
@pytest.mark.slow
@pytest.mark.parametrize("arch", ["amd64", "arm64"])
def test_functions_match_go_tool_nm(go_builds: dict[str, Path], arch: str) -> None:
    """Every function of the table is a text symbol of the same name and address."""
    exe = go_builds[f"{arch}.plain"]
    out = subprocess.run([GO, "tool", "nm", str(exe)], check=True, capture_output=True,
                         text=True).stdout
    symbols: dict[int, set[str]] = {}
    for line in out.splitlines():
        addr, kind, name = line.split(maxsplit=2)
        if kind in "Tt":
            symbols.setdefault(int(addr, 16), set()).add(name.removesuffix(".abi0"))
    table = read_pclntab(exe)
    assert table is not None and table.version == "1.18"  # Go 1.19 writes the 1.18 layout
    names = [(table.name(f), f.entry) for f in table.functions]
    assert len(names) > 800
    def same(ours: str, symbol: str) -> bool:  # the table writes array lengths as [...]
        return re.fullmatch(re.escape(ours).replace(r"\[\.\.\.\]", r"\[\d+\]"),
                            symbol) is not None

    missing = [(n, hex(e)) for n, e in names
               if not any(same(n, s) for s in symbols.get(e, ()))]
    assert not missing, missing[:10]
    assert sum("[...]" in n for n, _ in names) < 10


@needs_go
@pytest.mark.slow
@pytest.mark.parametrize("arch", ["amd64", "arm64"])
def test_source_lines_match_go_tool_addr2line(go_builds: dict[str, Path], arch: str) -> None:
    """Name, file and line of PCs all over the binary, against Go's own addr2line."""
    exe = go_builds[f"{arch}.stripped"]
    table = read_pclntab(exe)
    assert table is not None
    pcs = []
    for func in table.functions[::7]:
        pcs += [func.entry, (func.entry + func.end) // 2 & ~3, func.end - 4]
    done = subprocess.run([GO, "tool", "addr2line", str(exe)], input="".join(
        f"{pc:#x}\n" for pc in pcs), check=True, capture_output=True, text=True)
    lines = done.stdout.splitlines()
    assert len(lines) == 2 * len(pcs)
    wrong, compared = [], 0
    for i, pc in enumerate(pcs):
        name, position = lines[2 * i], lines[2 * i + 1]
        found = table.source_line(pc)
        if position in (":-1", "?:0"):  # padding after a function: no position (ours "?:0")
            assert found is None or found[2:] == ("?", 0), (hex(pc), found)
            continue
        compared += 1
        ours = "?" if found is None else f"{found[1]}\n{found[2]}:{found[3]}"
        if ours != f"{name}\n{position}":
            wrong.append((hex(pc), ours, name, position))
    assert not wrong, wrong[:10]
    assert compared > 0.6 * len(pcs)  # end - 4 is often padding


@needs_go
@pytest.mark.slow
@pytest.mark.parametrize("arch", ["amd64", "arm64"])
def test_stripped_twin_has_the_same_deltas(go_builds: dict[str, Path], arch: str) -> None:
    """-ldflags=-s -w drops symbols and DWARF (.debug_frame), not the deltas: .gopclntab
    comes before Go's .debug_frame."""
    from harness.check.rules import RuleTable

    plain = extract_unwind_data(go_builds[f"{arch}.plain"])
    stripped = extract_unwind_data(go_builds[f"{arch}.stripped"])
    assert stripped.sources == [".gopclntab"]
    assert plain.sources == [".gopclntab", ".debug_frame"]
    assert plain.deltas == stripped.deltas and len(plain.deltas) > 3000
    table = read_pclntab(go_builds[f"{arch}.stripped"])
    assert table is not None
    rules = {rule for _, rule in stripped.deltas}
    goexit = next(f for f in table.functions if table.name(f) == "runtime.goexit")
    rule_at = RuleTable(stripped).rule_at
    assert rule_at(goexit.entry).cfa_op == CFA_STOP
    main = next(f for f in table.functions if table.name(f) == "main.main")
    frame = max(v for _, _, v in table.pcvalues(main, main.pcsp))
    if arch == "amd64":  # RA at CFA-8 everywhere; BP saved at CFA-16 once the frame is set up
        assert any(r.cfa_op == CFA_SP and r.cfa_param == frame + 8 and r.ra_offset == -8
                   and r.fp_offset == -16 for r in rules)
    else:  # LR stored at the new SP (CFA - delta), FP below it; at delta 0 RA is in LR
        assert any(r.cfa_op == CFA_SP and r.cfa_param == frame and r.ra_offset == -frame
                   and r.fp_offset == -frame - 8 for r in rules)
        assert rule_at(main.entry).ra_offset == 0


@needs_go
@pytest.mark.slow
def test_validate_deltas_agrees_on_go_amd64(go_builds: dict[str, Path]) -> None:
    """The emulator single-steps every Go function of a stripped amd64 build: every
    pcsp-derived rule finds the CFA, the return address and the caller's BP."""
    from harness.check.delta_check import validate_module

    result = validate_module(go_builds["amd64.stripped"])
    assert result.started > 1000 and result.instructions > 100_000
    assert result.ok and not result.mismatches, "\n".join(result.report(5))
    assert result.skipped_rules["go stack switch"] > 0  # systemstack, asmcgocall, vDSO calls


# ---- the stripped case: gdb gets the unstripped twin ---------------------------

STRIPPED_CASE = REPO / "testdata" / "amd64" / "go.goroutines.stripped.json"


def test_gdb_executable_field(tmp_path: Path) -> None:
    """`gdb-executable` is a blob id, kept on rewrite, and counted as referenced (so
    `coredump clean` never deletes the twin a stripped case needs for verify)."""
    from harness.cases import lifecycle
    from harness.cases.case_file import load_case
    from harness.errors import CaseError

    case = load_case(STRIPPED_CASE)
    assert case.gdb_executable is not None
    assert case.gdb_executable not in {m.ref for m in case.modules}  # not what replay reads
    assert case.gdb_executable in lifecycle.case_blobs(case)
    copy = tmp_path / "case.json"
    case.save(copy)
    assert load_case(copy).gdb_executable == case.gdb_executable
    doc = copy.read_text().replace(case.gdb_executable, "not-a-blob-id")
    copy.write_text(doc)
    with pytest.raises(CaseError, match="gdb-executable"):
        load_case(copy)


@pytest.mark.gdb
def test_stripped_case_is_checked_against_its_twin() -> None:
    """gdb on the stripped binary has no .debug_frame to unwind Go with; given the
    twin it agrees with the unwinder up to Go's stack roots (the case's waivers)."""
    from harness.cases.case_file import load_case
    from harness.record.gdb_oracle import gdb_available
    from harness.record.verify import verify_case

    if gdb_available("gdb") is None:
        pytest.skip("gdb is not installed")
    case = load_case(STRIPPED_CASE)
    assert not verify_case(case).problems
    case.gdb_executable = None  # gdb on the stripped file itself
    assert verify_case(case).problems


def test_go_frames_are_not_interpreter_frames() -> None:
    """Go and Python frames share a spelling; only Python's are left out of the gdb
    comparison (Go's are native code gdb shows)."""
    from harness.formatting import is_interpreter_frame

    assert not is_interpreter_frame("main.main+0 in /src/go/goroutines.go:41")
    assert not is_interpreter_frame("runtime.cgocallbackg+0 in <autogenerated>:1")
    assert not is_interpreter_frame("runtime.goexit+0 in /go/src/runtime/asm_amd64.s:1594")
    assert is_interpreter_frame("inner+1 in /tmp/pystacks.py:3")
    assert is_interpreter_frame("<module>+0 in <frozen importlib._bootstrap>:1")
