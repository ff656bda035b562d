"""Tests for harness.unwind_data against real binaries.

Expected rules come from independent sources wherever possible: binutils' readelf
(its interpretation of the CFI), capstone (where push/stp instructions really are) and
symbol tables, never from tables typed in by hand (except tiny hand-assembled CFI).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from bisect import bisect_right
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

import capstone
import pytest
from elftools.elf.elffile import ELFFile
from elftools.elf.sections import SymbolTableSection

from harness.errors import UnwindDataError
from harness.unwind_data import (
    CFA_FP,
    CFA_INVALID,
    CFA_PLT,
    CFA_SIGNAL,
    CFA_SP,
    CFA_STOP,
    FORMAT_VERSION,
    FRAME_POINTER_RULE,
    ModuleUnwindData,
    UnwindRule,
    extract_unwind_data,
    load_unwind_data,
)
from harness.unwind_data.cfi import _Coverage

LIBC = Path("/lib/x86_64-linux-gnu/libc.so.6")
LIBC_ARM64 = Path("/usr/aarch64-linux-gnu/lib/libc.so.6")  # from libc6-arm64-cross
GCC = shutil.which("gcc")
AARCH64_GCC = shutil.which("aarch64-linux-gnu-gcc")
READELF = shutil.which("readelf")

needs_gcc = pytest.mark.skipif(GCC is None, reason="gcc not installed")
needs_aarch64_gcc = pytest.mark.skipif(
    AARCH64_GCC is None, reason="aarch64-linux-gnu-gcc not installed"
)
needs_readelf = pytest.mark.skipif(READELF is None, reason="readelf (binutils) not installed")


# ----------------------------------------------------------------------------- helpers


def build(
    workdir: Path, name: str, units: dict[str, list[str]], *link_flags: str, cc: str = "gcc"
) -> Path:
    """Compile each source (path -> compiler flags) separately, then link them, so
    single functions can get different unwind-table options."""
    objects = []
    for source, flags in units.items():
        obj = workdir / f"{name}-{Path(source).stem}.o"
        subprocess.run([cc, "-c", *flags, "-o", str(obj), source], check=True)
        objects.append(str(obj))
    exe = workdir / name
    subprocess.run([cc, *link_flags, "-o", str(exe), *objects], check=True)
    return exe


def write(workdir: Path, name: str, text: str) -> str:
    path = workdir / name
    path.write_text(text)
    return str(path)


def symbol(path: Path, name: str) -> tuple[int, int] | None:
    """(address, size) of a symbol from .symtab or .dynsym, None if absent."""
    with open(path, "rb") as f:
        elf = ELFFile(f)
        for table in (".symtab", ".dynsym"):
            section = elf.get_section_by_name(table)
            if not isinstance(section, SymbolTableSection):
                continue
            for sym in section.get_symbol_by_name(name) or []:
                if sym["st_value"]:
                    return sym["st_value"], sym["st_size"]
    return None


def require_symbol(path: Path, name: str) -> tuple[int, int]:
    found = symbol(path, name)
    assert found is not None, f"{name} not in {path}"
    return found


def read_vaddr(path: Path, addr: int, size: int) -> bytes:
    """Bytes of the file mapped at an ELF virtual address."""
    with open(path, "rb") as f:
        elf = ELFFile(f)
        for seg in elf.iter_segments():
            lo = seg["p_vaddr"]
            if seg["p_type"] == "PT_LOAD" and lo <= addr and addr + size <= lo + seg["p_filesz"]:
                f.seek(seg["p_offset"] + addr - lo)
                return f.read(size)
    raise AssertionError(f"{addr:#x} not in a loaded segment of {path}")


def section_range(path: Path, name: str) -> tuple[int, int] | None:
    with open(path, "rb") as f:
        section = ELFFile(f).get_section_by_name(name)
        if section is None:
            return None
        return section["sh_addr"], section["sh_addr"] + section["sh_size"]


def rule_lookup(data: ModuleUnwindData) -> Callable[[int], UnwindRule]:
    """addr -> what the C side would use there (frame pointers outside the table)."""
    addrs = [a for a, _ in data.deltas]

    def lookup(addr: int) -> UnwindRule:
        index = bisect_right(addrs, addr) - 1
        return FRAME_POINTER_RULE if index < 0 else data.deltas[index][1]

    return lookup


def rule_at(data: ModuleUnwindData, addr: int) -> UnwindRule:
    return rule_lookup(data)(addr)


def rules_in(data: ModuleUnwindData, start: int, end: int) -> list[UnwindRule]:
    """All rules in effect somewhere in [start, end)."""
    rules = [rule_at(data, start)]
    rules += [rule for addr, rule in data.deltas if start < addr < end]
    return rules


def disassemble(path: Path, addr: int, size: int, arm64: bool = False) -> list[capstone.CsInsn]:
    if arm64:
        md = capstone.Cs(capstone.CS_ARCH_ARM64, capstone.CS_MODE_ARM)
    else:
        md = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
    return list(md.disasm(read_vaddr(path, addr, size), addr))


def assert_well_formed(data: ModuleUnwindData) -> None:
    addrs = [a for a, _ in data.deltas]
    assert addrs == sorted(set(addrs)), "deltas must be strictly increasing"
    for (_, a), (_, b) in zip(data.deltas, data.deltas[1:], strict=False):
        assert a != b, "consecutive equal rules must be merged"
    if data.deltas:
        assert data.deltas[-1][1] == FRAME_POINTER_RULE, "table must end with the FP fallback"


# ---------------------------------------------------- readelf -wF as an independent oracle

ANY_PLT = "any CFA_PLT rule"  # readelf prints every CFA expression as "exp"


@dataclass
class OracleRow:
    section: str
    fde_start: int
    loc: int
    acceptable: list[UnwindRule | str]


Row = tuple[int, dict[str, str]]  # LOC, column name -> readelf's rule text


@dataclass
class ReadelfEntry:
    section: str
    kind: str  # "CIE" or "FDE"
    key: str  # CIE: its offset; FDE: the offset of its CIE
    augmentation: str = ""
    start: int = 0
    end: int = 0
    rows: list[Row] | None = None


def readelf_rows(path: Path, machine: str) -> Iterator[OracleRow]:
    """Rows of `readelf -wF` (binutils' own CFI interpreter), translated into the rules
    the spec asks for. FDEs overlapping another FDE are skipped (priority is tested
    separately), as are tombstoned ones at address 0."""
    assert READELF is not None
    # readelf exits 1 on files with a .gnu_debuglink it cannot follow; judge by output
    text = subprocess.run([READELF, "-wF", str(path)], capture_output=True, text=True).stdout
    assert "Contents of the .eh_frame section" in text or ".debug_frame" in text
    entries = _parse_readelf(text)
    cies = {(e.section, e.key): e for e in entries if e.kind == "CIE"}
    fdes = [e for e in entries if e.kind == "FDE"]
    spans = sorted((e.start, e.end) for e in fdes)
    overlapping = set()
    for prev, span in zip(spans, spans[1:], strict=False):
        if span[0] < prev[1]:
            overlapping |= {prev, span}
    for fde in fdes:
        if fde.start == 0 or (fde.start, fde.end) in overlapping:
            continue
        cie = cies[(fde.section, fde.key)]
        rows = fde.rows or [(fde.start, cols) for _, cols in (cie.rows or [])[-1:]]
        by_loc = {loc: cols for loc, cols in rows if fde.start <= loc < fde.end}
        signal = "S" in cie.augmentation
        for loc, cols in by_loc.items():  # the last row for a LOC wins
            yield OracleRow(fde.section, fde.start, loc, _acceptable(cols, signal, machine))


_CIE_LINE = re.compile(r"([0-9a-f]{8,16}) [0-9a-f]+ [0-9a-f]+ CIE \"([^\"]*)\"")
_FDE_LINE = re.compile(
    r"[0-9a-f]{8,16} [0-9a-f]+ [0-9a-f]+ FDE cie=([0-9a-f]+) pc=([0-9a-f]+)\.\.([0-9a-f]+)"
)
_ROW_LINE = re.compile(r"([0-9a-f]{16}) (\S.*)$")  # LOC is always 16 digits


def _parse_readelf(text: str) -> list[ReadelfEntry]:
    entries: list[ReadelfEntry] = []
    section = ""
    columns: list[str] = []
    for line in text.splitlines():
        if m := re.match(r"Contents of the (\S+) section", line):
            section = m.group(1)
        elif m := _CIE_LINE.match(line):
            entries.append(ReadelfEntry(section, "CIE", m.group(1), m.group(2), rows=[]))
        elif m := _FDE_LINE.match(line):
            start, end = int(m.group(2), 16), int(m.group(3), 16)
            entries.append(ReadelfEntry(section, "FDE", m.group(1), start=start, end=end, rows=[]))
        elif m := re.match(r"\s+LOC\s+CFA\s*(.*)$", line):
            columns = ["CFA", *m.group(1).split()]
        elif (m := _ROW_LINE.match(line)) and entries and entries[-1].rows is not None:
            # a register rule like "r9 (r9)" contains a space
            tokens = re.findall(r"r\d+ \([^)]*\)|\S+", m.group(2))
            entries[-1].rows.append((int(m.group(1), 16), dict(zip(columns, tokens, strict=True))))
    return entries


def _acceptable(cols: dict[str, str], signal: bool, machine: str) -> list[UnwindRule | str]:
    """Rules the spec allows for one readelf row."""
    if signal:
        return [UnwindRule(CFA_SIGNAL)]
    sp, fp, default_ra = ("rsp", "rbp", -8) if machine == "amd64" else ("sp", "x29", 0)
    invalid = UnwindRule(CFA_INVALID)
    ra = cols.get("ra")
    stop: list[UnwindRule | str] = [UnwindRule(CFA_STOP)]
    if ra == "u" and machine == "amd64":
        return stop  # the CIE always gives rip a rule, so "u" is DW_CFA_undefined
    # On arm64 readelf shows both "never mentioned" and DW_CFA_undefined as "u".
    candidates: list[UnwindRule | str] = stop if ra == "u" else []
    cfa = cols["CFA"]
    if cfa == "exp":
        return [*candidates, invalid, ANY_PLT]
    m = re.fullmatch(r"(\w+)([+-]\d+)", cfa)
    assert m, cfa
    if m.group(1) not in (sp, fp):
        return [*candidates, invalid]
    if ra in (None, "s", "u"):
        ra_offset = default_ra
    elif re.fullmatch(r"c-\d+", ra):
        ra_offset = int(ra[1:])
    elif ra == ("r5 (rdi)" if machine == "amd64" else "r30 (x30)"):
        ra_offset = 0  # in the register the unwinder holds as the top frame's "LR"
    else:
        return [*candidates, invalid]
    fp_rule = cols.get(fp, "u")
    fp_offset = int(fp_rule[1:]) if re.fullmatch(r"c-\d+", fp_rule) else 0
    op = CFA_SP if m.group(1) == sp else CFA_FP
    rule = UnwindRule(op, int(m.group(2)), fp_offset=fp_offset, ra_offset=ra_offset)
    return [*candidates, rule]


def check_against_readelf(path: Path, data: ModuleUnwindData, machine: str) -> int:
    """Compare the rule at every readelf row address; returns the rows checked."""
    mismatches = []
    checked = 0
    lookup = rule_lookup(data)
    for row in readelf_rows(path, machine):
        rule = lookup(row.loc)
        ok = rule in row.acceptable or (ANY_PLT in row.acceptable and rule.cfa_op == CFA_PLT)
        if not ok:
            mismatches.append(f"{row.section} {row.loc:#x}: got {rule}, want {row.acceptable}")
        checked += 1
    assert not mismatches, f"{len(mismatches)} mismatches, e.g.:\n" + "\n".join(mismatches[:10])
    return checked


# ------------------------------------------------------------------------------- libc


@dataclass
class Loaded:
    data: ModuleUnwindData
    cached: ModuleUnwindData
    cold_s: float
    cached_s: float
    cache_dir: Path


@pytest.fixture(scope="module")
def libc(tmp_path_factory: pytest.TempPathFactory) -> Loaded:
    """libc extracted once (through the cache, so the timings come for free)."""
    if not LIBC.exists():
        pytest.skip(f"{LIBC} not present")
    cache_dir = tmp_path_factory.mktemp("cache")
    t0 = time.perf_counter()
    data = load_unwind_data(LIBC, "libc-test", cache_dir)
    t1 = time.perf_counter()
    cached = load_unwind_data(LIBC, "libc-test", cache_dir)
    t2 = time.perf_counter()
    return Loaded(data, cached, t1 - t0, t2 - t1, cache_dir)


@pytest.mark.slow
def test_libc_extraction(libc: Loaded) -> None:
    data = libc.data
    assert data.machine == "amd64"
    assert data.sources == [".eh_frame"]
    assert data.fde_count > 1000
    assert data.fde_errors == 0, "GNU_args_size FDEs must decode (pyelftools workaround)"
    assert_well_formed(data)
    ops = {rule.cfa_op for _, rule in data.deltas}
    assert {CFA_SP, CFA_FP, CFA_STOP, CFA_SIGNAL, CFA_PLT} <= ops


@needs_readelf
def test_libc_matches_readelf(libc: Loaded) -> None:
    assert check_against_readelf(LIBC, libc.data, "amd64") > 20000


def test_libc_signal_trampoline(libc: Loaded) -> None:
    """__restore_rt is not exported, so find it by its code: mov $15,%rax; syscall
    (rt_sigreturn). Use the symbol instead when the library has a .symtab."""
    found = symbol(LIBC, "__restore_rt")
    if found is not None:
        addr = found[0]
    else:
        code_lo, code_hi = section_range(LIBC, ".text") or (0, 0)
        text = read_vaddr(LIBC, code_lo, code_hi - code_lo)
        stub = re.escape(bytes.fromhex("48c7c00f0000000f05"))
        hits = [m.start() for m in re.finditer(stub, text)]
        assert len(hits) == 1, "expected exactly one rt_sigreturn stub in libc"
        addr = code_lo + hits[0]
    assert rule_at(libc.data, addr).cfa_op == CFA_SIGNAL


def test_libc_plt_rules_only_in_plt(libc: Loaded) -> None:
    plt = section_range(LIBC, ".plt")
    assert plt is not None
    plt_deltas = [a for a, r in libc.data.deltas if r.cfa_op == CFA_PLT]
    assert plt_deltas
    assert all(plt[0] <= a < plt[1] for a in plt_deltas)


def test_libc_cache_round_trip(libc: Loaded) -> None:
    """The cached copy is the extracted data (how long either takes is coredump
    bench's business, not a test's)."""
    assert libc.cached == libc.data
    assert len({rule for _, rule in libc.data.deltas}) > 50


# ----------------------------------------------------------- compiled x86_64 programs

FRAME_C = """
__attribute__((noinline)) int work(int x) {
    volatile int a[8];
    for (int i = 0; i < 8; i++) a[i] = x + i;
    return a[3];
}
int main(int argc, char **argv) { (void)argv; return work(argc); }
"""

OMIT_C = """
__attribute__((noinline)) long leafsum(long *p, int n) {
    long s = 0;
    for (int i = 0; i < n; i++) s += p[i];
    return s;
}
__attribute__((noinline)) long omit(int n) {
    long buf[64];
    for (int i = 0; i < 64; i++) buf[i] = (long)i * n;
    return leafsum(buf, 64) + n;
}
int main(int argc, char **argv) { (void)argv; return (int)omit(argc); }
"""


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("unwind-build")


@pytest.fixture(scope="module")
def frame_prog(workdir: Path) -> Path:
    if GCC is None:
        pytest.skip("gcc not installed")
    src = write(workdir, "frame.c", FRAME_C)
    return build(workdir, "frame", {src: ["-O0", "-fno-omit-frame-pointer"]})


@pytest.fixture(scope="module")
def frame_data(frame_prog: Path) -> ModuleUnwindData:
    return extract_unwind_data(frame_prog)


def test_frame_pointer_function(frame_prog: Path, frame_data: ModuleUnwindData) -> None:
    """-O0: CFA=rsp+8 at entry, rsp+16 after push %rbp, rbp+16 once rbp is set up."""
    assert_well_formed(frame_data)
    addr, size = require_symbol(frame_prog, "work")
    insns = disassemble(frame_prog, addr, size)
    push = next(i for i in insns if i.mnemonic == "push" and i.op_str == "rbp")
    mov = next(i for i in insns if i.mnemonic == "mov" and i.op_str == "rbp, rsp")
    assert push.address == addr
    assert rule_at(frame_data, addr) == UnwindRule(CFA_SP, 8, ra_offset=-8)
    after_push = push.address + push.size
    assert rule_at(frame_data, after_push) == UnwindRule(CFA_SP, 16, fp_offset=-16, ra_offset=-8)
    body = mov.address + mov.size
    assert rule_at(frame_data, body) == UnwindRule(CFA_FP, 16, fp_offset=-16, ra_offset=-8)
    ret = next(i for i in insns if i.mnemonic == "ret")
    at_ret = rule_at(frame_data, ret.address)  # gcc leaves rbp's (now stale) save rule
    assert (at_ret.cfa_op, at_ret.cfa_param, at_ret.ra_offset) == (CFA_SP, 8, -8)


def test_start_is_outermost(frame_prog: Path, frame_data: ModuleUnwindData) -> None:
    """crt1's _start marks rip as DW_CFA_undefined: the unwinder must stop there."""
    addr, size = require_symbol(frame_prog, "_start")
    assert set(rules_in(frame_data, addr, addr + size)) == {UnwindRule(CFA_STOP)}


@needs_readelf
def test_program_matches_readelf(frame_prog: Path, frame_data: ModuleUnwindData) -> None:
    assert check_against_readelf(frame_prog, frame_data, "amd64") > 5


@needs_gcc
def test_omit_frame_pointer(workdir: Path) -> None:
    src = write(workdir, "omit.c", OMIT_C)
    exe = build(workdir, "omit", {src: ["-O2", "-fomit-frame-pointer"]})
    data = extract_unwind_data(exe)
    addr, size = require_symbol(exe, "omit")
    rules = rules_in(data, addr, addr + size)
    assert rules[0] == UnwindRule(CFA_SP, 8, ra_offset=-8)
    assert {r.cfa_op for r in rules} == {CFA_SP}
    assert len({r.cfa_param for r in rules}) >= 2, "the stack allocation must show up"
    assert all(r.ra_offset == -8 for r in rules)


@needs_gcc
def test_lazy_plt(workdir: Path) -> None:
    """Every PLT entry gets CFA_PLT whose threshold is where its push instruction ends
    (before it the CFA is rsp+8, after it rsp+16); checked with capstone."""
    src = write(
        workdir,
        "plt.c",
        '#include <stdio.h>\nint main(void){puts("a");printf("%d\\n", 1); return 0;}\n',
    )
    exe = build(workdir, "plt", {src: ["-O0"]}, "-Wl,-z,lazy")
    data = extract_unwind_data(exe)
    plt = section_range(exe, ".plt")
    assert plt is not None
    entries = range(plt[0] + 16, plt[1], 16)  # PLT0 is the resolver trampoline
    assert len(entries) >= 2
    for entry in entries:
        rule = rule_at(data, entry)
        assert rule.cfa_op == CFA_PLT and rule.cfa_param == 8 and rule.ra_offset == -8, rule
        insns = disassemble(exe, entry, 16)
        push = next(i for i in insns if i.mnemonic == "push")
        assert rule.aux == push.address + push.size - entry
        assert rules_in(data, entry, entry + 16) == [rule]


@needs_gcc
def test_gap_gets_synthesized_rules(workdir: Path) -> None:
    """A function compiled without unwind tables sits between two with CFI: its rules
    come from its instructions (synthesize.py), the frame-pointer rule only around it."""
    before = write(
        workdir,
        "before.c",
        "int before(int x){return x+1;}\n"
        "int after(int);int nocfi(int);"
        "int main(int c,char**v){(void)v;return before(c)+nocfi(c)+after(c);}\n",
    )
    nocfi = write(workdir, "nocfi.c", "int nocfi(int x){volatile int y=x;return y*3;}\n")
    after = write(workdir, "after.c", "int after(int x){return x-1;}\n")
    exe = build(
        workdir,
        "gap",
        {
            before: ["-O0"],
            nocfi: ["-O0", "-fno-asynchronous-unwind-tables", "-fno-unwind-tables"],
            after: ["-O0"],
        },
    )
    data = extract_unwind_data(exe)
    assert_well_formed(data)
    addr, size = require_symbol(exe, "nocfi")
    assert any(lo <= addr < hi for lo, hi in data.synthesized)
    # -O0: push %rbp; mov %rsp,%rbp; ... pop %rbp; ret
    assert rules_in(data, addr, addr + size) == [
        UnwindRule(CFA_SP, 8, ra_offset=-8),
        UnwindRule(CFA_SP, 16, fp_offset=-16, ra_offset=-8),
        UnwindRule(CFA_SP, 8, ra_offset=-8),
    ]
    for covered in ("before", "after"):
        assert rule_at(data, require_symbol(exe, covered)[0]) == UnwindRule(CFA_SP, 8, ra_offset=-8)
    # the gap after the last FDE in the table: the final FP entry starts there
    assert data.deltas[-1][1] == FRAME_POINTER_RULE


@needs_gcc
def test_debug_frame_fills_in(workdir: Path) -> None:
    """gcc -g without unwind tables emits .debug_frame only for that unit."""
    main = write(
        workdir, "dmain.c", "int dbg(int);int main(int c,char**v){(void)v;return dbg(c);}\n"
    )
    dbg = write(workdir, "dbg.c", FRAME_C.replace("work", "dbg").split("int main")[0])
    no_eh = ["-O0", "-g", "-fno-asynchronous-unwind-tables"]
    exe = build(workdir, "dbgframe", {main: ["-O0"], dbg: no_eh})
    assert section_range(exe, ".debug_frame") is not None
    data = extract_unwind_data(exe)
    assert data.sources == [".eh_frame", ".debug_frame"]
    addr, size = require_symbol(exe, "dbg")
    rules = rules_in(data, addr, addr + size)
    assert rules[0] == UnwindRule(CFA_SP, 8, ra_offset=-8)
    assert FRAME_POINTER_RULE in rules  # the body, via rbp
    if READELF:
        check_against_readelf(exe, data, "amd64")


@needs_gcc
def test_signal_frame_in_static_binary(workdir: Path) -> None:
    src = write(
        workdir,
        "sig.c",
        "#include <signal.h>\nstatic void h(int s){(void)s;}\n"
        "int main(void){signal(SIGUSR1, h);return 0;}\n",
    )
    try:
        exe = build(workdir, "sig", {src: ["-O0"]}, "-static")
    except subprocess.CalledProcessError:
        pytest.skip("static libc (libc.a) not available")
    data = extract_unwind_data(exe)
    addr, size = require_symbol(exe, "__restore_rt")
    assert set(rules_in(data, addr, addr + max(size, 1))) == {UnwindRule(CFA_SIGNAL)}


HAND_CFI_S = """
    .text
    .globl args_size_fn, broken_fn, def_cfa_sf_fn
    .type args_size_fn, @function
args_size_fn:
    .cfi_startproc
    pushq %rbp
    .cfi_def_cfa_offset 16
    .cfi_offset %rbp, -16
    movq %rsp, %rbp
    .cfi_def_cfa_register %rbp
    .cfi_escape 0x2e, 0x10          /* DW_CFA_GNU_args_size 16 */
    nop
    popq %rbp
    .cfi_def_cfa %rsp, 8
    ret
    .cfi_endproc
    .size args_size_fn, .-args_size_fn

    .type broken_fn, @function
broken_fn:
    .cfi_startproc
    pushq %rbx
    .cfi_escape 0x2f, 0x03, 0x10    /* DW_CFA_GNU_negative_offset_extended: pyelftools can't */
    popq %rbx
    ret
    .cfi_endproc
    .size broken_fn, .-broken_fn

    .type def_cfa_sf_fn, @function
def_cfa_sf_fn:
    .cfi_startproc
    pushq %rax
    .cfi_escape 0x12, 0x07, 0x7e    /* DW_CFA_def_cfa_sf rsp, -2 (x data align -8 = 16) */
    popq %rax
    .cfi_def_cfa_offset 8
    ret
    .cfi_endproc
    .size def_cfa_sf_fn, .-def_cfa_sf_fn
    .section .note.GNU-stack,"",@progbits
"""


@needs_gcc
def test_hand_assembled_cfi(workdir: Path) -> None:
    """One undecodable FDE costs only its own range; opcodes pyelftools mishandles
    (GNU_args_size, def_cfa_sf) are decoded correctly."""
    asm = write(workdir, "hand.s", HAND_CFI_S)
    main = write(workdir, "hmain.c", "int main(void){return 0;}\n")
    exe = build(workdir, "hand", {asm: [], main: ["-O0"]})
    data = extract_unwind_data(exe)
    assert data.fde_errors == 1
    assert_well_formed(data)

    addr, _ = require_symbol(exe, "args_size_fn")
    assert rule_at(data, addr + 1) == UnwindRule(CFA_SP, 16, fp_offset=-16, ra_offset=-8)
    assert rule_at(data, addr + 4) == UnwindRule(CFA_FP, 16, fp_offset=-16, ra_offset=-8)

    addr, size = require_symbol(exe, "broken_fn")
    assert rules_in(data, addr, addr + size) == [FRAME_POINTER_RULE]

    addr, _ = require_symbol(exe, "def_cfa_sf_fn")
    assert rule_at(data, addr) == UnwindRule(CFA_SP, 8, ra_offset=-8)
    assert rule_at(data, addr + 1) == UnwindRule(CFA_SP, 16, ra_offset=-8)
    assert rule_at(data, addr + 2) == UnwindRule(CFA_SP, 8, ra_offset=-8)


# -------------------------------------------------------------------------- aarch64

ARM64_C = """
__attribute__((noinline)) int leaf(int x) { return x + 1; }
__attribute__((noinline)) int nonleaf(int x) { return leaf(x) * 2; }
int main(int argc, char **argv) { (void)argv; return nonleaf(argc); }
"""


@needs_aarch64_gcc
def test_aarch64_program(workdir: Path) -> None:
    src = write(workdir, "arm.c", ARM64_C)
    exe = build(workdir, "arm", {src: ["-O0"]}, cc="aarch64-linux-gnu-gcc")
    data = extract_unwind_data(exe)
    assert data.machine == "arm64"
    assert_well_formed(data)
    addr, size = require_symbol(exe, "nonleaf")
    stp = disassemble(exe, addr, size, arm64=True)[0]
    assert stp.mnemonic == "stp" and stp.op_str.startswith("x29, x30, [sp, #-")
    frame = -int(stp.op_str.split("#")[1].rstrip("]!"), 0)
    assert rule_at(data, addr) == UnwindRule(CFA_SP, 0), "RA still in x30 at entry"
    after = rule_at(data, addr + 4)
    assert after.cfa_op == CFA_SP and after.cfa_param == frame
    assert after.ra_offset == -frame + 8 and after.fp_offset == -frame  # stp x29, x30 at sp
    start, start_size = require_symbol(exe, "_start")
    assert UnwindRule(CFA_STOP) in rules_in(data, start, start + start_size)
    if READELF:
        check_against_readelf(exe, data, "arm64")


@needs_readelf
@pytest.mark.slow
def test_aarch64_libc_matches_readelf() -> None:
    if not LIBC_ARM64.exists():
        pytest.skip(f"{LIBC_ARM64} not present (package libc6-arm64-cross)")
    data = extract_unwind_data(LIBC_ARM64)
    assert data.machine == "arm64" and data.fde_count > 1000 and data.fde_errors == 0
    assert_well_formed(data)
    assert check_against_readelf(LIBC_ARM64, data, "arm64") > 5000
    stops = [a for a, r in data.deltas if r.cfa_op == CFA_STOP]
    assert 0 < len(stops) < 10, "only thread/process entry points are outermost"


# ------------------------------------------------------------------ odd inputs, errors


def test_not_elf(tmp_path: Path) -> None:
    bogus = tmp_path / "bogus"
    bogus.write_bytes(b"#!/bin/sh\necho hi\n")
    with pytest.raises(UnwindDataError, match="not a valid ELF"):
        extract_unwind_data(bogus)
    with pytest.raises(UnwindDataError, match="cannot read"):
        extract_unwind_data(tmp_path / "missing")


def test_truncated_elf(tmp_path: Path) -> None:
    if not LIBC.exists():
        pytest.skip(f"{LIBC} not present")
    short = tmp_path / "short.so"
    short.write_bytes(LIBC.read_bytes()[:200])
    with pytest.raises(UnwindDataError):
        extract_unwind_data(short)


def test_unsupported_machine(frame_prog: Path, tmp_path: Path) -> None:
    patched = bytearray(frame_prog.read_bytes())
    patched[18:20] = (243).to_bytes(2, "little")  # e_machine = EM_RISCV
    riscv = tmp_path / "riscv"
    riscv.write_bytes(bytes(patched))
    with pytest.raises(UnwindDataError, match="unsupported machine"):
        extract_unwind_data(riscv)


@needs_gcc
def test_object_file_rejected(workdir: Path) -> None:
    src = write(workdir, "obj.c", "int f(int x){return x;}\n")
    obj = workdir / "obj.o"
    subprocess.run(["gcc", "-c", "-o", str(obj), src], check=True)
    with pytest.raises(UnwindDataError, match="relocatable"):
        extract_unwind_data(obj)


@needs_gcc
def test_module_without_cfi(workdir: Path) -> None:
    src = write(workdir, "bare.c", "void _start(void){for(;;){}}\n")
    exe = build(
        workdir,
        "bare",
        {src: ["-O0", "-fno-asynchronous-unwind-tables", "-fno-unwind-tables"]},
        "-nostdlib",
        "-static",
    )
    data = extract_unwind_data(exe)
    assert data.sources == [] and data.fde_count == 0
    # No CFI at all: every rule is synthesized from the instructions.
    start, _ = require_symbol(exe, "_start")
    assert [lo for lo, _ in data.synthesized] == [start]
    assert rule_at(data, start) == UnwindRule(CFA_SP, 8, ra_offset=-8)


def test_coverage_first_claim_wins() -> None:
    cov = _Coverage()
    assert cov.claim(100, 200) == [(100, 200)]
    assert cov.claim(300, 400) == [(300, 400)]
    assert cov.claim(50, 450) == [(50, 100), (200, 300), (400, 450)]
    assert cov.claim(10, 20) == [(10, 20)]
    assert cov.claim(0, 500) == [(0, 10), (20, 50), (450, 500)]
    assert cov.claim(120, 130) == []


# ------------------------------------------------------------------------------ cache


def cache_files(cache_dir: Path) -> list[str]:
    return sorted(p.name for p in (cache_dir / "unwind").iterdir())


def test_cache_roundtrip_and_atomic_write(
    frame_prog: Path, frame_data: ModuleUnwindData, tmp_path: Path
) -> None:
    first = load_unwind_data(frame_prog, "prog-1", tmp_path)
    assert first == frame_data
    assert cache_files(tmp_path) == [f"prog-1.v{FORMAT_VERSION}.bin"]  # no temp files left
    assert load_unwind_data(frame_prog, "prog-1", tmp_path) == frame_data


@pytest.mark.parametrize("where", ["truncate", "header", "meta", "rules", "vaddrs", "crc", "empty"])
def test_corrupt_cache_is_rebuilt(
    frame_prog: Path, frame_data: ModuleUnwindData, tmp_path: Path, where: str
) -> None:
    load_unwind_data(frame_prog, "prog", tmp_path)
    cache_file = tmp_path / "unwind" / f"prog.v{FORMAT_VERSION}.bin"
    good = cache_file.read_bytes()
    n_rules = len({r for _, r in frame_data.deltas})
    meta_len = len("prog\n.eh_frame")
    header = 32
    position = {
        "header": 20,  # inside the FDE/delta counts
        "meta": header + 1,
        "rules": header + meta_len + 4,
        "vaddrs": header + meta_len + 20 * n_rules + 2,
        "crc": len(good) - 1,
    }
    if where == "truncate":
        bad = good[: len(good) // 2]
    elif where == "empty":
        bad = b""
    else:
        flipped = bytearray(good)
        flipped[position[where]] ^= 0x40
        bad = bytes(flipped)
    cache_file.write_bytes(bad)
    assert load_unwind_data(frame_prog, "prog", tmp_path) == frame_data
    assert cache_file.read_bytes() == good, "the invalid file must be replaced"
    assert cache_files(tmp_path) == [cache_file.name]


def test_cache_content_id_is_checked(
    frame_prog: Path, frame_data: ModuleUnwindData, workdir: Path, tmp_path: Path
) -> None:
    """A cache file copied under another id must not be served for that id."""
    src = write(workdir, "other.c", OMIT_C)
    other = build(workdir, "other", {src: ["-O2"]})
    load_unwind_data(frame_prog, "aaa", tmp_path)
    unwind = tmp_path / "unwind"
    shutil.copy(unwind / f"aaa.v{FORMAT_VERSION}.bin", unwind / f"bbb.v{FORMAT_VERSION}.bin")
    data = load_unwind_data(other, "bbb", tmp_path)
    assert data == extract_unwind_data(other) != frame_data


def test_bad_content_id(frame_prog: Path, tmp_path: Path) -> None:
    for bad in ("../x", "a/b", "", ".hidden"):
        with pytest.raises(ValueError):
            load_unwind_data(frame_prog, bad, tmp_path)


def _load_in_worker(args: tuple[str, str, str]) -> ModuleUnwindData:
    return load_unwind_data(*args)


def test_parallel_writers(frame_prog: Path, frame_data: ModuleUnwindData, tmp_path: Path) -> None:
    """Processes racing to fill the same cache entry all get correct data and leave
    exactly one complete file behind."""
    args = (str(frame_prog), "race", str(tmp_path))
    with ProcessPoolExecutor(4, mp_context=get_context("fork")) as pool:
        results = list(pool.map(_load_in_worker, [args] * 8))
    assert all(r == frame_data for r in results)
    assert cache_files(tmp_path) == [f"race.v{FORMAT_VERSION}.bin"]
    assert load_unwind_data(*args) == frame_data


def test_unwritable_cache_dir_still_returns_data(
    frame_prog: Path, frame_data: ModuleUnwindData, tmp_path: Path
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    assert load_unwind_data(frame_prog, "x", blocker) == frame_data


# ------------------------------------------------------------ the two decoders agree


def _both(path: Path) -> tuple[ModuleUnwindData | None, ModuleUnwindData]:
    from harness.unwind_data import eh_frame
    from harness.unwind_data.cfi import extract_unwind_data as with_pyelftools

    return eh_frame.extract(path), with_pyelftools(path)


def _same(fast: ModuleUnwindData | None, slow: ModuleUnwindData) -> None:
    assert fast is not None, "the direct decoder fell back"
    assert (fast.machine, fast.fde_count, fast.fde_errors, fast.sources) == (
        slow.machine, slow.fde_count, slow.fde_errors, slow.sources)
    assert fast.fde_ranges == slow.fde_ranges
    assert fast.deltas == slow.deltas


@pytest.mark.slow
@pytest.mark.parametrize("path", [LIBC, LIBC_ARM64,
                                  Path("/lib64/ld-linux-x86-64.so.2"),
                                  Path("/usr/lib/x86_64-linux-gnu/libstdc++.so.6")],
                         ids=lambda p: p.name)
def test_direct_decoder_equals_pyelftools(path: Path) -> None:
    """eh_frame.py is what runs; cfi.py (pyelftools) is the reference it must equal,
    delta for delta, FDE for FDE, error for error."""
    if not path.exists():
        pytest.skip(f"{path} not present")
    _same(*_both(path))


@needs_gcc
def test_direct_decoder_equals_pyelftools_on_built_programs(workdir: Path) -> None:
    """.debug_frame, hand-written CFI and a frame-pointer program, both decoders."""
    main = write(workdir, "m.c", "int dbg(int);int main(int c,char**v){(void)v;return dbg(c);}\n")
    dbg = write(workdir, "d.c", FRAME_C.replace("work", "dbg").split("int main")[0])
    exe = build(workdir, "both", {main: ["-O2"], dbg: ["-O0", "-g",
                                                      "-fno-asynchronous-unwind-tables"]})
    _same(*_both(exe))


@needs_gcc
def test_compressed_debug_frame_read_by_both_decoders(workdir: Path) -> None:
    """SHF_COMPRESSED (zlib) .debug_frame, as Go writes its DWARF: the direct decoder
    inflates it and agrees with pyelftools and with the uncompressed file."""
    objcopy = shutil.which("objcopy")
    if objcopy is None:
        pytest.skip("objcopy is not installed (binutils)")
    main = write(workdir, "z.c", FRAME_C)
    exe = build(workdir, "zdebug", {main: ["-O0", "-g", "-fno-asynchronous-unwind-tables"]})
    packed = workdir / "zdebug.z"
    subprocess.run([objcopy, "--compress-debug-sections=zlib", str(exe), str(packed)],
                   check=True)
    fast, slow = _both(packed)
    assert fast is not None
    _same(fast, slow)
    assert ".debug_frame" in slow.sources and slow.fde_count > 0
    assert slow.deltas == _both(exe)[1].deltas
    assert extract_unwind_data(packed).deltas == extract_unwind_data(exe).deltas


@needs_gcc
def test_realigned_stack_cfa_expression(workdir: Path) -> None:
    """GCC's DRAP frame: CFA = *(rbp - 8), the caller's rbp at rbp + 0 (not relative
    to the CFA), read by both decoders alike."""
    from harness.unwind_data import CFA_DEREF_FP, FP_AT_FP

    source = (Path(__file__).resolve().parent.parent / "testsources" / "realign.c").read_text()
    src = write(workdir, "realign.c", source)
    exe = build(workdir, "realign", {src: ["-O2", "-mincoming-stack-boundary=3"]})
    fast, slow = _both(exe)
    _same(fast, slow)
    addr, size = require_symbol(exe, "main")
    rules = rules_in(slow, addr, addr + size)
    assert UnwindRule(CFA_DEREF_FP, -8, fp_offset=0, ra_offset=-8, aux=FP_AT_FP) in rules


def test_vfork_keeps_the_return_address_in_rdi(libc: Loaded) -> None:
    """glibc's __vfork pops its return address into rdi across the system call
    (DW_CFA_register rip, rdi): the rule says "in the link register", which on
    x86_64 is rdi for the top frame (bpf_src/arch.h state_from_regs)."""
    addr, size = require_symbol(LIBC, "__vfork")
    rules = rules_in(libc.data, addr, addr + size)
    assert UnwindRule(CFA_SP, 0, ra_offset=0) in rules
    assert CFA_INVALID not in {r.cfa_op for r in rules}
