"""The rule vocabulary of stack deltas and one module's table of them.

Shared by the decoder (cfi.py), the cache (__init__.py) and everything that
reads deltas; it imports nothing heavy.
"""

from __future__ import annotations

from dataclasses import dataclass, field

CFA_INVALID = 0  # no usable rule at this PC: the unwinder reports an error
CFA_STOP = 1  # outermost frame: the return-address column is DW_CFA_undefined here
CFA_SP = 2  # CFA = SP + cfa_param
CFA_FP = 3  # CFA = FP + cfa_param  (FP = rbp on x86_64, x29 on aarch64)
CFA_PLT = 4  # x86_64 PLT: CFA = RSP + cfa_param + plt_pushed_bytes(PC, aux)
CFA_SIGNAL = 5  # signal trampoline: registers are restored from the signal frame
# Realigned stack (GCC's DRAP): CFA = *(FP + cfa_param), read from the stack. With
# aux == FP_AT_FP, the caller's FP is at FP + fp_offset (not CFA + fp_offset).
CFA_DEREF_FP = 6
FP_AT_FP = 1
# Go (go_deltas.py): a stack switch the unwinder cannot follow (runtime.systemstack
# on the g0 stack): the walk ends with an error frame.
CFA_GO_STACK_SWITCH = 10
# Go's asmcgocall, as a caller: C code ran on the system stack, and the goroutine's
# SP is g.stack.hi minus the depth saved at SP (amd64). Elsewhere in it: CFA_SP.
CFA_GO_ASMCGOCALL = 11
# Go's vDSO calls (nanotime1, walltime, time.now) while SP is on g0: CFA = the top
# frame's r12 (amd64) / x20 (arm64) + cfa_param; a caller frame here: error frame.
CFA_GO_SAVED_SP = 12

_CFA_OPS = frozenset({CFA_INVALID, CFA_STOP, CFA_SP, CFA_FP, CFA_PLT, CFA_SIGNAL,
                      CFA_DEREF_FP, CFA_GO_STACK_SWITCH, CFA_GO_ASMCGOCALL, CFA_GO_SAVED_SP})

PLT_ENTRY_SIZE = 16  # bytes of an x86_64 .plt entry (enum plt_layout in types.h)


def plt_pushed_bytes(pc: int, aux: int) -> int:
    """CFA_PLT: the word a PLT entry has pushed once the PC is past its push (aux)."""
    return 8 if pc % PLT_ENTRY_SIZE >= aux else 0

# Bump whenever extraction semantics or the cache layout change: old files are then
# simply never looked at again (the version is part of the file name).
FORMAT_VERSION = 6  # 5: Go functions from .gopclntab; 6: rules synthesized where no FDE is
# CIEs, FDEs and terminators walked in one section: a real libc has ~3,000, the
# largest binaries some 10^6; a section of zero terminators must not spin for minutes.
MAX_CFI_ENTRIES = 1 << 22


@dataclass(frozen=True)
class UnwindRule:
    """How to recover the caller's frame at a PC (see the CFA_* constants)."""

    cfa_op: int
    cfa_param: int = 0
    fp_offset: int = 0  # caller's FP saved at CFA + fp_offset; 0: not saved (FP unchanged)
    ra_offset: int = 0  # RA saved at CFA + ra_offset; 0: still in the link register (arm64)
    aux: int = 0  # CFA_PLT only: offset in a PLT entry from which one more word is pushed


# Used for PCs that no FDE covers (both arches): the standard frame-pointer frame.
FRAME_POINTER_RULE = UnwindRule(CFA_FP, 16, fp_offset=-16, ra_offset=-8)

_INVALID_RULE = UnwindRule(CFA_INVALID)
_STOP_RULE = UnwindRule(CFA_STOP)
_SIGNAL_RULE = UnwindRule(CFA_SIGNAL)


@dataclass
class ModuleUnwindData:
    """Stack deltas of one ELF module.

    ``deltas`` is sorted by ELF virtual address; entry i applies to
    [vaddr_i, vaddr_{i+1}) and the last one to the end of the module. An empty list
    means the module has no CFI at all and the unwinder should use frame pointers.
    """

    machine: str  # "amd64" or "arm64"
    deltas: list[tuple[int, UnwindRule]]
    fde_count: int  # FDEs decoded successfully
    fde_errors: int  # FDEs skipped because pyelftools raised or the FDE was malformed
    sources: list[str]  # CFI sections used, e.g. [".eh_frame", ".debug_frame"]
    # [start, end) of every FDE over code, in section order (.eh_frame first): the
    # function bounds of the instruction-level tools (harness/check/code.py)
    fde_ranges: list[tuple[int, int]] = field(default_factory=list)
    # [start, end) of the code whose rules were synthesized from its instructions
    # (synthesize.py): functions without an FDE, and signal trampolines
    synthesized: list[tuple[int, int]] = field(default_factory=list)


