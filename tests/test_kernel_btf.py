"""The BTF reader that finds the thread pointer in the kernel's task struct
(harness/live/kernel_btf.py), on hand-built BTF and on this kernel's."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from harness.arch import host_arch
from harness.live.kernel_btf import VMLINUX_BTF, Btf, BtfError, task_thread_pointer_offset


def _blob() -> bytes:
    """struct task_struct { int pid; const struct thread_struct thread; } with
    struct thread_struct { long sp; long fsbase; } (kind_flag bit offsets on the first)."""
    strings = b"\0int\0long\0task_struct\0pid\0thread\0thread_struct\0sp\0fsbase\0"
    name = {s: strings.index(s.encode() + b"\0") for s in
            ("int", "long", "task_struct", "pid", "thread", "thread_struct", "sp", "fsbase")}
    types = b"".join([
        struct.pack("<III", name["int"], 1 << 24, 4) + struct.pack("<I", 32),     # 1 int
        struct.pack("<III", name["long"], 1 << 24, 8) + struct.pack("<I", 64),    # 2 long
        struct.pack("<III", 0, 2 << 24, 1),                                       # 3 ptr: skipped
        struct.pack("<III", name["thread_struct"], 4 << 24 | 2, 16)               # 4 struct
        + struct.pack("<III", name["sp"], 2, 0) + struct.pack("<III", name["fsbase"], 2, 64),
        struct.pack("<III", 0, 10 << 24, 4),                                      # 5 const
        struct.pack("<III", name["task_struct"], 1 << 31 | 4 << 24 | 2, 24)       # 6 struct
        + struct.pack("<III", name["pid"], 1, 0) + struct.pack("<III", name["thread"], 5, 64),
    ])
    header = struct.pack("<HBBIIIII", 0xEB9F, 1, 0, 24, 0, len(types), len(types), len(strings))
    return header + types + strings


def test_offset_through_a_modifier_and_kind_flag_offsets() -> None:
    btf = Btf(_blob())
    assert btf.offset_of("task_struct", ("thread", "fsbase")) == 8 + 8
    assert btf.offset_of("task_struct", ("thread", "nothing")) is None
    assert btf.offset_of("nothing", ("thread",)) is None


def test_not_btf_is_an_error() -> None:
    with pytest.raises(BtfError):
        Btf(b"\0" * 40)
    with pytest.raises(BtfError):
        Btf(b"\x9f\xeb")


def test_missing_btf_gives_none(tmp_path: Path) -> None:
    assert task_thread_pointer_offset("amd64", tmp_path / "vmlinux") is None


def test_this_kernels_task_struct() -> None:
    if not VMLINUX_BTF.exists():
        pytest.skip(f"{VMLINUX_BTF} is missing (a kernel without BTF)")
    arch = host_arch()
    if arch is None:
        pytest.skip("neither an amd64 nor an arm64 host")
    offset = task_thread_pointer_offset(arch)
    # task_struct is a few KiB; thread comes late in it (its layout varies by build,
    # hence the lookup: the live Python tests check the value end to end)
    assert offset is not None and 0x400 < offset < 0x4000 and offset % 8 == 0
