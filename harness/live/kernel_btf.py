"""Offsets of kernel struct fields, read from the running kernel's BTF.

unwind_python finds a thread's user thread pointer (CPython up to 3.10 matches
thread states by it) the way a kernel program must: bpf_get_current_task, then
bpf_probe_read_kernel at the offset of the task's saved thread pointer
(x86-64 `task_struct.thread.fsbase`, arm64 `task_struct.thread.uw.tp_value`).
That offset depends on the kernel build; the agent reads it from
/sys/kernel/btf/vmlinux, as a profiler's agent does, and writes it into
unwinder_config.task_thread_pointer. The emulator serves its own constant
(helpers/bpf_helpers.py) instead.

Only what that needs of BTF is read (the format: the kernel's
Documentation/bpf/btf.rst): the header, every type's fixed part and its
trailing records (to step over them), and struct members.
"""

from __future__ import annotations

import struct
from functools import lru_cache
from pathlib import Path

from ..arch import AMD64

VMLINUX_BTF = Path("/sys/kernel/btf/vmlinux")
BTF_MAGIC = 0xEB9F
# The user thread pointer in struct task_struct, per architecture.
THREAD_POINTER_FIELD = {AMD64: ("thread", "fsbase"), "arm64": ("thread", "uw", "tp_value")}

_HEADER = struct.Struct("<HBBIIIII")  # magic, version, flags, hdr_len, type/str off+len
_TYPE = struct.Struct("<III")  # name_off, info, size or type
_MEMBER = struct.Struct("<III")  # name_off, type, offset
_STRUCT, _UNION = 4, 5
_MODIFIERS = {8, 9, 10, 11, 18}  # typedef, volatile, const, restrict, type tag
# Bytes after the fixed part, by kind: a constant, or per vlen entry.
_FIXED_EXTRA = {1: 4, 3: 12, 14: 4, 17: 4}
_PER_ENTRY = {4: 12, 5: 12, 6: 8, 13: 8, 15: 12, 19: 12}


class BtfError(ValueError):
    pass


class Btf:
    """The types of one BTF blob, indexed by id (1-based)."""

    def __init__(self, blob: bytes) -> None:
        if len(blob) < _HEADER.size:
            raise BtfError("shorter than a BTF header")
        magic, _version, _flags, hdr_len, type_off, type_len, str_off, str_len = \
            _HEADER.unpack_from(blob)
        if magic != BTF_MAGIC or hdr_len + max(type_off + type_len, str_off + str_len) > len(blob):
            raise BtfError("not a BTF blob (magic or section bounds)")
        self._types = memoryview(blob)[hdr_len + type_off:hdr_len + type_off + type_len]
        self._strings = bytes(blob[hdr_len + str_off:hdr_len + str_off + str_len])
        self._offsets = [0]  # type id -> position of its fixed part (id 0: void)
        pos = 0
        while pos + _TYPE.size <= len(self._types):
            _name, info, _size = _TYPE.unpack_from(self._types, pos)
            kind, vlen = (info >> 24) & 0x1F, info & 0xFFFF
            self._offsets.append(pos)
            pos += _TYPE.size + _FIXED_EXTRA.get(kind, 0) + _PER_ENTRY.get(kind, 0) * vlen

    def name(self, offset: int) -> str:
        end = self._strings.find(b"\0", offset)
        return self._strings[offset:end if end >= 0 else None].decode(errors="replace")

    def _type(self, type_id: int) -> tuple[str, int, int, int, int]:
        """(name, kind, vlen, kind_flag, size or type) of a type id."""
        if not 0 < type_id < len(self._offsets):
            raise BtfError(f"type id {type_id} out of range")
        name_off, info, size = _TYPE.unpack_from(self._types, self._offsets[type_id])
        return self.name(name_off), (info >> 24) & 0x1F, info & 0xFFFF, info >> 31, size

    def find_struct(self, name: str) -> int | None:
        for type_id in range(1, len(self._offsets)):
            found, kind, _, _, _ = self._type(type_id)
            if kind == _STRUCT and found == name:
                return type_id
        return None

    def member(self, type_id: int, name: str) -> tuple[int, int] | None:
        """(byte offset, member type id, modifiers skipped) of a struct/union member."""
        while True:
            _, kind, _, _, target = self._type(type_id)
            if kind not in _MODIFIERS:
                break
            type_id = target
        _, kind, vlen, kind_flag, _ = self._type(type_id)
        if kind not in (_STRUCT, _UNION):
            return None
        pos = self._offsets[type_id] + _TYPE.size
        for i in range(vlen):
            name_off, member_type, offset = _MEMBER.unpack_from(self._types, pos + i * 12)
            bits = offset & 0xFFFFFF if kind_flag else offset
            if self.name(name_off) == name and bits % 8 == 0:
                return bits // 8, member_type
        return None

    def offset_of(self, struct_name: str, path: tuple[str, ...]) -> int | None:
        type_id = self.find_struct(struct_name)
        total = 0
        for name in path:
            if type_id is None:
                return None
            found = self.member(type_id, name)
            if found is None:
                return None
            total += found[0]
            type_id = found[1]
        return total


@lru_cache(maxsize=4)
def task_thread_pointer_offset(arch: str, path: Path = VMLINUX_BTF) -> int | None:
    """Offset of the user thread pointer in the running kernel's task_struct, or
    None if the kernel has no BTF or the field is not where we look."""
    try:
        blob = path.read_bytes()
    except OSError:
        return None
    try:
        return Btf(blob).offset_of("task_struct", THREAD_POINTER_FIELD[arch])
    except (BtfError, struct.error, KeyError):
        return None
