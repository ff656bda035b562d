"""Run machine code with unicorn over a frozen process (or a module alone).

The instruction-level validation needs ground truth that does not come from
CFI: where does the CPU really go when the current function returns? This
module answers it by executing the code:

- `Emulator` wraps a unicorn instance for amd64 or arm64. Memory is mapped
  page by page on first touch from a `MemorySource` (the core and the
  bundled module files for a case); unicorn keeps its own copy, so writes
  never reach the core. System calls, faults, unsupported instructions and
  the instruction bound end a run with a `Stop` that says why.
- `run_until_return` starts from a thread's registers and runs the current
  function until it returns to its caller (call depth tracked per basic
  block), giving the caller's SP and the return address.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import capstone
import unicorn
from unicorn import arm64_const as UA
from unicorn import x86_const as UX

from ..arch import AMD64, ARCHES, ARM64, U64_MASK
from ..core.elf import PF_R, PF_W, PF_X
from ..core.elfcore import ThreadState
from ..core.process import Process
from ..errors import HarnessError
from .syscalls import SYSCALL_NAMES

PAGE = 4096
U64 = U64_MASK
NO_EXIT = U64  # an "until" address the code never reaches: runs end by count or stop

# Kernel-internal "restart the system call" codes a stopped thread can hold in
# its return register (never seen by user code): ERESTARTSYS, ERESTARTNOINTR,
# ERESTARTNOHAND, ENOIOCTLCMD, ERESTART_RESTARTBLOCK.
_RESTART_CODES = {512: "ERESTARTSYS", 513: "ERESTARTNOINTR", 514: "ERESTARTNOHAND",
                  515: "ENOIOCTLCMD", 516: "ERESTART_RESTARTBLOCK"}
EINTR = 4

# Thread pointer used when a core has no TLS base (qemu-user's arm64 cores have
# no NT_ARM_TLS): a zeroed area far from any user mapping, so errno writes and
# cancellation checks after a system call run instead of faulting at address 0.
SCRATCH_TLS = 0x0000_6000_0000_0000
SCRATCH_TLS_SPAN = 0x10000  # mapped on both sides of SCRATCH_TLS


@dataclass(frozen=True)
class ArchSpec:
    """What the emulator needs to know about one architecture."""

    name: str
    uc_arch: int
    uc_mode: int
    cpu_model: int
    cs_arch: int
    cs_mode: int
    pc: int
    sp: int
    fp: int
    lr: int | None  # link register (arm64)
    retval: int  # return-value / syscall-result register
    sysno: int  # register holding the system-call number
    regs: dict[str, int]  # core register name -> unicorn register
    syscall_insn: bytes  # encoding of the system-call instruction
    address_mask: int  # bits of a code address (strips arm64 pointer-auth codes)


def _x86_regs() -> dict[str, int]:
    names = ["rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp", "rip", "eflags",
             "fs_base", "gs_base"] + [f"r{i}" for i in range(8, 16)]
    return {n: getattr(UX, f"UC_X86_REG_{n.upper()}") for n in names}


def _arm64_regs() -> dict[str, int]:
    regs = {f"x{i}": getattr(UA, f"UC_ARM64_REG_X{i}") for i in range(31)}
    regs.update(sp=UA.UC_ARM64_REG_SP, pc=UA.UC_ARM64_REG_PC)
    return regs


EMULATED: dict[str, ArchSpec] = {
    AMD64: ArchSpec(
        AMD64, unicorn.UC_ARCH_X86, unicorn.UC_MODE_64, UX.UC_CPU_X86_HASWELL,
        capstone.CS_ARCH_X86, capstone.CS_MODE_64, UX.UC_X86_REG_RIP, UX.UC_X86_REG_RSP,
        UX.UC_X86_REG_RBP, None, UX.UC_X86_REG_RAX, UX.UC_X86_REG_RAX, _x86_regs(),
        b"\x0f\x05", ARCHES[AMD64].address_mask),
    ARM64: ArchSpec(
        ARM64, unicorn.UC_ARCH_ARM64, unicorn.UC_MODE_ARM, UA.UC_CPU_ARM64_MAX,
        capstone.CS_ARCH_ARM64, capstone.CS_MODE_ARM, UA.UC_ARM64_REG_PC, UA.UC_ARM64_REG_SP,
        UA.UC_ARM64_REG_X29, UA.UC_ARM64_REG_X30, UA.UC_ARM64_REG_X0, UA.UC_ARM64_REG_X8,
        _arm64_regs(), struct.pack("<I", 0xD4000001), ARCHES[ARM64].address_mask),
}


def arch_spec(arch: str) -> ArchSpec:
    try:
        return EMULATED[arch]
    except KeyError:
        raise HarnessError(f"no emulator for architecture {arch!r} (amd64, arm64)") from None


@dataclass(frozen=True)
class Page:
    data: bytes  # PAGE bytes
    flags: int  # PF_* bits
    unknown: int = 0  # bytes neither the core nor a module held (zero-filled)


class MemorySource(Protocol):
    """Where the emulator's memory comes from, one page at a time."""

    def page(self, addr: int) -> Page | None:
        """The page at addr (page aligned), or None if nothing is mapped there."""
        ...


class ProcessMemory:
    """A frozen process's memory: core pages, else the bundled module files.
    Permissions come from the core's PT_LOAD flags (else the module's segment)."""

    def __init__(self, process: Process) -> None:
        self.process = process

    def _flags(self, addr: int) -> int | None:
        segment = self.process.core.segment_at(addr)
        if segment is not None:
            return segment.flags
        mapping = self.process.mapping_at(addr)
        if mapping is not None and mapping.load is not None:
            return mapping.load.flags
        return None

    def page(self, addr: int) -> Page | None:
        flags = self._flags(addr)
        if flags is None:
            return None
        data = self.process.read(addr, PAGE)
        if data is not None:
            return Page(bytes(data), flags)
        pieces, unknown = _read_pieces(self._read_or_page_tail, addr)
        if unknown == PAGE:
            return None
        return Page(pieces, flags, unknown)

    def _read_or_page_tail(self, addr: int, size: int) -> bytes | None:
        """Process.read, plus what the ELF loader puts past a segment's file part in
        its last page: the following file bytes (read-only) or zeros (writable)."""
        data = self.process.read(addr, size)
        if data is not None:
            return data
        mapping = self.process.mapping_at(addr)
        if mapping is None or mapping.module is None or mapping.load is None:
            return None
        if mapping.load.flags & PF_W:
            return bytes(size)
        return mapping.module.read(mapping.file_offset + addr - mapping.start, size)


def _read_pieces(read: Callable[[int, int], bytes | None], addr: int) -> tuple[bytes, int]:
    """A page read in pieces where a whole read fails (e.g. the file-backed part of a
    segment ends inside it); unknown pieces are zero. Returns (bytes, unknown count)."""
    out = bytearray(PAGE)
    unknown = 0
    for chunk_at in range(addr, addr + PAGE, 256):
        chunk = read(chunk_at, 256)
        if chunk is not None:
            out[chunk_at - addr:chunk_at - addr + 256] = chunk
            continue
        for word_at in range(chunk_at, chunk_at + 256, 8):
            word = read(word_at, 8)
            if word is None:
                unknown += 8
            else:
                out[word_at - addr:word_at - addr + 8] = word
    return bytes(out), unknown


@dataclass(frozen=True)
class Stop:
    """Why a run ended. kind: returned, syscall, limit, timeout, fetch-unmapped,
    unmapped-memory, protection, invalid-instruction, interrupt, error."""

    kind: str
    message: str
    address: int | None = None


def _prot(flags: int) -> int:
    prot = unicorn.UC_PROT_NONE
    if flags & PF_R:
        prot |= unicorn.UC_PROT_READ
    if flags & PF_W:
        prot |= unicorn.UC_PROT_WRITE
    if flags & PF_X:
        prot |= unicorn.UC_PROT_EXEC
    return prot


class Emulator:
    """A unicorn instance with demand paging from a MemorySource.

    Drivers customise three callbacks: `on_fetch_unmapped(addr) -> bool` (True:
    the driver recorded a stop), `on_syscall() -> bool` (True: continue after
    the system call, e.g. with a made-up result), and their own code or block
    hooks on `self.uc`.
    """

    def __init__(self, arch: str, memory: MemorySource, max_pages: int = 8192) -> None:
        self.spec = arch_spec(arch)
        self.arch = arch
        self.memory = memory
        self.max_pages = max_pages
        self.uc = unicorn.Uc(self.spec.uc_arch, self.spec.uc_mode)
        self.uc.ctl_set_cpu_model(self.spec.cpu_model)
        self.mapped: dict[int, int] = {}  # page -> PF flags
        self.unknown_bytes = 0
        self.stop: Stop | None = None
        self.md = capstone.Cs(self.spec.cs_arch, self.spec.cs_mode)
        self.md.detail = True
        self.on_fetch_unmapped: Callable[[int], bool] = lambda addr: False
        self.on_syscall: Callable[[], bool] = lambda: False
        self.uc.hook_add(unicorn.UC_HOOK_MEM_UNMAPPED, self._on_unmapped)
        self.uc.hook_add(unicorn.UC_HOOK_MEM_PROT, self._on_prot)
        self.uc.hook_add(unicorn.UC_HOOK_INTR, self._on_interrupt)
        if arch == AMD64:
            self.uc.hook_add(unicorn.UC_HOOK_INSN, self._on_x86_syscall, None, 1, 0,
                             UX.UC_X86_INS_SYSCALL)

    # ------------------------------------------------------------- registers

    def reg(self, reg: int) -> int:
        return int(self.uc.reg_read(reg))

    def set_reg(self, reg: int, value: int) -> None:
        self.uc.reg_write(reg, value & U64)

    @property
    def pc(self) -> int:
        return self.reg(self.spec.pc)

    @property
    def sp(self) -> int:
        return self.reg(self.spec.sp)

    # ---------------------------------------------------------------- memory

    def map_page(self, page: int, data: bytes, flags: int) -> None:
        self.uc.mem_map(page, PAGE, _prot(flags))
        self.uc.mem_write(page, data)
        self.mapped[page] = flags

    def map_region(self, start: int, data: bytes, flags: int) -> None:
        """Map a page-aligned run of pages at once (cheaper than page by page)."""
        self.uc.mem_map(start, len(data), _prot(flags))
        self.uc.mem_write(start, data)
        for page in range(start, start + len(data), PAGE):
            self.mapped[page] = flags

    def unmap_pages(self, pages: list[int]) -> None:
        for page in pages:
            self.uc.mem_unmap(page, PAGE)
            del self.mapped[page]

    def read(self, addr: int, size: int) -> bytes | None:
        """Bytes of already-mapped memory (None if any page is not mapped yet)."""
        try:
            return bytes(self.uc.mem_read(addr, size))
        except unicorn.UcError:
            return None

    def _ensure(self, addr: int, size: int, fetch: bool) -> bool:
        first, last = addr & ~(PAGE - 1), (addr + max(size, 1) - 1) & ~(PAGE - 1)
        for page in range(first, last + PAGE, PAGE):
            if page in self.mapped:
                continue
            if len(self.mapped) >= self.max_pages:
                self._set_stop("unmapped-memory", f"more than {self.max_pages} pages touched",
                               addr)
                return False
            got = self.memory.page(page)
            if got is None:
                what = "jumped to" if fetch else "access to"
                self._set_stop("fetch-unmapped" if fetch else "unmapped-memory",
                               f"{what} unmapped address {addr:#x}", addr)
                return False
            if fetch and not got.flags & PF_X:
                self._set_stop("protection", f"jumped into non-executable memory at {addr:#x}",
                               addr)
                return False
            self.unknown_bytes += got.unknown
            self.map_page(page, got.data, got.flags)
        return True

    def _set_stop(self, kind: str, message: str, address: int | None = None) -> None:
        if self.stop is None:
            self.stop = Stop(kind, message, address)

    # ----------------------------------------------------------------- hooks

    def _on_unmapped(self, uc: unicorn.Uc, access: int, address: int, size: int, value: int,
                     _: object) -> bool:
        fetch = access == unicorn.UC_MEM_FETCH_UNMAPPED
        if fetch and self.on_fetch_unmapped(address):
            return False
        return self._ensure(address, size, fetch)

    def _on_prot(self, uc: unicorn.Uc, access: int, address: int, size: int, value: int,
                 _: object) -> bool:
        what = {unicorn.UC_MEM_WRITE_PROT: "write to read-only",
                unicorn.UC_MEM_FETCH_PROT: "jump into non-executable",
                unicorn.UC_MEM_READ_PROT: "read of unreadable"}.get(access, "access to protected")
        self._set_stop("protection", f"{what} memory at {address:#x}", address)
        return False

    def _syscall(self) -> None:
        if not self.on_syscall():
            number = self.reg(self.spec.sysno)
            name = SYSCALL_NAMES.get(self.arch, {}).get(number, "unknown")
            self._set_stop("syscall", f"system call {name} ({number}) at {self.pc:#x}",
                           self.pc)
            self.uc.emu_stop()

    def _on_x86_syscall(self, uc: unicorn.Uc, _: object) -> None:
        self._syscall()

    def _on_interrupt(self, uc: unicorn.Uc, intno: int, _: object) -> None:
        if (self.arch == ARM64 and intno == 2) or (self.arch == AMD64 and intno == 0x80):
            self._syscall()  # arm64 EXCP_SWI (svc); int 0x80 on x86
            return
        self._set_stop("interrupt", f"CPU exception {intno} at {self.pc:#x}", self.pc)
        self.uc.emu_stop()

    # ------------------------------------------------------------------- run

    def run(self, begin: int, count: int, timeout_s: float = 5.0) -> Stop:
        """Run from begin for at most count instructions; the Stop says why it ended."""
        started = time.perf_counter()
        try:
            self.uc.emu_start(begin, NO_EXIT, timeout=int(timeout_s * 1e6), count=count)
        except unicorn.UcError as exc:
            if self.stop is None:
                self.stop = self._error_stop(exc)
        if self.stop is None:
            if time.perf_counter() - started >= timeout_s:
                self.stop = Stop("timeout", f"still running after {timeout_s:g} s")
            else:
                self.stop = Stop("limit", f"no return within {count} instructions")
        return self.stop

    def _error_stop(self, exc: unicorn.UcError) -> Stop:
        pc = self.pc
        if exc.errno == unicorn.UC_ERR_INSN_INVALID:
            return Stop("invalid-instruction",
                        f"instruction at {pc:#x} not supported by the emulator "
                        f"({self.describe(pc)})", pc)
        return Stop("error", f"emulation error at {pc:#x}: {exc}", pc)

    def describe(self, addr: int) -> str:
        """The instruction at addr as text (for messages)."""
        code = self.read(addr, 16)
        if code is None:
            return "?"
        for insn in self.md.disasm(code, addr, 1):
            return f"{insn.mnemonic} {insn.op_str}".strip()
        return f"bytes {code[:8].hex()}"


# -------------------------------------------------------------- thread registers


def load_thread(emu: Emulator, thread: ThreadState) -> None:
    """Registers of a core thread into the emulator, FP/SIMD state included."""
    spec = emu.spec
    for name, reg in spec.regs.items():
        if name in thread.regs:
            emu.set_reg(reg, thread.regs[name])
    if emu.arch == ARM64:
        emu.set_reg(UA.UC_ARM64_REG_NZCV, thread.regs.get("pstate", 0) & 0xF000_0000)
        if thread.tls is not None:
            emu.set_reg(UA.UC_ARM64_REG_TPIDR_EL0, thread.tls)
    fp = thread.fpregs
    if emu.arch == AMD64 and fp is not None and len(fp) >= 416:
        emu.set_reg(UX.UC_X86_REG_MXCSR, struct.unpack_from("<I", fp, 24)[0])
        for i in range(16):
            value = int.from_bytes(fp[160 + 16 * i:176 + 16 * i], "little")
            emu.uc.reg_write(getattr(UX, f"UC_X86_REG_XMM{i}"), value)
    elif emu.arch == ARM64 and fp is not None and len(fp) >= 520:
        for i in range(32):
            emu.uc.reg_write(getattr(UA, f"UC_ARM64_REG_V{i}"),
                             int.from_bytes(fp[16 * i:16 * i + 16], "little"))
        emu.set_reg(UA.UC_ARM64_REG_FPSR, struct.unpack_from("<I", fp, 512)[0])
        emu.set_reg(UA.UC_ARM64_REG_FPCR, struct.unpack_from("<I", fp, 516)[0])


def resume_interrupted_syscall(emu: Emulator, read: Callable[[int, int], bytes | None]
                               ) -> str | None:
    """If the thread sits right after a system call whose result register holds a
    kernel-internal restart code, make the call return -EINTR (what the kernel
    does when a signal handler interrupts it) and say so; else None.

    A core taken while a thread blocks in the kernel records that state; the
    real continuation (restart, or EINTR) depends on signal dispositions the
    core does not describe. Either way the function returns to the same caller.
    """
    spec = emu.spec
    pc = emu.pc
    if read(pc - len(spec.syscall_insn), len(spec.syscall_insn)) != spec.syscall_insn:
        return None
    value = emu.reg(spec.retval)
    code = (-value) & U64 if value >> 63 else 0
    if code not in _RESTART_CODES:
        return None
    emu.set_reg(spec.retval, -EINTR)
    return (f"interrupted system call (result -{_RESTART_CODES[code]}) resumed as -EINTR")


# ------------------------------------------------------------ run until return


@dataclass
class ReturnRun:
    """Outcome of running a thread's current function until it returns."""

    stop: Stop
    return_pc: int | None = None  # raw (pointer-auth bits included on arm64)
    return_sp: int | None = None
    instructions: int = 0  # approximate (counted per basic block)
    notes: list[str] = field(default_factory=list)
    path: list[int] = field(default_factory=list)  # first basic blocks executed

    @property
    def returned(self) -> bool:
        return self.stop.kind == "returned"


_CALL, _RET, _OTHER = 1, 2, 0
_PATH_LIMIT = 64


class _ReturnTracker:
    """Block hook state: call depth from each block's last instruction.

    A block that ends in a call deepens the stack, one that ends in a return
    shallows it; the first return below depth 0 is the current function's.
    Checking at the start of the next block (or at the fetch that fails) gives
    the state right after the return instruction.
    """

    def __init__(self, emu: Emulator, result: ReturnRun) -> None:
        self.emu = emu
        self.result = result
        self.depth = 0
        self.pending = _OTHER
        self._blocks: dict[tuple[int, int], tuple[int, int]] = {}

    def _classify_block(self, address: int, size: int) -> tuple[int, int]:
        key = (address, size)
        known = self._blocks.get(key)
        if known is None:
            # Capped: for a block ending in an undecodable instruction unicorn
            # can report a bogus size.
            code = self.emu.read(address, min(size, PAGE)) or b""
            insns = list(self.emu.md.disasm(code, address))
            kind = _OTHER
            if insns:
                last = insns[-1]
                if last.group(capstone.CS_GRP_CALL):
                    kind = _CALL
                elif last.group(capstone.CS_GRP_RET):
                    kind = _RET
            known = self._blocks[key] = (kind, len(insns))
        return known

    def _returned_to(self, address: int) -> bool:
        """Apply the previous block's terminator; True if that left the function."""
        if self.pending == _CALL:
            self.depth += 1
        elif self.pending == _RET:
            self.depth -= 1
            if self.depth < 0:
                self.result.return_pc = address
                self.result.return_sp = self.emu.sp
                self.emu._set_stop("returned", f"returned to {address:#x}", address)
                return True
        self.pending = _OTHER
        return False

    def on_block(self, uc: unicorn.Uc, address: int, size: int, _: object) -> None:
        if self._returned_to(address):
            uc.emu_stop()
            return
        kind, count = self._classify_block(address, size)
        self.pending = kind
        self.result.instructions += count
        if len(self.result.path) < _PATH_LIMIT:
            self.result.path.append(address)

    def on_fetch_unmapped(self, address: int) -> bool:
        return self._returned_to(address)


def run_until_return(process: Process, thread: ThreadState, max_instructions: int = 100_000,
                     timeout_s: float = 5.0) -> ReturnRun:
    """Execute the thread's current function from its registers until it returns.

    The run ends at the return (the truth: SP and PC right after it), at a
    system call, a fault, an unsupported instruction, or after
    max_instructions; the Stop says which.
    """
    emu = Emulator(process.arch, ProcessMemory(process))
    load_thread(emu, thread)
    result = ReturnRun(Stop("error", "not run"))
    note = resume_interrupted_syscall(emu, process.read)
    if note:
        result.notes.append(note)
    if emu.arch == ARM64 and thread.tls is None and process.read(SCRATCH_TLS, 1) is None:
        emu.map_region(SCRATCH_TLS - SCRATCH_TLS_SPAN, bytes(2 * SCRATCH_TLS_SPAN), PF_R | PF_W)
        emu.set_reg(UA.UC_ARM64_REG_TPIDR_EL0, SCRATCH_TLS)
        result.notes.append("the core has no TLS base (no NT_ARM_TLS, as in qemu-user cores): "
                            "thread-local accesses go to a zeroed scratch area")
    tracker = _ReturnTracker(emu, result)
    emu.on_fetch_unmapped = tracker.on_fetch_unmapped
    emu.uc.hook_add(unicorn.UC_HOOK_BLOCK, tracker.on_block)
    result.stop = emu.run(emu.pc, max_instructions, timeout_s)
    if emu.unknown_bytes:
        result.notes.append(f"{emu.unknown_bytes} bytes of touched pages were in neither the "
                            "core nor a module (read as zero)")
    return result
