"""ctypes binding to the system libbpf (Debian's libbpf1), just enough to load
BPF objects into the running kernel's verifier and read back what it said.

Why ctypes and not bpftool: the harness needs the verifier's log per program
(with a log level of our choosing), the program type set before loading, and
no pins left behind. libbpf does all of that in-process, and every file
descriptor it opened is closed by bpf_object__close, so nothing outlives the
call even when it fails half-way.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
from collections.abc import Iterator
from contextlib import contextmanager
from ctypes import (
    CFUNCTYPE,
    POINTER,
    c_bool,
    c_char_p,
    c_int,
    c_size_t,
    c_uint8,
    c_uint32,
    c_uint64,
    c_void_p,
)
from dataclasses import dataclass

from ..errors import HarnessError
from ..helpers.maps import MAP_CLASSES

# enum bpf_prog_type values of the kernel's uapi bpf.h that the harness uses.
BPF_PROG_TYPE_TRACEPOINT = 5
BPF_PROG_TYPE_PERF_EVENT = 7
BPF_PROG_TYPE_RAW_TRACEPOINT = 17
PROG_TYPE_NAMES = {BPF_PROG_TYPE_TRACEPOINT: "tracepoint", BPF_PROG_TYPE_PERF_EVENT: "perf_event",
                   BPF_PROG_TYPE_RAW_TRACEPOINT: "raw_tracepoint"}

# enum bpf_map_type names, for reports.
MAP_TYPE_NAMES = {map_type: cls.type_name for map_type, cls in MAP_CLASSES.items()}

# Verifier log levels (kernel BPF_LOG_*): 1 traces every instruction, 4 only
# prints the statistics (processed insns, stack depth) and the error, if any.
LOG_LEVEL_TRACE = 1
LOG_LEVEL_STATS = 4

# enum libbpf_print_level
LIBBPF_INFO = 1


class LibbpfUnavailable(HarnessError):
    """libbpf cannot be loaded, or the kernel refuses bpf() to this process."""


class BpfObjectError(HarnessError):
    """A BPF object file could not be opened or its maps could not be created."""


_PRINT_FN = CFUNCTYPE(c_int, c_int, c_char_p, c_void_p)


class _BpfProgInfo(ctypes.Structure):
    """struct bpf_prog_info (uapi bpf.h) up to verified_insns (kernel 5.16+).
    The kernel copies min(our size, its size), so a prefix is enough."""

    _fields_ = [
        ("type", c_uint32), ("id", c_uint32), ("tag", c_uint8 * 8),
        ("jited_prog_len", c_uint32), ("xlated_prog_len", c_uint32),
        ("jited_prog_insns", c_uint64), ("xlated_prog_insns", c_uint64),
        ("load_time", c_uint64), ("created_by_uid", c_uint32), ("nr_map_ids", c_uint32),
        ("map_ids", c_uint64), ("name", ctypes.c_char * 16), ("ifindex", c_uint32),
        ("gpl_compatible", c_uint32), ("netns_dev", c_uint64), ("netns_ino", c_uint64),
        ("nr_jited_ksyms", c_uint32), ("nr_jited_func_lens", c_uint32),
        ("jited_ksyms", c_uint64), ("jited_func_lens", c_uint64),
        ("btf_id", c_uint32), ("func_info_rec_size", c_uint32), ("func_info", c_uint64),
        ("nr_func_info", c_uint32), ("nr_line_info", c_uint32), ("line_info", c_uint64),
        ("jited_line_info", c_uint64), ("nr_jited_line_info", c_uint32),
        ("line_info_rec_size", c_uint32), ("jited_line_info_rec_size", c_uint32),
        ("nr_prog_tags", c_uint32), ("prog_tags", c_uint64), ("run_time_ns", c_uint64),
        ("run_cnt", c_uint64), ("recursion_misses", c_uint64), ("verified_insns", c_uint32),
    ]


def _signatures(lib: ctypes.CDLL) -> None:
    sigs: dict[str, tuple[object, list[object]]] = {
        "libbpf_set_print": (c_void_p, [_PRINT_FN]),
        "bpf_prog_load": (c_int, [c_int, c_char_p, c_char_p, c_void_p, c_size_t, c_void_p]),
        "bpf_object__open_file": (c_void_p, [c_char_p, c_void_p]),
        "bpf_object__load": (c_int, [c_void_p]),
        "bpf_object__close": (None, [c_void_p]),
        "bpf_object__next_program": (c_void_p, [c_void_p, c_void_p]),
        "bpf_object__next_map": (c_void_p, [c_void_p, c_void_p]),
        "bpf_program__name": (c_char_p, [c_void_p]),
        "bpf_program__section_name": (c_char_p, [c_void_p]),
        "bpf_program__type": (c_int, [c_void_p]),
        "bpf_program__set_type": (c_int, [c_void_p, c_int]),
        "bpf_program__set_autoload": (c_int, [c_void_p, c_bool]),
        "bpf_program__set_log_level": (c_int, [c_void_p, c_uint32]),
        "bpf_program__set_log_buf": (c_int, [c_void_p, c_char_p, c_size_t]),
        "bpf_program__insn_cnt": (c_size_t, [c_void_p]),
        "bpf_program__fd": (c_int, [c_void_p]),
        "bpf_map__name": (c_char_p, [c_void_p]),
        "bpf_map__type": (c_int, [c_void_p]),
        "bpf_map__max_entries": (c_uint32, [c_void_p]),
        "bpf_map__key_size": (c_uint32, [c_void_p]),
        "bpf_map__value_size": (c_uint32, [c_void_p]),
        "bpf_map__map_flags": (c_uint32, [c_void_p]),
        "bpf_map__fd": (c_int, [c_void_p]),
        "bpf_obj_get_info_by_fd": (c_int, [c_int, c_void_p, POINTER(c_uint32)]),
        # the kernel back end of the maps and `coredump live` (bpf/kernel.py)
        "bpf_map_update_elem": (c_int, [c_int, c_void_p, c_void_p, c_uint64]),
        "bpf_map_lookup_elem": (c_int, [c_int, c_void_p, c_void_p]),
        "bpf_map_delete_elem": (c_int, [c_int, c_void_p]),
        "bpf_map_get_next_key": (c_int, [c_int, c_void_p, c_void_p]),
        "bpf_map_update_batch": (c_int, [c_int, c_void_p, c_void_p, POINTER(c_uint32),
                                         c_void_p]),
        "bpf_program__attach": (c_void_p, [c_void_p]),
        "bpf_link__destroy": (c_int, [c_void_p]),
        "bpf_enable_stats": (c_int, [c_int]),
        "ring_buffer__new": (c_void_p, [c_int, c_void_p, c_void_p, c_void_p]),
        "ring_buffer__poll": (c_int, [c_void_p, c_int]),
        "ring_buffer__consume": (c_int, [c_void_p]),
        "ring_buffer__free": (None, [c_void_p]),
    }
    for name, (restype, argtypes) in sigs.items():
        fn = getattr(lib, name)
        fn.restype = restype
        fn.argtypes = argtypes


_lib: ctypes.CDLL | None = None
_libc = ctypes.CDLL(None)
_libc.vsnprintf.argtypes = [c_char_p, c_size_t, c_char_p, c_void_p]
_libc.vsnprintf.restype = c_int
_messages: list[str] = []


@_PRINT_FN
def _collect_print(level: int, fmt: bytes, args: int) -> int:
    """libbpf's print callback: format warnings and infos with vsnprintf (the
    va_list is passed through as a pointer) and keep them, so errors can quote
    libbpf; debug chatter is dropped."""
    if level > LIBBPF_INFO:
        return 0
    buf = ctypes.create_string_buffer(4096)
    _libc.vsnprintf(buf, len(buf), fmt, args)
    _messages.append(buf.value.decode(errors="replace"))
    return 0


def libbpf() -> ctypes.CDLL:
    """The loaded libbpf with typed signatures; LibbpfUnavailable if missing."""
    global _lib
    if _lib is None:
        name = ctypes.util.find_library("bpf") or "libbpf.so.1"
        try:
            lib = ctypes.CDLL(name, use_errno=True)
            _signatures(lib)
        except (OSError, AttributeError) as e:
            raise LibbpfUnavailable(
                f"cannot use libbpf ({name}): {e}; install libbpf1 (scripts/bootstrap)") from e
        lib.libbpf_set_print(_collect_print)
        _lib = lib
    return _lib


# "r0 = 0; exit": the smallest program, for the permission probe.
_RETURN_ZERO = bytes.fromhex("b700000000000000" "9500000000000000")


def bpf_unavailable_reason() -> str | None:
    """Why this process cannot load perf_event programs, or None if it can.

    Loads the two-instruction program above as perf_event and keeps the
    kernel's errno (libbpf_probe_bpf_prog_type would fold EPERM into "not
    supported"): EPERM without CAP_BPF+CAP_PERFMON or when
    kernel.unprivileged_bpf_disabled applies, EINVAL on a kernel without the
    program type."""
    try:
        lib = libbpf()
    except LibbpfUnavailable as e:
        return str(e)
    insns = ctypes.create_string_buffer(_RETURN_ZERO, len(_RETURN_ZERO))
    fd = lib.bpf_prog_load(BPF_PROG_TYPE_PERF_EVENT, b"probe", b"GPL", insns,
                           len(_RETURN_ZERO) // 8, None)
    if fd >= 0:
        os.close(fd)
        return None
    if -fd in (errno.EPERM, errno.EACCES):
        return (f"bpf() is not permitted here: {os.strerror(-fd)} (loading BPF programs "
                "needs root or CAP_BPF+CAP_PERFMON)")
    return f"the kernel cannot load a BPF perf_event program: {os.strerror(-fd)}"


@dataclass(frozen=True)
class MapSpec:
    """A map as libbpf created it (the object's declared sizes)."""

    name: str
    type: int
    key_size: int
    value_size: int
    max_entries: int
    flags: int

    @property
    def type_name(self) -> str:
        return MAP_TYPE_NAMES.get(self.type, str(self.type))


@dataclass(frozen=True)
class LoadResult:
    """What the kernel said about one program."""

    program: str
    section: str
    prog_type: str
    insn_count: int            # instructions in the object file
    loaded: bool
    errno: int                 # 0 when loaded
    log: str                   # the verifier log at the level asked for
    verified_insns: int | None  # bpf_prog_info.verified_insns (None if not reported)
    libbpf_messages: tuple[str, ...]


def _programs(lib: ctypes.CDLL, obj: int) -> Iterator[int]:
    prog = lib.bpf_object__next_program(obj, None)
    while prog:
        yield prog
        prog = lib.bpf_object__next_program(obj, prog)


def _maps(lib: ctypes.CDLL, obj: int) -> Iterator[int]:
    m = lib.bpf_object__next_map(obj, None)
    while m:
        yield m
        m = lib.bpf_object__next_map(obj, m)


@contextmanager
def _open(path: str) -> Iterator[int]:
    lib = libbpf()
    _messages.clear()
    obj = lib.bpf_object__open_file(path.encode(), None)
    if not obj:
        err = ctypes.get_errno()
        raise BpfObjectError(f"libbpf cannot open {path}: {os.strerror(err)}\n"
                             + "".join(_messages).strip())
    try:
        yield obj
    finally:
        lib.bpf_object__close(obj)


def program_names(path: str) -> list[str]:
    """Names of the programs in a BPF object file, in section order."""
    lib = libbpf()
    with _open(path) as obj:
        return [lib.bpf_program__name(p).decode() for p in _programs(lib, obj)]


def program_types(path: str) -> dict[str, int]:
    """Each program's type as libbpf reads it from its section name."""
    lib = libbpf()
    with _open(path) as obj:
        return {lib.bpf_program__name(p).decode(): int(lib.bpf_program__type(p))
                for p in _programs(lib, obj)}


def map_specs(path: str) -> list[MapSpec]:
    """The maps declared in a BPF object file, as libbpf reads them."""
    lib = libbpf()
    with _open(path) as obj:
        return [MapSpec(lib.bpf_map__name(m).decode(), lib.bpf_map__type(m),
                        lib.bpf_map__key_size(m), lib.bpf_map__value_size(m),
                        lib.bpf_map__max_entries(m), lib.bpf_map__map_flags(m))
                for m in _maps(lib, obj)]


def _verified_insns(lib: ctypes.CDLL, fd: int) -> int | None:
    info = _BpfProgInfo()
    size = c_uint32(ctypes.sizeof(info))
    if lib.bpf_obj_get_info_by_fd(fd, ctypes.byref(info), ctypes.byref(size)):
        return None
    end = _BpfProgInfo.verified_insns.offset + 4
    return int(info.verified_insns) if size.value >= end else None


def load_program(path: str, program: str, prog_type: int, log_level: int,
                 log_size: int = 1 << 20) -> LoadResult:
    """Load one program of the object (and every map, at its declared size)
    into the kernel, then unload everything. Other programs are not loaded,
    so each program's verdict and log are its own."""
    lib = libbpf()
    with _open(path) as obj:
        target = None
        for prog in _programs(lib, obj):
            is_target = lib.bpf_program__name(prog).decode() == program
            lib.bpf_program__set_autoload(prog, is_target)
            if is_target:
                target = prog
        if target is None:
            raise BpfObjectError(f"{path} has no program named {program!r}")
        lib.bpf_program__set_type(target, prog_type)
        log = ctypes.create_string_buffer(log_size)
        lib.bpf_program__set_log_buf(target, log, log_size)
        lib.bpf_program__set_log_level(target, log_level)
        ret = lib.bpf_object__load(obj)
        fd = lib.bpf_program__fd(target)
        loaded = ret == 0 and fd >= 0
        return LoadResult(
            program=program,
            section=lib.bpf_program__section_name(target).decode(),
            prog_type=PROG_TYPE_NAMES.get(prog_type, str(prog_type)),
            insn_count=int(lib.bpf_program__insn_cnt(target)),
            loaded=loaded,
            errno=0 if loaded else -ret,
            log=log.value.decode(errors="replace"),
            verified_insns=_verified_insns(lib, fd) if loaded else None,
            libbpf_messages=tuple(_messages),
        )
