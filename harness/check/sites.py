"""Classify a PC within its function: prologue, body, epilogue or return.

Unwind rules are most often wrong where the frame is half built or half torn
down, so the validation reports which kind of site each thread's top frame
is at. The classification is static (capstone), independent of the CFI it
helps to judge:

- **return**: the instruction at the PC is a return (`ret`, `retaa`, ...).
- **prologue**: the PC lies before the end of the last frame-setup
  instruction (push / stack allocation / frame-pointer setup / callee-saved
  store / `endbr64`, `paciasp`, `bti`) of the function's straight-line entry
  code, i.e. before the first branch, call or return.
- **epilogue**: the PC lies in a teardown run: the instructions that end at
  a return (or at a jump out of the function: a tail call) and consist of
  frame-teardown instructions (pop / leave / stack release / callee-saved
  reloads / `autiasp`) and register moves between them; the run starts at
  its first teardown instruction. A tail-call jump after a teardown is part
  of the epilogue.
- **body**: everything else.

Limits: prologue code after the first branch (shrink-wrapping) counts as
body, and bytes the linear sweep cannot decode end the function early.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import capstone
from capstone import arm64_const as A
from capstone import x86_const as X

from ..arch import AMD64, ARCHES, ARM64
from ..core.process import Process
from .code import CodeModels, ElfCode, Function

PROLOGUE = "prologue"
BODY = "body"
EPILOGUE = "epilogue"
RETURN = "return"
UNKNOWN = "unknown"

_PROLOGUE_WINDOW = 64  # instructions scanned from the entry
_EPILOGUE_WINDOW = 32  # instructions scanned back from a return


@dataclass(frozen=True)
class Site:
    kind: str
    module: str
    vaddr: int
    function: Function | None
    why: str = ""

    def describe(self) -> str:
        where = self.function.label(self.vaddr) if self.function else f"{self.vaddr:#x}"
        text = f"{self.kind} of {self.module}!{where}" if self.kind != UNKNOWN else (
            f"unknown site {self.module}+{self.vaddr:#x}")
        return f"{text} ({self.why})" if self.why else text


def disassembler(arch: str) -> capstone.Cs:
    """A capstone instance with operand details for the architecture."""
    if arch == AMD64:
        md = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
    else:
        md = capstone.Cs(capstone.CS_ARCH_ARM64, capstone.CS_MODE_ARM)
    md.detail = True
    return md


# ----------------------------------------------------------------- per arch rules


class _Rules:
    """Which instructions set up, tear down, return or change control flow."""

    def is_control(self, insn: capstone.CsInsn) -> bool:
        raise NotImplementedError

    def is_return(self, insn: capstone.CsInsn) -> bool:
        return insn.group(capstone.CS_GRP_RET)

    def is_call(self, insn: capstone.CsInsn) -> bool:
        return insn.group(capstone.CS_GRP_CALL)

    def is_setup(self, insn: capstone.CsInsn) -> bool:
        raise NotImplementedError

    def is_teardown(self, insn: capstone.CsInsn) -> bool:
        raise NotImplementedError

    def jump_target(self, insn: capstone.CsInsn) -> int | None:
        """Target of a direct unconditional jump; None if indirect or not a jump."""
        raise NotImplementedError

    def is_unconditional_jump(self, insn: capstone.CsInsn) -> bool:
        raise NotImplementedError


class _Amd64(_Rules):
    CALLEE_SAVED = frozenset({X.X86_REG_RBX, X.X86_REG_RBP, X.X86_REG_R12, X.X86_REG_R13,
                              X.X86_REG_R14, X.X86_REG_R15})
    FRAME_REGS = frozenset({X.X86_REG_RSP, X.X86_REG_RBP})
    OTHER_CONTROL = frozenset({"syscall", "sysenter", "hlt", "ud2", "int3"})

    def is_control(self, insn: capstone.CsInsn) -> bool:
        return (any(insn.group(g) for g in (capstone.CS_GRP_JUMP, capstone.CS_GRP_CALL,
                                             capstone.CS_GRP_RET, capstone.CS_GRP_INT,
                                             capstone.CS_GRP_IRET))
                or insn.mnemonic in self.OTHER_CONTROL)

    @staticmethod
    def _reg(op: Any, reg: int) -> bool:
        return getattr(op, "type", None) == X.X86_OP_REG and getattr(op, "reg", None) == reg

    def _ops(self, insn: capstone.CsInsn) -> list[Any]:  # capstone operands (untyped)
        return list(insn.operands)

    def is_setup(self, insn: capstone.CsInsn) -> bool:
        m, ops = insn.mnemonic, self._ops(insn)
        if m in ("push", "endbr64"):
            return True
        if len(ops) != 2:
            return False
        dst, src = ops
        if self._reg(dst, X.X86_REG_RSP):
            if m in ("sub", "and"):
                return True
            if m == "add" and src.type == X.X86_OP_IMM:
                return bool(src.imm < 0)
            if m == "lea":
                return bool(src.mem.base == X.X86_REG_RSP and src.mem.disp < 0)
            return False
        if m == "mov" and self._reg(dst, X.X86_REG_RBP) and self._reg(src, X.X86_REG_RSP):
            return True
        if m == "lea" and self._reg(dst, X.X86_REG_RBP) and src.mem.base == X.X86_REG_RSP:
            return True
        return (m == "mov" and dst.type == X.X86_OP_MEM and dst.mem.base in self.FRAME_REGS
                and src.type == X.X86_OP_REG and src.reg in self.CALLEE_SAVED)

    def is_teardown(self, insn: capstone.CsInsn) -> bool:
        m, ops = insn.mnemonic, self._ops(insn)
        if m in ("pop", "leave"):
            return True
        if len(ops) != 2:
            return False
        dst, src = ops
        if self._reg(dst, X.X86_REG_RSP):
            if m == "add" and src.type == X.X86_OP_IMM:
                return bool(src.imm > 0)
            return m in ("lea", "mov")
        return (m == "mov" and dst.type == X.X86_OP_REG and dst.reg in self.CALLEE_SAVED
                and src.type == X.X86_OP_MEM and src.mem.base in self.FRAME_REGS)

    def is_unconditional_jump(self, insn: capstone.CsInsn) -> bool:
        return insn.mnemonic in ("jmp", "bnd jmp", "notrack jmp")

    def jump_target(self, insn: capstone.CsInsn) -> int | None:
        ops = self._ops(insn)
        if self.is_unconditional_jump(insn) and len(ops) == 1 and ops[0].type == X.X86_OP_IMM:
            return int(ops[0].imm)
        return None


class _Arm64(_Rules):
    CALLEE_SAVED = frozenset(
        [getattr(A, f"ARM64_REG_X{i}") for i in range(19, 31)]
        + [getattr(A, f"ARM64_REG_D{i}") for i in range(8, 16)]
    )
    SP = A.ARM64_REG_SP
    FP = A.ARM64_REG_X29
    SETUP_HINTS = frozenset({"paciasp", "pacibsp", "bti", "pacia", "pacib"})
    TEARDOWN_HINTS = frozenset({"autiasp", "autibsp", "autia", "autib"})
    OTHER_CONTROL = frozenset({"svc", "brk", "hlt", "udf", "eret"})

    def is_control(self, insn: capstone.CsInsn) -> bool:
        return (any(insn.group(g) for g in (capstone.CS_GRP_JUMP, capstone.CS_GRP_CALL,
                                             capstone.CS_GRP_RET, capstone.CS_GRP_INT))
                or insn.mnemonic in self.OTHER_CONTROL or insn.mnemonic.startswith("b."))

    def _regs_and_mem(self, insn: capstone.CsInsn) -> tuple[list[int], int | None]:
        regs, base = [], None
        for op in insn.operands:
            if op.type == A.ARM64_OP_REG:
                regs.append(op.reg)
            elif op.type == A.ARM64_OP_MEM:
                base = op.mem.base
        return regs, base

    def _sp_arith(self, insn: capstone.CsInsn) -> tuple[int, int] | None:
        """(destination, source) of add/sub/mov between registers and SP/FP."""
        regs, _ = self._regs_and_mem(insn)
        if insn.mnemonic in ("add", "sub", "mov") and len(regs) >= 2:
            return regs[0], regs[1]
        return None

    def _frame_op(self, insn: capstone.CsInsn, hints: frozenset[str], saves: tuple[str, ...],
                  sp_change: str, frame_move: tuple[int, int]) -> bool:
        """Setup and teardown mirror each other: a hint instruction, a callee-saved
        store (load) at SP, SP decreased (increased), or x29 = SP (SP = x29)."""
        m = insn.mnemonic
        if m in hints:
            return True
        if m in saves:
            regs, base = self._regs_and_mem(insn)
            return base == self.SP and bool(regs) and all(r in self.CALLEE_SAVED for r in regs)
        arith = self._sp_arith(insn)
        if arith is None:
            return False
        if arith == (self.SP, self.SP):
            return m == sp_change
        return arith == frame_move

    def is_setup(self, insn: capstone.CsInsn) -> bool:
        return self._frame_op(insn, self.SETUP_HINTS, ("stp", "str", "stur"), "sub",
                              (self.FP, self.SP))

    def is_teardown(self, insn: capstone.CsInsn) -> bool:
        return self._frame_op(insn, self.TEARDOWN_HINTS, ("ldp", "ldr", "ldur"), "add",
                              (self.SP, self.FP))

    def is_unconditional_jump(self, insn: capstone.CsInsn) -> bool:
        return insn.mnemonic in ("b", "br", "braa", "brab", "braaz", "brabz")

    def jump_target(self, insn: capstone.CsInsn) -> int | None:
        if insn.mnemonic == "b" and insn.operands and insn.operands[0].type == A.ARM64_OP_IMM:
            return int(insn.operands[0].imm)
        return None


RULES: dict[str, _Rules] = {AMD64: _Amd64(), ARM64: _Arm64()}


# ------------------------------------------------------------- calls that never return

# Functions that never return, by name (for callees whose code is elsewhere or
# not conclusive by scanning, e.g. behind a PLT entry).
NORETURN_NAMES = frozenset({
    "abort", "exit", "_exit", "_Exit", "__assert_fail", "__assert_perror_fail",
    "__stack_chk_fail", "__fortify_fail", "__chk_fail", "__libc_fatal", "__libc_message",
    "__malloc_assert", "longjmp", "siglongjmp", "_longjmp", "__longjmp_chk",
    "pthread_exit", "__pthread_unwind", "__pthread_unwind_next", "__cxa_throw",
    "__cxa_rethrow", "_Unwind_Resume", "_ZSt9terminatev",
    # Go's runtime: fatal errors and panics never return to the call
    "runtime.throw", "runtime.fatal", "runtime.fatalthrow", "runtime.fatalpanic",
    "runtime.gopanic", "runtime.sigpanic", "runtime.goexit1", "runtime.Goexit",
})
# Go's bounds-check and conversion failures: runtime.panicIndex, runtime.goPanicIndex, ...
NORETURN_PREFIXES = ("runtime.panic", "runtime.goPanic")


def branch_target(insn: capstone.CsInsn) -> int | None:
    """Target of a direct jump or branch (conditional or not); None if indirect."""
    imms = [op.imm for op in insn.operands
            if op.type in (X.X86_OP_IMM, A.ARM64_OP_IMM)]
    return int(imms[-1]) if imms else None


def never_returns(code: ElfCode, function: Function) -> bool:
    """True if a call to this function cannot return to its caller.

    By name, or by its code: no return instruction and no jump out of the
    function (a tail call) or through a register. Compilers emit no CFI
    for the code after such a call (it is unreachable), so a validator that
    steps over the call would check rules that never apply there.
    """
    if function.name in NORETURN_NAMES or function.name.startswith(NORETURN_PREFIXES):
        return True
    rules = RULES[code.arch]
    md = disassembler(code.arch)
    seen = function.start
    for insn in md.disasm(code.code_bytes(function.start, function.end), function.start):
        seen = insn.address + insn.size
        if rules.is_return(insn):
            return False
        if insn.group(capstone.CS_GRP_JUMP):
            target = branch_target(insn)
            if target is None or not function.start <= target < function.end:
                return False
    return seen >= function.end  # undecodable bytes: not conclusive, assume it returns


# ------------------------------------------------------------------- function shape


@dataclass(frozen=True)
class FunctionShape:
    """Where a function's prologue ends and its epilogues lie."""

    prologue_end: int
    epilogues: tuple[tuple[int, int], ...]  # [start, end) ranges
    returns: frozenset[int]
    decoded_end: int  # linear sweep stopped here (== function end if all decoded)


# Shapes by (module content, function): derived from immutable bytes, so kept
# across processes; bounded.
_SHAPES: dict[tuple[str, Function], FunctionShape] = {}
_SHAPE_LIMIT = 4096


def function_shape(code: ElfCode, function: Function) -> FunctionShape:
    key = (code.module.content_id, function)
    shape = _SHAPES.get(key)
    if shape is None:
        if len(_SHAPES) >= _SHAPE_LIMIT:
            _SHAPES.clear()
        shape = _SHAPES[key] = _shape(code, function)
    return shape


def _shape(code: ElfCode, function: Function) -> FunctionShape:
    rules = RULES[code.arch]
    md = disassembler(code.arch)
    insns = list(md.disasm(code.code_bytes(function.start, function.end), function.start))
    decoded_end = insns[-1].address + insns[-1].size if insns else function.start

    prologue_end = function.start
    for insn in insns[:_PROLOGUE_WINDOW]:
        if rules.is_control(insn):
            break
        if rules.is_setup(insn):
            prologue_end = insn.address + insn.size

    epilogues = []
    returns = set()
    for i, insn in enumerate(insns):
        is_ret = rules.is_return(insn)
        if is_ret:
            returns.add(insn.address)
        elif not _leaves_function(rules, insn, function):
            continue
        first = None
        for prev in reversed(insns[max(0, i - _EPILOGUE_WINDOW):i]):
            if rules.is_control(prev) or rules.is_setup(prev):
                break
            if rules.is_teardown(prev):
                first = prev.address
        if first is not None:
            end = insn.address if is_ret else insn.address + insn.size
            epilogues.append((first, end))
    return FunctionShape(prologue_end, tuple(epilogues), frozenset(returns), decoded_end)


def _leaves_function(rules: _Rules, insn: capstone.CsInsn, function: Function) -> bool:
    """A jump that is a tail call: direct out of the function, or indirect."""
    if not rules.is_unconditional_jump(insn):
        return False
    target = rules.jump_target(insn)
    return target is None or not function.start <= target < function.end


def classify(code: ElfCode, vaddr: int, module_name: str | None = None) -> Site:
    """Classify the instruction at ELF virtual address vaddr of a module."""
    name = module_name or code.path.name
    function = code.function_at(vaddr)
    if function is None:
        return Site(UNKNOWN, name, vaddr, None, "no FDE or function symbol covers it")
    rules = RULES[code.arch]
    here = list(disassembler(code.arch).disasm(code.code_bytes(vaddr, vaddr + 16), vaddr, 1))
    if not here:
        return Site(UNKNOWN, name, vaddr, function, "no valid instruction at the PC")
    if rules.is_return(here[0]):
        return Site(RETURN, name, vaddr, function)
    shape = function_shape(code, function)
    for start, end in shape.epilogues:
        if start <= vaddr < end:
            return Site(EPILOGUE, name, vaddr, function)
    if vaddr < shape.prologue_end:
        return Site(PROLOGUE, name, vaddr, function)
    return Site(BODY, name, vaddr, function)


def classify_pc(process: Process, pc: int, models: CodeModels) -> Site:
    """Classify a runtime PC of the process (module and bias from its mappings)."""
    found = process.module_at(pc)
    if found is None:
        return Site(UNKNOWN, "?", pc, None, "not in a known module")
    module, vaddr = found
    return classify(models.of(module), vaddr, module.name)


def top_frame_sites(process: Process, models: CodeModels | None = None) -> dict[int, Site]:
    """{lwp: site of the thread's PC}."""
    models = models or CodeModels()
    pc_reg = ARCHES[process.arch].pc
    return {t.lwp: classify_pc(process, t.regs.get(pc_reg, 0), models)
            for t in process.threads}
