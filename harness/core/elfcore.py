"""Parser for Linux ELF core dumps (x86_64 and aarch64, ELFCLASS64 little-endian).

The harness replays a core through an unwinder that reads memory in small pieces many
thousands of times, so the design favours a cheap `read()`: the file is mmapped (cores are
often gigabytes; reading them whole would be wasteful) and the stored memory ranges are
kept in sorted lists searched with `bisect`.

Headers are the ELF records of harness/core/elf.py; notes are decoded with `struct`
against the 64-bit Linux layouts (see the offset constants below). Everything malformed
is reported as `CoreError` naming the file, so a bad core never surfaces as an
IndexError or struct.error deep inside the unwinder.
"""

from __future__ import annotations

import mmap
import os
import struct
from bisect import bisect_right
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import chain
from types import TracebackType
from typing import Self

from ..arch import AMD64, ARCHES, ARM64, arch_of_machine, supported_machines
from ..confine import open_regular
from ..errors import CoreError
from . import elf
from .elf import ET_CORE, ET_NAMES, PN_XNUM, PT_LOAD, PT_NOTE, Ehdr, Nhdr

NT_PRSTATUS = 1
NT_PRFPREG = 2  # FP/SIMD registers (fxsave area on x86_64, user_fpsimd_state on arm64)
NT_PRPSINFO = 3
NT_AUXV = 6
NT_FILE = 0x46494C45
NT_SIGINFO = 0x53494749
NT_ARM_TLS = 0x401
NT_ARM_PAC_MASK = 0x406
_NOTE_OWNERS = frozenset({"CORE", "LINUX"})  # anything else (e.g. gdb's "GDB") is ignored
# A skinny core's own note (core/skinny.py): the memory ranges it left out, which
# the full core held. Owner and type are ours; gdb ignores notes it does not know.
SKINNY_NOTE_OWNER = "COREDUMP-HARNESS"
NT_SKINNY_DROPPED = 1
MAX_DROPPED_RANGES = 1 << 20

# Aux vector keys (include/uapi/linux/auxvec.h)
AT_NULL = 0
AT_PHDR = 3
AT_PHNUM = 5
AT_PAGESZ = 6
AT_BASE = 7  # load address of the dynamic linker
AT_ENTRY = 9  # the executable's entry point
AT_EXECFN = 31  # address of the executable's file name (on the stack)
AT_SYSINFO_EHDR = 33  # the vDSO's ELF header
DEFAULT_PAGE_SIZE = 4096
_ADDR_LIMIT = 1 << 64  # addresses are u64; anything at or past this cannot be in the core

# Bounds on the counts a core controls, each far above real cores (the kernel's
# vm.max_map_count is 65530 mappings; a thread has about six notes) and far below
# what would take minutes or gigabytes to parse. A core over one is refused, naming it.
MAX_PROGRAM_HEADERS = 1 << 20
MAX_NOTES = 1 << 21
MAX_THREADS = 1 << 17
MAX_FILE_MAPPINGS = 1 << 20

# Signals whose siginfo carries a meaningful si_addr (same numbers on x86_64 and arm64).
_FAULT_SIGNALS = frozenset({4, 5, 7, 8, 11})  # SIGILL SIGTRAP SIGBUS SIGFPE SIGSEGV

_SHDR_INFO = struct.Struct("<I")  # sh_info of Elf64_Shdr
_U64 = struct.Struct("<Q")
_U64_PAIR = struct.Struct("<QQ")
_U64_TRIPLE = struct.Struct("<QQQ")

# struct elf_prstatus (64-bit Linux): pr_info is 3 ints (0..12), pr_cursig short at 12
# (+2 pad), pr_sigpend/pr_sighold u64 at 16/24, pr_pid/ppid/pgrp/sid ints at 32..48,
# four 16-byte timevals at 48..112, then pr_reg at 112, then int pr_fpvalid.
_PRSTATUS_CURSIG = struct.Struct("<h")
_PRSTATUS_CURSIG_OFFSET = 12
_PRSTATUS_PID = struct.Struct("<i")
_PRSTATUS_PID_OFFSET = 32
_PRSTATUS_REG_OFFSET = 112

# struct elf_prpsinfo (64-bit): state, sname, zomb, nice chars, 4 pad bytes, u64 pr_flag,
# u32 uid/gid, int pid/ppid/pgrp/sid, char fname[16], char psargs[80]; 136 bytes.
_PRPSINFO = struct.Struct("<bBBb4xQIIiiii16s80s")

# siginfo_t: si_signo, si_errno, si_code ints; union at 16 whose first u64 is si_addr.
_SIGINFO_HEAD = struct.Struct("<iii")
_SIGINFO_ADDR_OFFSET = 16


@dataclass(frozen=True)
class Segment:
    """One PT_LOAD. Only [vaddr, vaddr+filesz) is stored; the rest of memsz was not dumped."""

    vaddr: int
    memsz: int
    offset: int
    filesz: int
    flags: int  # p_flags: PF_R=4, PF_W=2, PF_X=1


@dataclass(frozen=True)
class FileMapping:
    """One NT_FILE entry: a file-backed mapping. file_offset is in bytes, not pages."""

    start: int
    end: int
    file_offset: int
    path: str


@dataclass
class ThreadState:
    """Registers and per-thread extras of one thread (one NT_PRSTATUS and its followers)."""

    lwp: int
    regs: dict[str, int]
    signal: int
    tls: int | None = None
    pac_mask: int | None = None
    fpregs: bytes | None = None  # raw NT_PRFPREG descriptor (absent in qemu-user cores)


@dataclass(frozen=True)
class ProcessInfo:
    """NT_PRPSINFO: identity of the dumped process."""

    pid: int
    ppid: int
    uid: int
    gid: int
    fname: str
    psargs: str
    state: int


@dataclass(frozen=True)
class SigInfo:
    """NT_SIGINFO: the signal that caused the dump.

    addr is si_addr, set only for kernel-raised fault signals (SIGSEGV, SIGBUS, SIGILL,
    SIGFPE, SIGTRAP with si_code > 0); otherwise None.
    """

    signo: int
    errno: int
    code: int
    addr: int | None


@dataclass(frozen=True)
class _Note:
    """Location of one note's descriptor inside the mapped file."""

    owner: str
    type: int
    offset: int
    size: int


def _align4(n: int) -> int:
    return (n + 3) & ~3


class CoreFile:
    """A parsed, memory-mapped ELF core. Use as a context manager or call close()."""

    path: str
    machine: str
    threads: list[ThreadState]
    mappings: list[FileMapping]
    auxv: dict[int, int]
    process: ProcessInfo | None
    siginfo: SigInfo | None
    segments: list[Segment]
    page_size: int

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        self.threads = []
        self.mappings = []
        self.auxv = {}
        self.process = None
        self.siginfo = None
        self.segments = []
        self.page_size = DEFAULT_PAGE_SIZE
        self._nt_file_unit = 0  # NT_FILE's page_size field; gdb writes 1 (offsets in bytes)
        # Skinny cores (core/skinny.py): what was left out, and the reads that wanted it.
        self.dropped: list[tuple[int, int]] = []
        self.dropped_reads: list[tuple[int, int]] = []
        # When a list, every read the core serves is noted here (recording a skinny core).
        self.read_log: list[tuple[int, int]] | None = None
        self._mm: mmap.mmap | None = self._open()
        self._size = len(self._mm)
        try:
            self._parse()
        except BaseException:
            self.close()
            raise

    # ----------------------------------------------------------------- lifecycle

    def _open(self) -> mmap.mmap:
        """Map the file read-only. The fd can be closed at once: mmap keeps its own.
        Anything but a regular file is refused first (a FIFO would block the open)."""
        fd = open_regular(self.path, "core", CoreError)
        try:
            if os.fstat(fd).st_size == 0:
                raise CoreError(f"{self.path}: empty file (0 bytes), not a core")
            return mmap.mmap(fd, 0, access=mmap.ACCESS_READ)
        except OSError as e:
            raise CoreError(f"{self.path}: cannot map file: {e.strerror or e}") from None
        except ValueError as e:
            raise CoreError(f"{self.path}: cannot map file: {e}") from None
        finally:
            os.close(fd)

    def release_pages(self) -> None:
        """Let the kernel drop the pages this mapping has touched (MADV_DONTNEED;
        later reads fault them in again), so that the page cache can say which
        pages another program reads (record/oracle_reads.py)."""
        self._mem().madvise(mmap.MADV_DONTNEED)

    def close(self) -> None:
        """Unmap the file. Idempotent; read() after close raises ValueError."""
        if self._mm is not None:
            self._mm.close()
            self._mm = None

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"CoreFile({self.path!r}, machine={self.machine!r}, "
            f"threads={len(self.threads)}, segments={len(self.segments)})"
        )

    # ------------------------------------------------------------------ parsing

    def _fail(self, problem: str) -> CoreError:
        return CoreError(f"{self.path}: {problem}")

    def _parse(self) -> None:
        phoff, phnum = self._parse_header()
        note_segments: list[tuple[int, int]] = []
        for index, ph in enumerate(self._program_headers(phoff, phnum)):
            if ph.type == PT_LOAD:
                self.segments.append(self._check_load(index, ph))
            elif ph.type == PT_NOTE:
                self._check_extent(ph.offset, ph.filesz,
                                   f"PT_NOTE segment (program header #{index})")
                note_segments.append((ph.offset, ph.filesz))
        self.segments.sort(key=lambda s: s.vaddr)
        # One stream over all PT_NOTEs, so per-thread notes still find their NT_PRSTATUS.
        self._apply_notes(chain.from_iterable(self._iter_notes(o, n) for o, n in note_segments))
        if not self.threads:
            raise self._fail("core has no NT_PRSTATUS note, so no thread registers")
        self.page_size = self._choose_page_size()
        self._build_index()

    def _parse_header(self) -> tuple[int, int]:
        """Validate the ELF header; return (e_phoff, number of program headers)."""
        mm = self._mem()
        problem = elf.ident_problem(mm[: elf.EHDR_SIZE])
        if problem:
            raise self._fail(problem)
        ehdr = Ehdr.parse(mm)
        if ehdr.type != ET_CORE:
            kind = ET_NAMES.get(ehdr.type, f"an ELF file of type {ehdr.type}")
            raise self._fail(f"is {kind}, not a core (e_type={ehdr.type}, ET_CORE is {ET_CORE})")
        arch = arch_of_machine(ehdr.machine)
        if arch is None:
            raise self._fail(f"unsupported machine {ehdr.machine} (supported: "
                             f"{supported_machines()})")
        self.machine = arch.name
        phnum = ehdr.phnum
        if phnum == PN_XNUM:
            phnum = self._extended_phnum(ehdr.shoff)
        if phnum > MAX_PROGRAM_HEADERS:
            raise self._fail(f"{phnum} program headers, more than the limit of "
                             f"{MAX_PROGRAM_HEADERS}")
        if phnum and ehdr.phentsize != elf.PHDR_SIZE:
            raise self._fail(f"unexpected e_phentsize {ehdr.phentsize} "
                             f"(expected {elf.PHDR_SIZE})")
        return ehdr.phoff, phnum

    def _extended_phnum(self, e_shoff: int) -> int:
        """More than 65534 segments: the kernel stores the count in section 0's sh_info."""
        field = e_shoff + elf.SHDR_INFO
        if e_shoff == 0 or field + _SHDR_INFO.size > self._size:
            raise self._fail(
                f"truncated: e_phnum is PN_XNUM but section header 0 (at {e_shoff}) "
                f"is beyond the file size {self._size}"
            )
        return int(_SHDR_INFO.unpack_from(self._mem(), field)[0])

    def _program_headers(self, phoff: int, phnum: int) -> Iterator[elf.Phdr]:
        end = phoff + phnum * elf.PHDR_SIZE
        if end > self._size:
            raise self._fail(
                f"truncated: {phnum} program headers need {end} bytes, file has {self._size}"
            )
        mm = self._mem()
        for i in range(phnum):
            yield elf.Phdr.parse(mm, phoff + i * elf.PHDR_SIZE)

    def _check_extent(self, offset: int, size: int, what: str) -> None:
        if offset + size > self._size:
            raise self._fail(
                f"truncated: {what} at file offset {offset:#x} needs {offset + size} bytes, "
                f"file has {self._size}"
            )

    def _check_load(self, index: int, ph: elf.Phdr) -> Segment:
        what = f"PT_LOAD (program header #{index}, vaddr {ph.vaddr:#x})"
        self._check_extent(ph.offset, ph.filesz, what)
        if ph.filesz > ph.memsz:
            raise self._fail(f"{what} has p_filesz {ph.filesz:#x} > p_memsz {ph.memsz:#x}")
        if ph.vaddr + ph.memsz > _ADDR_LIMIT:
            raise self._fail(f"{what} with p_memsz {ph.memsz:#x} wraps past the address space")
        return Segment(vaddr=ph.vaddr, memsz=ph.memsz, offset=ph.offset, filesz=ph.filesz,
                       flags=ph.flags)

    def _iter_notes(self, offset: int, size: int) -> Iterator[_Note]:
        """Walk one PT_NOTE segment. Name and desc are each padded to 4 bytes."""
        mm = self._mem()
        pos, end = offset, offset + size
        while end - pos >= elf.NHDR_SIZE:
            namesz, descsz, ntype = Nhdr.parse(mm, pos)
            name_at = pos + elf.NHDR_SIZE
            desc_at = name_at + _align4(namesz)
            if desc_at + descsz > end:
                raise self._fail(
                    f"truncated note at file offset {pos:#x}: type {ntype:#x} needs "
                    f"{desc_at + descsz - offset} bytes, PT_NOTE segment has {size}"
                )
            owner = mm[name_at : name_at + namesz].rstrip(b"\0").decode("ascii", "replace")
            yield _Note(owner, ntype, desc_at, descsz)
            pos = desc_at + _align4(descsz)

    def _apply_notes(self, notes: Iterable[_Note]) -> None:
        """Decode the notes we use. Per-thread notes attach to the latest NT_PRSTATUS."""
        current: ThreadState | None = None
        for count, note in enumerate(notes, 1):
            if count > MAX_NOTES:
                raise self._fail(f"more than {MAX_NOTES} notes (the limit)")
            if note.owner == SKINNY_NOTE_OWNER and note.type == NT_SKINNY_DROPPED:
                self.dropped = self._parse_dropped(note)
                continue
            if note.owner not in _NOTE_OWNERS:
                continue
            t = note.type
            if t == NT_PRSTATUS:
                if len(self.threads) == MAX_THREADS:
                    raise self._fail(f"more than {MAX_THREADS} threads (NT_PRSTATUS notes), "
                                     "the limit")
                current = self._parse_prstatus(note)
                self.threads.append(current)
            elif t == NT_PRPSINFO and self.process is None:
                self.process = self._parse_prpsinfo(note)
            elif t == NT_SIGINFO and self.siginfo is None:
                # gdb writes one per thread; the first belongs to the reporting thread.
                self.siginfo = self._parse_siginfo(note)
            elif t == NT_AUXV and not self.auxv:
                self.auxv = self._parse_auxv(note)
            elif t == NT_FILE and not self.mappings:
                self.mappings = self._parse_file_note(note)
            elif t == NT_PRFPREG and current is not None and current.fpregs is None:
                current.fpregs = bytes(self._mem()[note.offset : note.offset + note.size])
            elif current is not None and self.machine == ARM64:
                if t == NT_ARM_TLS:
                    current.tls = self._desc_u64(note, 0, "NT_ARM_TLS")
                elif t == NT_ARM_PAC_MASK:
                    current.pac_mask = self._desc_u64(note, 8, "NT_ARM_PAC_MASK")

    def _parse_dropped(self, note: _Note) -> list[tuple[int, int]]:
        """u64 count, then count (start, end) pairs, sorted and disjoint."""
        count = self._desc_u64(note, 0, "skinny-core")
        if count > MAX_DROPPED_RANGES:
            raise self._fail(f"skinny-core note lists {count} ranges (limit "
                             f"{MAX_DROPPED_RANGES})")
        self._need(note, 8 + 16 * count, "skinny-core")
        words = struct.unpack_from(f"<{2 * count}Q", self._mem(), note.offset + 8)
        ranges = list(zip(words[::2], words[1::2], strict=True))
        if any(end <= start for start, end in ranges) or ranges != sorted(ranges):
            raise self._fail("skinny-core note: ranges are not sorted, non-empty intervals")
        return ranges

    def was_dropped(self, addr: int, size: int) -> bool:
        """Whether [addr, addr+size) meets memory the full core held and this skinny
        core left out; such a read is noted in dropped_reads."""
        i = bisect_right(self.dropped, (addr, _ADDR_LIMIT)) - 1
        hit = (i >= 0 and addr < self.dropped[i][1]) or (
            i + 1 < len(self.dropped) and self.dropped[i + 1][0] < addr + max(size, 1))
        if hit:
            self.dropped_reads.append((addr, size))
        return hit

    def _need(self, note: _Note, size: int, what: str) -> None:
        if note.size < size:
            raise self._fail(
                f"{what} note at file offset {note.offset:#x} is too short: "
                f"{note.size} bytes, need {size}"
            )

    def _desc_u64(self, note: _Note, at: int, what: str) -> int:
        self._need(note, at + 8, what)
        return int(_U64.unpack_from(self._mem(), note.offset + at)[0])

    def _parse_prstatus(self, note: _Note) -> ThreadState:
        names = ARCHES[self.machine].core_regs
        self._need(note, _PRSTATUS_REG_OFFSET + 8 * len(names), "NT_PRSTATUS")
        mm, base = self._mem(), note.offset
        values = struct.unpack_from(f"<{len(names)}Q", mm, base + _PRSTATUS_REG_OFFSET)
        regs = dict(zip(names, values, strict=True))
        (signal,) = _PRSTATUS_CURSIG.unpack_from(mm, base + _PRSTATUS_CURSIG_OFFSET)
        (lwp,) = _PRSTATUS_PID.unpack_from(mm, base + _PRSTATUS_PID_OFFSET)
        tls = regs["fs_base"] if self.machine == AMD64 else None
        return ThreadState(lwp=lwp, regs=regs, signal=signal, tls=tls)

    def _parse_prpsinfo(self, note: _Note) -> ProcessInfo:
        self._need(note, _PRPSINFO.size, "NT_PRPSINFO")
        state, _, _, _, _, uid, gid, pid, ppid, _, _, fname, psargs = _PRPSINFO.unpack_from(
            self._mem(), note.offset
        )
        return ProcessInfo(
            pid=pid,
            ppid=ppid,
            uid=uid,
            gid=gid,
            fname=elf.cstring(fname),
            # The kernel turns argv's NULs into spaces, leaving a trailing one.
            psargs=elf.cstring(psargs).rstrip(" "),
            state=state,
        )

    def _parse_siginfo(self, note: _Note) -> SigInfo:
        self._need(note, _SIGINFO_ADDR_OFFSET + 8, "NT_SIGINFO")
        signo, errno, code = _SIGINFO_HEAD.unpack_from(self._mem(), note.offset)
        addr = None
        # si_code <= 0 means sent by kill()/tgkill(): the union then holds si_pid, not si_addr.
        if signo in _FAULT_SIGNALS and code > 0:
            addr = self._desc_u64(note, _SIGINFO_ADDR_OFFSET, "NT_SIGINFO")
        return SigInfo(signo=signo, errno=errno, code=code, addr=addr)

    def _parse_auxv(self, note: _Note) -> dict[int, int]:
        auxv: dict[int, int] = {}
        mm = self._mem()
        for i in range(note.size // _U64_PAIR.size):
            key, value = _U64_PAIR.unpack_from(mm, note.offset + i * _U64_PAIR.size)
            if key == AT_NULL:
                break
            auxv[key] = value
        return auxv

    def _parse_file_note(self, note: _Note) -> list[FileMapping]:
        """NT_FILE: count, page_size, count*(start, end, page offset), count NUL-ended paths."""
        self._need(note, _U64_PAIR.size, "NT_FILE")
        mm = self._mem()
        count, page_size = _U64_PAIR.unpack_from(mm, note.offset)
        if count > MAX_FILE_MAPPINGS:
            raise self._fail(f"NT_FILE lists {count} mappings, more than the limit of "
                             f"{MAX_FILE_MAPPINGS}")
        table_end = _U64_PAIR.size + count * _U64_TRIPLE.size
        self._need(note, table_end, "NT_FILE")
        if page_size <= 0 or page_size & (page_size - 1):
            raise self._fail(f"NT_FILE page size {page_size} is not a power of two")
        self._nt_file_unit = page_size
        strings = mm[note.offset + table_end : note.offset + note.size].split(b"\0")
        if len(strings) < count + 1:  # every path is NUL-terminated
            raise self._fail(f"NT_FILE lists {count} mappings but has {len(strings) - 1} paths")
        mappings = []
        for i in range(count):
            start, end, page = _U64_TRIPLE.unpack_from(
                mm, note.offset + _U64_PAIR.size + i * _U64_TRIPLE.size
            )
            path = strings[i].decode("utf-8", "surrogateescape")
            mappings.append(FileMapping(start, end, page * page_size, path))
        return mappings

    def _choose_page_size(self) -> int:
        """AT_PAGESZ is authoritative; NT_FILE's unit is only a page size when > 1.

        The kernel writes the real page size into NT_FILE, but gdb's gcore writes 1 there
        (its offsets are already bytes), so NT_FILE alone would report a 1-byte page.
        """
        for candidate in (self.auxv.get(AT_PAGESZ, 0), self._nt_file_unit):
            if candidate > 1 and candidate & (candidate - 1) == 0:
                return candidate
        return DEFAULT_PAGE_SIZE

    def _build_index(self) -> None:
        """Sorted parallel lists for bisect: all segments, and the stored (filesz>0) ones."""
        self._seg_starts = [s.vaddr for s in self.segments]
        stored = [s for s in self.segments if s.filesz > 0]
        self._st_starts = [s.vaddr for s in stored]
        self._st_ends = [s.vaddr + s.filesz for s in stored]
        self._st_offsets = [s.offset for s in stored]

    def _mem(self) -> mmap.mmap:
        if self._mm is None:
            raise ValueError(f"{self.path}: CoreFile is closed")
        return self._mm

    # ------------------------------------------------------------------- queries

    def read(self, addr: int, size: int) -> bytes | None:
        """Return `size` bytes at `addr`, or None unless every byte is stored in the core.

        Hot path (called for every 8-byte load the unwinder makes): one bisect and a
        single mmap slice when the range lies inside one stored segment.
        """
        if size < 0 or not 0 <= addr < _ADDR_LIMIT or addr + size > _ADDR_LIMIT:
            return None  # not a u64 address, or the range wraps past the top
        if size == 0:
            return b""
        i = bisect_right(self._st_starts, addr) - 1
        if i < 0 or addr >= self._st_ends[i]:
            return None
        stop = addr + size
        if self.read_log is not None:
            self.read_log.append((addr, size))
        if stop <= self._st_ends[i]:
            off = self._st_offsets[i] + (addr - self._st_starts[i])
            return self._mem()[off : off + size]
        return self._read_across(i, addr, stop)

    def _read_across(self, i: int, addr: int, stop: int) -> bytes | None:
        """Slow path: gather a range from consecutive stored segments with no gap between."""
        mm = self._mem()
        parts = []
        while True:
            start, end = self._st_starts[i], self._st_ends[i]
            chunk_end = min(stop, end)
            off = self._st_offsets[i] + (addr - start)
            parts.append(mm[off : off + (chunk_end - addr)])
            if chunk_end == stop:
                return b"".join(parts)
            i += 1
            if i == len(self._st_starts) or self._st_starts[i] != end:
                return None  # a hole (unmapped or not dumped) before the range ends
            addr = end

    def covers(self, addr: int) -> bool:
        """True iff the byte at addr is stored in the file (in some [vaddr, vaddr+filesz))."""
        i = bisect_right(self._st_starts, addr) - 1
        return i >= 0 and addr < self._st_ends[i]

    def segment_at(self, addr: int) -> Segment | None:
        """The PT_LOAD whose [vaddr, vaddr+memsz) contains addr, stored or not."""
        i = bisect_right(self._seg_starts, addr) - 1
        if i < 0:
            return None
        seg = self.segments[i]
        return seg if addr < seg.vaddr + seg.memsz else None
