"""Stack-delta rules as the instruction-level checks see them: a rule in words, rule
lookup by address over a module's deltas (as the agent loads them), and the
disassembly shown beside a mismatch.
"""

from __future__ import annotations

import bisect

from ..arch import ARCHES
from ..unwind_data import (
    CFA_DEREF_FP,
    CFA_FP,
    CFA_GO_ASMCGOCALL,
    CFA_GO_SAVED_SP,
    CFA_GO_STACK_SWITCH,
    CFA_INVALID,
    CFA_PLT,
    CFA_SIGNAL,
    CFA_SP,
    CFA_STOP,
    FP_AT_FP,
    FRAME_POINTER_RULE,
    PLT_ENTRY_SIZE,
    ModuleUnwindData,
    UnwindRule,
)
from .code import ElfCode
from .sites import disassembler


def describe_rule(rule: UnwindRule, arch: str) -> str:
    """A stack-delta rule in words, e.g. 'CFA=rsp+16, RA at CFA-8, FP at CFA-16'."""
    sp, fp = ARCHES[arch].sp, ARCHES[arch].fp
    op = rule.cfa_op
    if op == CFA_INVALID:
        return "no usable rule (CFA_INVALID)"
    if op == CFA_STOP:
        return "outermost frame (CFA_STOP: return address undefined)"
    if op == CFA_SIGNAL:
        return "signal trampoline (CFA_SIGNAL)"
    if op == CFA_GO_STACK_SWITCH:
        return "Go stack switch the unwinder cannot follow (CFA_GO_STACK_SWITCH)"
    if op == CFA_GO_SAVED_SP:
        return (f"Go vDSO call: CFA=saved-SP register{rule.cfa_param:+d} in the top frame, "
                f"RA at CFA{rule.ra_offset:+d} (CFA_GO_SAVED_SP)")
    if op == CFA_GO_ASMCGOCALL:
        return (f"Go asmcgocall: back to the goroutine stack (g at SP+{rule.aux}, depth at "
                f"SP+{rule.cfa_param}; CFA_GO_ASMCGOCALL)")
    base = {CFA_SP: sp, CFA_FP: fp, CFA_PLT: sp, CFA_DEREF_FP: fp}.get(op, f"op{op}")
    cfa = f"CFA={base}{rule.cfa_param:+d}"
    if op == CFA_DEREF_FP:
        cfa = f"CFA=*({fp}{rule.cfa_param:+d})"
    if op == CFA_PLT:
        cfa += f" (+8 if pc%{PLT_ENTRY_SIZE} >= {rule.aux})"
    ra = "RA in LR" if rule.ra_offset == 0 else f"RA at CFA{rule.ra_offset:+d}"
    fp_text = "FP unchanged" if rule.fp_offset == 0 else f"FP at CFA{rule.fp_offset:+d}"
    if op == CFA_DEREF_FP and rule.aux == FP_AT_FP:
        fp_text = f"FP at {fp}{rule.fp_offset:+d}"
    return f"{cfa}, {ra}, {fp_text}"


class RuleTable:
    """Rule lookup by ELF address over a module's stack deltas (as the agent
    loads them: FRAME_POINTER_RULE before the first delta and where no FDE is)."""

    def __init__(self, data: ModuleUnwindData) -> None:
        self.data = data
        self._addrs = [addr for addr, _ in data.deltas]
        self._rules = [rule for _, rule in data.deltas]

    def rule_at(self, vaddr: int) -> UnwindRule:
        i = bisect.bisect_right(self._addrs, vaddr) - 1
        return self._rules[i] if i >= 0 else FRAME_POINTER_RULE


def disassembly_around(code: ElfCode, vaddr: int, before: int = 6, after: int = 3,
                       label: str | None = None) -> list[str]:
    """Lines of disassembly around vaddr (from its function start), '=>' marking it."""
    function = code.function_at(vaddr)
    start = function.start if function is not None else max(vaddr - 48, 0)
    end = max(function.end if function is not None else vaddr + 64, vaddr + 16)
    md = disassembler(code.arch)
    md.detail = False
    insns = list(md.disasm(code.code_bytes(start, end), start))
    index = next((i for i, insn in enumerate(insns) if insn.address == vaddr), None)
    if index is None:  # linear sweep missed vaddr (data in code); decode from vaddr on
        insns = list(md.disasm(code.code_bytes(vaddr, end), vaddr))
        index = 0
    name = label or code.path.name
    lines = []
    for insn in insns[max(0, index - before):index + after + 1]:
        mark = "=>" if insn.address == vaddr else "  "
        where = function.label(insn.address) if function else f"{insn.address:#x}"
        lines.append(f"{mark} {name}+{insn.address:#x} <{where}>: "
                     f"{insn.mnemonic} {insn.op_str}".rstrip())
    return lines
