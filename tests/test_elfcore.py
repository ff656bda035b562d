"""Tests for harness.core.elfcore.

Most tests use real cores made on the fly: a tiny C program that publishes the addresses of
a known byte pattern (a global) and a known marker (a local in a live frame), dumped by
gdb's gcore and by the kernel itself. What the program printed, /proc, and the executable's
own ELF header are the independent truth the parsed core is checked against. Synthetic
cores built with struct cover arm64 (not producible on this host) and exact edge cases.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import struct
import subprocess
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

try:
    import harness  # noqa: F401
except ImportError:  # plain `pytest` does not put the project root on sys.path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness.core.elfcore import (  # noqa: E402
    AMD64,
    ARM64,
    CoreFile,
    FileMapping,
    ProcessInfo,
    Segment,
    SigInfo,
)
from harness.errors import CoreError  # noqa: E402

# ---------------------------------------------------------------------------- real cores

PROG_SRC = r"""
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

unsigned char pattern[64];
static pthread_barrier_t barrier;

static void *worker(void *arg) {
    (void)arg;
    pthread_barrier_wait(&barrier);
    for (;;) pause();
    return NULL;
}

/* The marker lives in this frame while the thread sleeps in pause(). */
__attribute__((noinline)) static void hold(void) {
    volatile uint64_t marker = 0x1122334455667788ULL;
    printf("%d %p %p\n", (int)getpid(), (void *)pattern, (void *)&marker);
    fflush(stdout);
    for (;;) pause();
}

int main(int argc, char **argv) {
    int nthreads = argc > 1 ? atoi(argv[1]) : 1;
    for (int i = 0; i < 64; i++) pattern[i] = (unsigned char)(i * 7 + 3);
    pthread_barrier_init(&barrier, NULL, (unsigned)nthreads);
    for (int i = 1; i < nthreads; i++) {
        pthread_t t;
        pthread_create(&t, NULL, worker, NULL);
    }
    pthread_barrier_wait(&barrier);  /* all threads exist before we report */
    hold();
    return 0;
}
"""

PATTERN = bytes((i * 7 + 3) & 0xFF for i in range(64))
MARKER = struct.pack("<Q", 0x1122334455667788)
SIGILL = 4
PF_X = 1
AT_PHDR, AT_PAGESZ, AT_ENTRY = 3, 6, 9


@dataclass
class LiveCore:
    """A core of the test program plus what the process told us before it was dumped."""

    path: Path
    prog: Path
    pid: int
    pattern_addr: int
    marker_addr: int
    tasks: set[int] = field(default_factory=set)  # /proc/<pid>/task just before the dump


@pytest.fixture(scope="module")
def prog(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Compile the test program once per module."""
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.skip("gcc not installed: cannot build the test program")
    d = tmp_path_factory.mktemp("prog")
    (d / "prog.c").write_text(PROG_SRC)
    subprocess.run(
        [gcc, "-O0", "-g", "-pthread", "-o", str(d / "prog"), str(d / "prog.c")],
        check=True,
        capture_output=True,
    )
    return d / "prog"


def _start(argv: Sequence[str], cwd: Path) -> tuple[subprocess.Popen[str], int, int, int]:
    """Start the program; return (process, pid, &pattern, &marker) from its first line."""
    proc = subprocess.Popen(argv, cwd=cwd, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline().split()
    if len(line) != 3:
        proc.kill()
        proc.wait()
        pytest.fail(f"test program printed {line!r}, expected 'pid pattern marker'")
    return proc, int(line[0]), int(line[1], 16), int(line[2], 16)


def _gcore(prog: Path, nthreads: int, d: Path) -> LiveCore:
    gcore = shutil.which("gcore")
    if gcore is None:
        pytest.skip("gcore (gdb) not installed: cannot dump a live process")
    proc, pid, pattern, marker = _start([str(prog), str(nthreads)], d)
    try:
        tasks = {int(t) for t in os.listdir(f"/proc/{pid}/task")}
        r = subprocess.run(
            [gcore, "-o", str(d / "core"), str(pid)], capture_output=True, text=True, timeout=60
        )
    finally:
        proc.kill()
        proc.wait()
    core = d / f"core.{pid}"
    if r.returncode != 0 or not core.exists():
        pytest.skip(f"gcore could not dump pid {pid} (rc={r.returncode}): {r.stderr.strip()}")
    return LiveCore(core, prog, pid, pattern, marker, tasks)


@pytest.fixture(scope="module")
def gcore_single(prog: Path, tmp_path_factory: pytest.TempPathFactory) -> LiveCore:
    return _gcore(prog, 1, tmp_path_factory.mktemp("gcore1"))


@pytest.fixture(scope="module")
def gcore_threads(prog: Path, tmp_path_factory: pytest.TempPathFactory) -> LiveCore:
    return _gcore(prog, 3, tmp_path_factory.mktemp("gcore3"))


@pytest.fixture(scope="module")
def kernel_core(prog: Path, tmp_path_factory: pytest.TempPathFactory) -> LiveCore:
    """Let the kernel write the core: SIGILL with RLIMIT_CORE unlimited, in a 3-thread run."""
    pattern_file = Path("/proc/sys/kernel/core_pattern")
    core_pattern = pattern_file.read_text().strip() if pattern_file.exists() else ""
    if core_pattern.startswith("|"):
        pytest.skip(f"core_pattern pipes cores to a helper ({core_pattern!r}), not to a file")
    d = tmp_path_factory.mktemp("kcore")
    shutil.copy(prog, d / "prog")
    script = f"ulimit -c unlimited; cd {d}; exec ./prog 3"
    proc, pid, pattern, marker = _start(["bash", "-c", script], d)
    tasks = {int(t) for t in os.listdir(f"/proc/{pid}/task")}
    os.kill(pid, signal.SIGILL)
    proc.wait(timeout=60)
    cores = [p for p in (d / "core", d / f"core.{pid}") if p.exists()]
    if not cores:
        pytest.skip(
            f"kernel wrote no core into {d} (core_pattern={core_pattern!r}, rc={proc.returncode})"
        )
    return LiveCore(cores[0], d / "prog", pid, pattern, marker, tasks)


def _elf_entry_and_phoff(path: Path) -> tuple[int, int]:
    with open(path, "rb") as f:
        hdr = f.read(64)
    e_entry, e_phoff = struct.unpack_from("<QQ", hdr, 24)
    return e_entry, e_phoff


def _check_common(core: CoreFile, live: LiveCore) -> None:
    """Facts every core of the test program must show, whoever wrote it."""
    assert core.machine == AMD64
    assert core.read(live.pattern_addr, len(PATTERN)) == PATTERN
    assert core.read(live.marker_addr, 8) == MARKER
    assert core.process is not None
    assert core.process.pid == live.pid
    assert core.process.fname == "prog"
    assert core.page_size == os.sysconf("SC_PAGE_SIZE")

    # The executable's mappings: the global pattern lies in one, offsets are page-aligned.
    prog = os.path.realpath(live.prog)
    exe_maps = [m for m in core.mappings if m.path == prog]
    assert exe_maps, f"{prog} not among {[m.path for m in core.mappings]}"
    assert all(m.file_offset % core.page_size == 0 for m in exe_maps)
    assert any(m.start <= live.pattern_addr < m.end for m in exe_maps)

    # AT_ENTRY/AT_PHDR agree with the executable's own header plus the PIE load bias.
    bias = min(m.start for m in exe_maps if m.file_offset == 0)
    e_entry, e_phoff = _elf_entry_and_phoff(live.prog)
    assert core.auxv[AT_ENTRY] == bias + e_entry
    assert core.auxv[AT_PHDR] == bias + e_phoff
    assert core.auxv[AT_PAGESZ] == core.page_size

    assert {t.lwp for t in core.threads} == live.tasks
    for t in core.threads:
        assert t.regs["rip"] != 0 and t.regs["rsp"] != 0
        assert core.covers(t.regs["rsp"]) and core.segment_at(t.regs["rsp"]) is not None
        assert t.tls == t.regs["fs_base"] != 0
        # Every thread sleeps in pause(), which is libc code.
        owner = [m for m in core.mappings if m.start <= t.regs["rip"] < m.end]
        assert owner and "libc" in os.path.basename(owner[0].path)
    assert core.segments == sorted(core.segments, key=lambda s: s.vaddr)


def test_gcore_single_thread(gcore_single: LiveCore) -> None:
    with CoreFile(gcore_single.path) as core:
        _check_common(core, gcore_single)
        (thread,) = core.threads
        assert thread.lwp == gcore_single.pid
        # The marker is in hold()'s frame, which is above (older than) pause()'s.
        assert thread.regs["rsp"] < gcore_single.marker_addr < thread.regs["rsp"] + 4096
        assert thread.pac_mask is None


def test_gcore_three_threads(gcore_threads: LiveCore) -> None:
    with CoreFile(gcore_threads.path) as core:
        _check_common(core, gcore_threads)
        lwps = [t.lwp for t in core.threads]
        assert len(lwps) == 3 and len(set(lwps)) == 3
        assert len({t.tls for t in core.threads}) == 3  # each thread has its own TLS block
        assert len({t.regs["rsp"] for t in core.threads}) == 3


def test_kernel_core(kernel_core: LiveCore) -> None:
    with CoreFile(kernel_core.path) as core:
        _check_common(core, kernel_core)
        assert core.siginfo is not None
        assert core.siginfo.signo == SIGILL
        assert core.siginfo.code <= 0  # sent with kill(), so si_addr is meaningless
        assert core.siginfo.addr is None
        assert core.threads[0].signal == SIGILL
        assert len(core.threads) == 3
        # The kernel turns argv's NULs into spaces; the trailing one is dropped.
        assert core.process is not None and core.process.psargs == "./prog 3"


def test_kernel_core_partial_segment(kernel_core: LiveCore) -> None:
    """The kernel dumps only the ELF-header page of file text: bytes past filesz are absent."""
    with CoreFile(kernel_core.path) as core:
        partial = [s for s in core.segments if 0 < s.filesz < s.memsz]
        if not partial:
            pytest.skip("kernel core has no partially dumped segment (coredump_filter?)")
        seg = partial[0]
        end = seg.vaddr + seg.filesz
        raw = kernel_core.path.read_bytes()[seg.offset + seg.filesz - 8 : seg.offset + seg.filesz]
        assert core.read(end - 8, 8) == raw
        assert core.read(seg.vaddr, 4) == b"\x7fELF"  # the dumped page is the ELF header
        assert core.read(end - 4, 8) is None
        assert core.read(end, 1) is None
        assert core.covers(end - 1) and not core.covers(end)
        assert core.segment_at(end) == seg
        assert core.segment_at(seg.vaddr + seg.memsz) != seg


# -------------------------------------------------------------------------- bad input


def _patched(src: Path, dst: Path, offset: int, value: bytes) -> Path:
    data = bytearray(src.read_bytes())
    data[offset : offset + len(value)] = value
    dst.write_bytes(bytes(data))
    return dst


def _raises(path: Path, *fragments: str) -> str:
    with pytest.raises(CoreError) as exc:
        CoreFile(path)
    msg = str(exc.value)
    assert str(path) in msg
    for fragment in fragments:
        assert fragment in msg, msg
    return msg


def test_not_elf(tmp_path: Path) -> None:
    p = tmp_path / "text"
    p.write_text("hello, I am not a core dump\n")
    _raises(p, "not an ELF file")


def test_elf_executable(tmp_path: Path) -> None:
    true = Path(shutil.which("true") or "/bin/true")
    _raises(true, "not a core")
    # A fixed-address executable is named as such.
    p = tmp_path / "exec"
    p.write_bytes(_elf_header(e_type=2, machine=62, phoff=0, phnum=0))
    _raises(p, "is an ELF executable, not a core")


def test_truncated_real_core(gcore_single: LiveCore, tmp_path: Path) -> None:
    data = gcore_single.path.read_bytes()
    p = tmp_path / "half"
    p.write_bytes(data[: len(data) // 2])
    _raises(p, "truncated", str(len(data) // 2))


def test_empty_and_missing(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    _raises(empty, "empty")
    _raises(tmp_path / "nope", "no such file")
    _raises(tmp_path, "directory")


def test_patched_headers(gcore_single: LiveCore, tmp_path: Path) -> None:
    src = gcore_single.path
    _raises(_patched(src, tmp_path / "arm32", 18, struct.pack("<H", 40)), "unsupported machine 40")
    _raises(_patched(src, tmp_path / "class32", 4, b"\x01"), "ELFCLASS32")
    _raises(_patched(src, tmp_path / "be", 5, b"\x02"), "big-endian")
    _raises(_patched(src, tmp_path / "rel", 16, struct.pack("<H", 1)), "not a core")


# ------------------------------------------------------------------------ synthetic cores

# Offsets inside struct elf_prstatus (64-bit Linux), verified against the real cores above.
PRSTATUS_CURSIG, PRSTATUS_PID, PRSTATUS_REG = 12, 32, 112
NT_PRSTATUS, NT_PRPSINFO, NT_AUXV = 1, 3, 6
NT_FILE, NT_SIGINFO = 0x46494C45, 0x53494749
NT_ARM_TLS, NT_ARM_PAC_MASK, NT_GDB_TDESC = 0x401, 0x406, 0xFF000000


@dataclass
class Load:
    vaddr: int
    memsz: int
    data: bytes  # stored bytes (filesz = len(data))
    flags: int = 4
    gap: int = 0  # padding before the data in the file, so neighbours are not file-contiguous


def _elf_header(
    e_type: int = 4, machine: int = 183, phoff: int = 64, phnum: int = 0, shoff: int = 0
) -> bytes:
    ident = b"\x7fELF\x02\x01\x01" + bytes(9)
    return struct.pack(
        "<16sHHIQQQIHHHHHH", ident, e_type, machine, 1, 0, phoff, shoff, 0, 64, 56, phnum, 64, 0, 0
    )


def _pad4(b: bytes) -> bytes:
    return b + bytes(-len(b) % 4)


def _note(name: str, ntype: int, desc: bytes) -> bytes:
    raw = name.encode() + b"\0"
    return struct.pack("<III", len(raw), len(desc), ntype) + _pad4(raw) + _pad4(desc)


def _build_core(
    machine: int, notes: Sequence[bytes], loads: Sequence[Load], xnum: bool = False
) -> bytes:
    """ELF header, program headers (PT_NOTE first, PT_LOADs in the given order), data."""
    phnum = 1 + len(loads)
    note_blob = b"".join(notes)
    data_at = 64 + 56 * phnum
    phdrs = [struct.pack("<IIQQQQQQ", 4, 0, data_at, 0, 0, len(note_blob), 0, 4)]
    body = bytearray(note_blob)
    for ld in loads:
        body += bytes(ld.gap)
        off = data_at + len(body)
        body += ld.data
        phdrs.append(
            struct.pack("<IIQQQQQQ", 1, ld.flags, off, ld.vaddr, 0, len(ld.data), ld.memsz, 1)
        )
    shoff = 0
    if xnum:  # e_phnum = PN_XNUM; the real count goes in section header 0's sh_info
        shoff = data_at + len(body)
        body += struct.pack("<IIQQQQIIQQ", 0, 0, 0, 0, 0, 0, 0, phnum, 0, 0)
    hdr = _elf_header(machine=machine, phnum=0xFFFF if xnum else phnum, shoff=shoff)
    return hdr + b"".join(phdrs) + bytes(body)


def _prstatus(pid: int, cursig: int, regs: Sequence[int]) -> bytes:
    desc = bytearray(PRSTATUS_REG + 8 * len(regs) + 8)
    struct.pack_into("<h", desc, PRSTATUS_CURSIG, cursig)
    struct.pack_into("<i", desc, PRSTATUS_PID, pid)
    struct.pack_into(f"<{len(regs)}Q", desc, PRSTATUS_REG, *regs)
    return bytes(desc)


def _prpsinfo(pid: int, ppid: int, uid: int, gid: int, fname: bytes, psargs: bytes) -> bytes:
    fmt = "<bBBb4xQIIiiii16s80s"
    return struct.pack(fmt, 1, 0, 0, 0, 0, uid, gid, pid, ppid, pid, pid, fname, psargs)


def _siginfo(signo: int, code: int, addr: int) -> bytes:
    return struct.pack("<iii4xQ", signo, 0, code, addr) + bytes(104)


def _nt_file(page_size: int, entries: Sequence[tuple[int, int, int, str]]) -> bytes:
    table = b"".join(struct.pack("<QQQ", s, e, pg) for s, e, pg, _ in entries)
    names = b"".join(p.encode() + b"\0" for *_, p in entries)
    return struct.pack("<QQ", len(entries), page_size) + table + names


def _write(tmp_path: Path, data: bytes, name: str = "core") -> Path:
    p = tmp_path / name
    p.write_bytes(data)
    return p


ARM_REGS = [0x1000 + i for i in range(31)] + [0x7FFF0000, 0x400123, 0x60000000]


def _arm64_core() -> bytes:
    auxv = struct.pack("<8Q", AT_PAGESZ, 0x10000, AT_ENTRY, 0x400100, 0, 0, 99, 99)
    files = [(0x400000, 0x410000, 0, "/bin/crasher"), (0x7F0000, 0x800000, 3, "/lib/libc.so")]
    pac = struct.pack("<QQ", 0x00FF000000000000, 0x007F000000000000)  # data mask, insn mask
    notes = [
        _note("CORE", NT_PRSTATUS, _prstatus(4242, 11, ARM_REGS)),
        _note("CORE", NT_PRPSINFO, _prpsinfo(4242, 1, 1000, 100, b"crasher", b"./crasher -x")),
        _note("CORE", NT_SIGINFO, _siginfo(11, 1, 0xDEADBEEF)),
        _note("CORE", NT_AUXV, auxv),  # AT_NULL after two entries; trailing pair ignored
        _note("CORE", NT_FILE, _nt_file(0x10000, files)),
        _note("LINUX", NT_ARM_TLS, struct.pack("<QQ", 0xFFFF8000DEAD0000, 0)),
        _note("LINUX", NT_ARM_PAC_MASK, pac),
        _note("GDB", NT_GDB_TDESC, b"<target>aarch64</target>"),
        _note("LINUX", 0x999, b"unknown note, ignored"),
        _note("CORE", NT_PRSTATUS, _prstatus(4243, 0, [7] * 34)),
        _note("CORE", NT_SIGINFO, _siginfo(5, 1, 0x1234)),  # gdb-style per-thread copy
    ]
    return _build_core(183, notes, [Load(0x400000, 0x10000, b"\x01\x02\x03\x04\x05", 5)])


def test_synthetic_arm64(tmp_path: Path) -> None:
    with CoreFile(_write(tmp_path, _arm64_core())) as core:
        assert core.machine == ARM64
        first, second = core.threads
        assert first.lwp == 4242 and first.signal == 11
        assert first.regs == {
            **{f"x{i}": 0x1000 + i for i in range(31)},
            "sp": 0x7FFF0000,
            "pc": 0x400123,
            "pstate": 0x60000000,
        }
        assert first.tls == 0xFFFF8000DEAD0000
        assert first.pac_mask == 0x007F000000000000  # insn mask, not the data mask
        # The second thread has no TLS/PAC notes of its own: nothing leaks over.
        assert (second.lwp, second.signal, second.tls, second.pac_mask) == (4243, 0, None, None)
        assert second.regs["pc"] == 7 and len(second.regs) == 34
        assert core.process == ProcessInfo(4242, 1, 1000, 100, "crasher", "./crasher -x", 1)
        assert core.siginfo == SigInfo(signo=11, errno=0, code=1, addr=0xDEADBEEF)
        assert core.auxv == {AT_PAGESZ: 0x10000, AT_ENTRY: 0x400100}  # stops at AT_NULL
        assert core.page_size == 0x10000
        assert core.mappings == [
            FileMapping(0x400000, 0x410000, 0, "/bin/crasher"),
            FileMapping(0x7F0000, 0x800000, 3 * 0x10000, "/lib/libc.so"),
        ]
        assert core.segments == [Segment(0x400000, 0x10000, core.segments[0].offset, 5, 5)]
        assert core.read(0x400001, 3) == b"\x02\x03\x04"
        assert core.read(0x400003, 3) is None  # runs past filesz into the undumped part
        assert core.covers(0x400004) and not core.covers(0x400005)


def test_page_size_prefers_auxv_over_gdb_nt_file(tmp_path: Path) -> None:
    """gcore writes NT_FILE with page_size 1 and byte offsets; AT_PAGESZ gives the real size."""
    notes = [
        _note("CORE", NT_PRSTATUS, _prstatus(1, 0, [0] * 27)),
        _note("CORE", NT_AUXV, struct.pack("<4Q", AT_PAGESZ, 16384, 0, 0)),
        _note("CORE", NT_FILE, _nt_file(1, [(0x10000, 0x14000, 0x2000, "/lib/x.so")])),
    ]
    with CoreFile(_write(tmp_path, _build_core(62, notes, []))) as core:
        assert core.page_size == 16384
        assert core.mappings == [FileMapping(0x10000, 0x14000, 0x2000, "/lib/x.so")]


def test_siginfo_addr_only_for_fault_signals(tmp_path: Path) -> None:
    # (signo, si_code, the u64 stored at offset 16, expected addr)
    cases = [
        (11, 2, 0x1000, 0x1000),  # SIGSEGV/SEGV_ACCERR
        (7, 1, 0x2000, 0x2000),  # SIGBUS/BUS_ADRALN
        (15, 0, 0x3000, None),  # SIGTERM has no fault address
        (11, 0, 0x4000, None),  # kill -SEGV: SI_USER, the union holds si_pid/si_uid
    ]
    for signo, code, stored, expected in cases:
        notes = [
            _note("CORE", NT_PRSTATUS, _prstatus(1, signo, [0] * 27)),
            _note("CORE", NT_SIGINFO, _siginfo(signo, code, stored)),
        ]
        with CoreFile(_write(tmp_path, _build_core(62, notes, []))) as core:
            assert core.siginfo == SigInfo(signo, 0, code, expected)
            assert core.threads[0].signal == signo


@pytest.fixture
def layout_core(tmp_path: Path) -> Path:
    """amd64 core: two adjacent stored segments (not file-contiguous), one partially stored,
    one not stored at all; program headers deliberately out of vaddr order."""
    loads = [
        Load(0x30000, 0x1000, b""),
        Load(0x10100, 0x100, bytes(range(0x80, 0x100)) * 2, gap=16),
        Load(0x20000, 0x1000, b"P" * 0x10),
        Load(0x10000, 0x100, bytes(range(0x80)) * 2, flags=5),
        Load(2**64 - 0x10, 0x10, b"T" * 0x10),  # ends exactly at the top of the address space
    ]
    notes = [_note("CORE", NT_PRSTATUS, _prstatus(7, 0, list(range(27))))]
    return _write(tmp_path, _build_core(62, notes, loads))


def test_synthetic_amd64_defaults(layout_core: Path) -> None:
    with CoreFile(layout_core) as core:
        (t,) = core.threads
        assert t.regs["r15"] == 0 and t.regs["rip"] == 16 and t.regs["gs"] == 26
        assert t.tls == t.regs["fs_base"] == 21 and t.pac_mask is None
        assert core.mappings == [] and core.auxv == {}
        assert core.process is None and core.siginfo is None
        assert core.page_size == 4096
        assert [s.vaddr for s in core.segments] == [0x10000, 0x10100, 0x20000, 0x30000, 2**64 - 16]
        assert core.segments[0].flags == 5


def test_read_semantics(layout_core: Path) -> None:
    with CoreFile(layout_core) as core:
        assert core.read(0x10000, 4) == bytes([0, 1, 2, 3])
        # Spans two adjacent stored segments whose bytes are not contiguous in the file.
        assert core.read(0x100FE, 4) == bytes([0x7E, 0x7F, 0x80, 0x81])
        assert core.read(0x10000, 0x200) == bytes(range(0x80)) * 2 + bytes(range(0x80, 0x100)) * 2
        assert core.read(0x101FC, 4) == bytes([0xFC, 0xFD, 0xFE, 0xFF])
        assert core.read(0x101FC, 5) is None  # runs off the end of the stored range
        assert core.read(0xFFFF, 2) is None  # starts before the first segment
        assert core.read(0x20008, 8) == b"P" * 8
        assert core.read(0x20008, 9) is None  # crosses filesz into [filesz, memsz)
        assert core.read(0x20010, 1) is None
        assert core.read(0x30000, 1) is None  # filesz == 0
        assert core.read(0x10000, 0) == b"" and core.read(0x30000, 0) == b""
        assert core.read(0x10000, -1) is None and core.read(-8, 8) is None
        assert core.read(2**64 - 8, 8) == b"T" * 8
        assert core.read(2**64 - 1, 2) is None and core.read(2**64, 1) is None
        assert core.read(2**64, 0) is None and core.read(-1, 0) is None
        assert core.read(0x10000, 2**70) is None


def test_covers_and_segment_at(layout_core: Path) -> None:
    with CoreFile(layout_core) as core:
        assert core.covers(0x10000) and core.covers(0x101FF) and not core.covers(0x10200)
        assert core.covers(0x2000F) and not core.covers(0x20010) and not core.covers(0x30000)
        assert not core.covers(0) and not core.covers(2**64)
        seg = core.segment_at(0x20FFF)
        assert seg is not None and (seg.vaddr, seg.filesz, seg.memsz) == (0x20000, 0x10, 0x1000)
        assert core.segment_at(0x21000) is None and core.segment_at(0xFFFF) is None
        assert core.segment_at(0x30000) is not None


def test_pn_xnum(tmp_path: Path) -> None:
    notes = [_note("CORE", NT_PRSTATUS, _prstatus(1, 0, [0] * 27))]
    data = _build_core(62, notes, [Load(0x1000, 8, b"ABCDEFGH")], xnum=True)
    with CoreFile(_write(tmp_path, data)) as core:
        assert core.read(0x1000, 8) == b"ABCDEFGH"


def test_synthetic_errors(tmp_path: Path) -> None:
    prs = _note("CORE", NT_PRSTATUS, _prstatus(1, 0, [0] * 27))
    good = _build_core(62, [prs], [Load(0x1000, 0x100, bytes(0x100))])
    _raises(_write(tmp_path, good[:-1], "load"), "truncated", str(len(good)), str(len(good) - 1))
    _raises(_write(tmp_path, good[:100], "phdrs"), "truncated", "program headers")
    note_cut = len(_elf_header()) + 2 * 56 + 20
    _raises(_write(tmp_path, good[:note_cut], "note"), "truncated", "PT_NOTE")
    bad_note = prs[:4] + struct.pack("<I", 10_000) + prs[8:]  # descsz beyond the segment
    _raises(_write(tmp_path, _build_core(62, [bad_note], []), "nsz"), "truncated note")
    short = _note("CORE", NT_PRSTATUS, bytes(100))
    _raises(_write(tmp_path, _build_core(62, [short], []), "short"), "NT_PRSTATUS", "too short")
    _raises(_write(tmp_path, _build_core(62, [], []), "nothreads"), "no NT_PRSTATUS")
    _raises(_write(tmp_path, b"\x7fELF\x02\x01", "tiny"), "truncated")
    big = _build_core(62, [prs], [Load(0x1000, 0x10, bytes(0x20))])
    _raises(_write(tmp_path, big, "fsz"), "p_filesz")
    files = _nt_file(4096, [(0, 4096, 0, "/a"), (4096, 8192, 0, "/b")])[:-3]
    bad_file_note = _build_core(62, [prs, _note("CORE", NT_FILE, files)], [])
    _raises(_write(tmp_path, bad_file_note, "nf"), "NT_FILE", "2 mappings")


def _mutations(data: bytes, seed: int, count: int) -> Iterator[bytes]:
    """Truncations at every header-ish length plus random byte corruptions."""
    for cut in range(0, 400, 7):
        yield data[:cut]
    rng = random.Random(seed)
    for _ in range(count):
        buf = bytearray(data)
        for _ in range(rng.randint(1, 4)):
            buf[rng.randrange(len(buf))] = rng.randrange(256)
        yield bytes(buf)


def test_corrupt_input_raises_only_core_error(tmp_path: Path) -> None:
    """Whatever the damage, parsing either succeeds or raises CoreError, never anything else."""
    p = tmp_path / "fuzz"
    failures = 0
    for data in _mutations(_arm64_core(), seed=1234, count=400):
        p.write_bytes(data)
        try:
            with CoreFile(p) as core:
                for seg in core.segments:
                    core.read(seg.vaddr, 8)
        except CoreError:
            failures += 1
    assert failures > 0  # the mutations did reach the error paths
