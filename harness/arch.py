"""Facts about the two target architectures, in one place.

The harness replays amd64 and arm64 cores on any host, so nothing may ask the host
what a register is called or which ELF machine a core has: every such fact is a
field of `Arch` here (register names in the order of the core's NT_PRSTATUS,
ELF machine numbers, DWARF register numbers, the C macro that selects the target
in bpf_src). Tools with their own register vocabularies (unicorn, capstone, the
BPF context structs) map from these names.
"""

from __future__ import annotations

import platform
from collections.abc import Iterator
from dataclasses import dataclass

from .errors import HarnessError

AMD64 = "amd64"
ARM64 = "arm64"
U64_MASK = (1 << 64) - 1


@dataclass(frozen=True)
class Arch:
    name: str  # the harness's name for it, as in testdata/<name>/
    elf_machine: int  # e_machine
    elf_machine_name: str  # pyelftools' spelling of e_machine
    uname: tuple[str, ...]  # platform.machine() of a host of this architecture
    target_macro: str  # -D flag that selects it in bpf_src (types.h)
    core_regs: tuple[str, ...]  # NT_PRSTATUS pr_reg, in order
    pc: str
    sp: str
    fp: str  # frame pointer: rbp, x29
    lr: str | None  # link register (arm64 x30); None: return address on the stack
    dwarf_sp: int  # DWARF register numbers (psABI)
    dwarf_fp: int
    entry_ra_offset: int  # where a function finds its return address at entry: at
    #                       CFA + this (amd64's `call` pushed it), 0 = in the link register
    address_mask: int  # bits of a user code address (arm64: 48-bit VA, PAC above)
    # The instructions of a signal-return trampoline (rt_sigreturn): how code without
    # CFI, e.g. qemu-user's trampoline page or musl's restorer, is recognised.
    sigreturn: tuple[bytes, ...] = ()


# struct user_regs_struct (arch/x86/include/asm/user_64.h)
_AMD64_REGS = (
    "r15", "r14", "r13", "r12", "rbp", "rbx", "r11", "r10", "r9", "r8",
    "rax", "rcx", "rdx", "rsi", "rdi", "orig_rax", "rip", "cs", "eflags",
    "rsp", "ss", "fs_base", "gs_base", "ds", "es", "fs", "gs",
)  # fmt: skip
# struct user_pt_regs (arch/arm64/include/uapi/asm/ptrace.h)
_ARM64_REGS = tuple(f"x{i}" for i in range(31)) + ("sp", "pc", "pstate")

ARCHES: dict[str, Arch] = {
    AMD64: Arch(AMD64, elf_machine=62, elf_machine_name="EM_X86_64",
                uname=("x86_64", "amd64"), target_macro="TARGET_ARCH_X86_64",
                core_regs=_AMD64_REGS, pc="rip", sp="rsp", fp="rbp", lr=None,
                dwarf_sp=7, dwarf_fp=6, entry_ra_offset=-8, address_mask=U64_MASK,
                sigreturn=(bytes.fromhex("48c7c00f000000 0f05"),  # mov $15,%rax; syscall
                           bytes.fromhex("b80f000000 0f05"))),     # mov $15,%eax; syscall
    ARM64: Arch(ARM64, elf_machine=183, elf_machine_name="EM_AARCH64",
                uname=("aarch64", "arm64"), target_macro="TARGET_ARCH_ARM64",
                core_regs=_ARM64_REGS, pc="pc", sp="sp", fp="x29", lr="x30",
                dwarf_sp=31, dwarf_fp=29, entry_ra_offset=0, address_mask=(1 << 48) - 1,
                sigreturn=(bytes.fromhex("681180d2 010000d4"),)),  # mov x8,#139; svc #0
}
ARCH_NAMES = tuple(ARCHES)


def get_arch(name: str) -> Arch:
    try:
        return ARCHES[name]
    except KeyError:
        raise HarnessError(f"unsupported architecture {name!r} (supported: "
                           f"{', '.join(ARCH_NAMES)})") from None


def arch_of_machine(e_machine: int) -> Arch | None:
    """The architecture of an ELF e_machine value, or None if unsupported."""
    return next((a for a in ARCHES.values() if a.elf_machine == e_machine), None)


def supported_machines() -> str:
    """For messages: 'EM_X86_64=62, EM_AARCH64=183'."""
    return ", ".join(f"{a.elf_machine_name}={a.elf_machine}" for a in ARCHES.values())


def sigreturn_offsets(data: bytes, arch: str) -> Iterator[tuple[int, int]]:
    """[start, end) offsets of each signal-return trampoline in data (Arch.sigreturn).
    Alignment is not checked: an 8-byte match elsewhere in code is not a concern, and
    the anonymous-code module (core/anon_code.py) shifts the page by one byte."""
    for pattern in ARCHES[arch].sigreturn:
        pos = data.find(pattern)
        while pos >= 0:
            yield pos, pos + len(pattern)
            pos = data.find(pattern, pos + 1)


def host_arch() -> str | None:
    """This machine's architecture in the harness's names, or None if neither."""
    machine = platform.machine()
    return next((a.name for a in ARCHES.values() if machine in a.uname), None)
