"""Per-module unwind tables ("stack deltas") derived from DWARF call frame information.

The eBPF unwinder cannot interpret DWARF CFI at sample time, so - like a profiler's
user-space agent - we pre-digest each module's .eh_frame/.debug_frame into a flat,
sorted list of (address, rule) pairs. Each rule says how to find the caller's frame
(CFA, saved frame pointer, return address) for every PC up to the next entry; the C
side binary-searches this list. The CFA_* constants below are the rule vocabulary
shared with the C code (`enum cfa_op` in bpf_src/types.h; tests/test_abi_constants.py
checks that the two agree).

Extraction costs about 0.1 s for libc with the direct decoder (eh_frame.py; the
pyelftools one in cfi.py, its fallback, takes ten times as long), so results are
cached per module content hash in a compact, checksummed binary file.
"""

from __future__ import annotations

import logging
import os
import re
import struct
import sys
import zlib
from array import array
from functools import lru_cache
from pathlib import Path

from ..arch import AMD64, ARM64
from ..errors import HarnessError
from ..files import atomic_file
from .model import (
    _CFA_OPS,
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
    FORMAT_VERSION,
    FP_AT_FP,
    FRAME_POINTER_RULE,
    PLT_ENTRY_SIZE,
    ModuleUnwindData,
    UnwindRule,
    plt_pushed_bytes,
)

__all__ = ["CFA_DEREF_FP", "CFA_FP", "CFA_GO_ASMCGOCALL", "CFA_GO_SAVED_SP", "CFA_GO_STACK_SWITCH",
           "CFA_INVALID", "CFA_PLT", "CFA_SIGNAL", "CFA_SP", "CFA_STOP",
           "FORMAT_VERSION", "FP_AT_FP", "FRAME_POINTER_RULE", "PLT_ENTRY_SIZE", "ModuleUnwindData",
           "UnwindRule", "extract_unwind_data", "load_unwind_data", "module_unwind_data",
           "synthesized_ranges",
           "plt_pushed_bytes"]

log = logging.getLogger(__name__)


def extract_unwind_data(path: str | os.PathLike[str]) -> ModuleUnwindData:
    """Decode all CFI of an ELF file into stack deltas (no caching), then
    synthesize rules for the code no FDE covers (synthesize.py).

    The direct decoder (eh_frame.py, about ten times faster) handles what
    toolchains emit; anything it does not read goes to the pyelftools decoder
    (cfi.py), which is imported only then and also reports broken files."""
    from .eh_frame import extract
    from .synthesize import synthesize

    data = extract(path)  # Go functions too, from .gopclntab (go_deltas.py)
    if data is None:
        from .cfi import extract_unwind_data as decode_with_pyelftools

        data = decode_with_pyelftools(path)
    return synthesize(path, data)


# Layout (little-endian): header, meta (content id and source names, "\n"-separated),
# n_rules x 5 int32 (cfa_op, cfa_param, fp_offset, ra_offset, aux), n_deltas uint64
# vaddrs, n_deltas uint32 rule indices, n_fdes x 2 uint64 FDE ranges, n_synth x 2
# uint64 synthesized ranges, then a CRC32 of everything before it.
_MAGIC = b"UNWDELTA"
_HEADER = struct.Struct("<8sHHIIIIIII")  # magic, version, machine, fde_count, fde_errors,
#                                           n_rules, n_deltas, n_fdes, n_synth, meta_len
_RULE = struct.Struct("<5i")
_CRC = struct.Struct("<I")
_MACHINES = [AMD64, ARM64]  # the header stores the index: append only
_CONTENT_ID = re.compile(r"[A-Za-z0-9_.-]+")


def load_unwind_data(
    path: str | os.PathLike[str], content_id: str, cache_dir: str | os.PathLike[str]
) -> ModuleUnwindData:
    """Stack deltas for ``path``, from ``<cache_dir>/unwind/`` when possible.

    ``content_id`` must identify the file's content (e.g. a hash); it names the cache
    file, so a changed module is never served stale data. An invalid cache file is
    ignored and replaced. Writing is atomic, so concurrent workers are safe.
    """
    if not _CONTENT_ID.fullmatch(content_id) or content_id.startswith("."):
        raise ValueError(f"content_id {content_id!r} is not usable as a file name")
    cache_file = Path(cache_dir) / "unwind" / f"{content_id}.v{FORMAT_VERSION}.bin"
    try:
        blob = cache_file.read_bytes()
    except OSError:
        blob = None
    if blob is not None:
        cached = _decode_cache(blob, content_id)
        if cached is not None:
            return cached
        log.info("ignoring invalid unwind cache %s", cache_file)
    data = extract_unwind_data(path)
    _write_atomically(cache_file, _encode_cache(data, content_id))
    return data


@lru_cache(maxsize=256)
def synthesized_ranges(path: str | os.PathLike[str], content_id: str,
                       cache_dir: str | os.PathLike[str]) -> tuple[tuple[int, int], ...]:
    """ModuleUnwindData.synthesized of a module, read from the tail of its cache file
    without decoding its deltas (libpython's 65,000 take 80 ms: `analyze` marks
    frames with these ranges for modules whose deltas it never decodes)."""
    cache_file = Path(cache_dir) / "unwind" / f"{content_id}.v{FORMAT_VERSION}.bin"
    try:
        blob = cache_file.read_bytes()
    except OSError:
        blob = b""
    if len(blob) >= _HEADER.size + _CRC.size:
        (magic, version, _machine, _fdes, _errors, n_rules, n_deltas, n_fdes, n_synth,
         meta_len) = _HEADER.unpack_from(blob)
        start = (_HEADER.size + meta_len + n_rules * _RULE.size + n_deltas * 12
                 + n_fdes * 16)
        body = memoryview(blob)[:-_CRC.size]
        if (magic == _MAGIC and version == FORMAT_VERSION
                and len(blob) == start + n_synth * 16 + _CRC.size
                and _CRC.unpack_from(blob, len(body))[0] == zlib.crc32(body)
                and bytes(body[_HEADER.size:_HEADER.size + meta_len]).split(b"\n")[0]
                == content_id.encode()):
            bounds = array("Q")
            bounds.frombytes(body[start:start + n_synth * 16])
            if sys.byteorder == "big":
                bounds.byteswap()
            return tuple(zip(bounds[::2], bounds[1::2], strict=True))
    return tuple(module_unwind_data(path, content_id, cache_dir).synthesized)


@lru_cache(maxsize=64)
def _loaded(path: str, content_id: str, cache_dir: str) -> ModuleUnwindData:
    return load_unwind_data(path, content_id, cache_dir)


def module_unwind_data(path: str | os.PathLike[str], content_id: str,
                       cache_dir: str | os.PathLike[str]) -> ModuleUnwindData:
    """load_unwind_data, remembered for the life of the process.

    A module's content never changes under its content id, so everything in one
    process that needs its unwind data (the agent filling the maps, the site
    classifier, the validators) shares one decoded copy. Callers must not modify it.
    """
    return _loaded(os.fspath(path), content_id, os.fspath(cache_dir))


def _encode_cache(data: ModuleUnwindData, content_id: str) -> bytes:
    rule_index: dict[UnwindRule, int] = {}
    indices = array("I", (rule_index.setdefault(r, len(rule_index)) for _, r in data.deltas))
    vaddrs = array("Q", (addr for addr, _ in data.deltas))
    ranges = array("Q", (bound for fde in data.fde_ranges for bound in fde))
    synthesized = array("Q", (bound for piece in data.synthesized for bound in piece))
    if sys.byteorder == "big":
        indices.byteswap()
        vaddrs.byteswap()
        ranges.byteswap()
        synthesized.byteswap()
    meta = "\n".join([content_id, *data.sources]).encode()
    parts = [
        _HEADER.pack(
            _MAGIC,
            FORMAT_VERSION,
            _MACHINES.index(data.machine),
            data.fde_count,
            data.fde_errors,
            len(rule_index),
            len(data.deltas),
            len(data.fde_ranges),
            len(data.synthesized),
            len(meta),
        ),
        meta,
        b"".join(
            _RULE.pack(r.cfa_op, r.cfa_param, r.fp_offset, r.ra_offset, r.aux) for r in rule_index
        ),
        vaddrs.tobytes(),
        indices.tobytes(),
        ranges.tobytes(),
        synthesized.tobytes(),
    ]
    body = b"".join(parts)
    return body + _CRC.pack(zlib.crc32(body))


def _decode_cache(blob: bytes, content_id: str) -> ModuleUnwindData | None:
    """Parse a cache file; None if it is in any way not what we wrote."""
    if len(blob) < _HEADER.size + _CRC.size:
        return None
    (magic, version, machine, fde_count, fde_errors, n_rules, n_deltas, n_fdes, n_synth,
     meta_len) = _HEADER.unpack_from(blob)
    expected = (_HEADER.size + meta_len + n_rules * _RULE.size + n_deltas * 12
                + (n_fdes + n_synth) * 16 + _CRC.size)
    if magic != _MAGIC or version != FORMAT_VERSION or len(blob) != expected:
        return None
    body = memoryview(blob)[: -_CRC.size]
    if _CRC.unpack_from(blob, len(body))[0] != zlib.crc32(body) or machine >= len(_MACHINES):
        return None
    pos = _HEADER.size
    try:
        stored_id, *sources = bytes(body[pos : pos + meta_len]).decode().split("\n")
    except UnicodeDecodeError:
        return None
    if stored_id != content_id:
        return None
    pos += meta_len
    rules_end = pos + n_rules * _RULE.size
    rules = [UnwindRule(*fields) for fields in _RULE.iter_unpack(body[pos:rules_end])]
    vaddrs, indices, ranges, synthesized = array("Q"), array("I"), array("Q"), array("Q")
    indices_start = rules_end + n_deltas * 8
    ranges_start = indices_start + n_deltas * 4
    synth_start = ranges_start + n_fdes * 16
    vaddrs.frombytes(body[rules_end:indices_start])
    indices.frombytes(body[indices_start:ranges_start])
    ranges.frombytes(body[ranges_start:synth_start])
    synthesized.frombytes(body[synth_start:])
    if sys.byteorder == "big":
        for table in (vaddrs, indices, ranges, synthesized):
            table.byteswap()
    if any(r.cfa_op not in _CFA_OPS for r in rules) or (indices and max(indices) >= n_rules):
        return None
    return ModuleUnwindData(
        machine=_MACHINES[machine],
        deltas=list(zip(vaddrs, (rules[i] for i in indices), strict=True)),
        fde_count=fde_count,
        fde_errors=fde_errors,
        sources=sources,
        fde_ranges=list(zip(ranges[::2], ranges[1::2], strict=True)),
        synthesized=list(zip(synthesized[::2], synthesized[1::2], strict=True)),
    )


def _write_atomically(target: Path, payload: bytes) -> None:
    """Readers never see a partial file (files.atomic_file). Failure to cache is
    not fatal: the caller already has the data."""
    try:
        with atomic_file(target) as out:
            out.write(payload)
    except (OSError, HarnessError) as exc:
        log.warning("cannot write unwind cache %s: %s", target, exc)
