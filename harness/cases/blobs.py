"""What a blob is: zstd-compressed bytes named by the sha256 of their content.

The one place that decides whether compressed bytes are the blob they claim to
be. The store checks every blob it extracts and every blob it downloads; `upload`
checks every blob before it leaves the machine.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from typing import BinaryIO

import zstandard

from ..confine import open_regular
from ..errors import StoreError
from ..files import CHUNK
from ..paths import MAX_BLOB_ENV, max_blob_bytes

BLOB_ID = re.compile(r"^[0-9a-f]{64}$")
SUFFIX = ".zst"  # compressed blobs are <id>.zst, in the repository and on remotes
COMPRESSION_LEVEL = 19
FRAME_HEADER_MAX = 18  # ZSTD_FRAMEHEADERSIZE_MAX: magic, descriptor, window, dict id, size


def check_id(blob_id: str) -> str:
    """blob_id itself, or StoreError if it is not 64 lowercase hex digits."""
    if not isinstance(blob_id, str) or not BLOB_ID.match(blob_id):
        raise StoreError(f"{blob_id!r} is not a blob id (64 lowercase hex digits of a sha256)")
    return blob_id


def declared_size(src: Path, head: bytes) -> int | None:
    """The content size a zstd frame header declares (compress_file always writes it),
    None if the frame does not say."""
    try:
        size = zstandard.get_frame_parameters(head).content_size
    except zstandard.ZstdError as e:
        raise StoreError(f"blob {src} is corrupt (not valid zstd data: {e})") from None
    return None if size in (zstandard.CONTENTSIZE_UNKNOWN, zstandard.CONTENTSIZE_ERROR) \
        else int(size)


def verify_blob(src: Path, blob_id: str, out: BinaryIO | None = None) -> None:
    """Decompress src, streaming, and check that the content hashes to blob_id;
    the content is written to out as it goes, if given. StoreError if not.

    The hash is only known at the end, so the output is bounded while it streams:
    by the size the frame declares and by max_blob_bytes(). A blob that would
    decompress to more (a zstd bomb) is stopped there, not written in full.
    """
    digest = hashlib.sha256()
    limit = max_blob_bytes()
    fd = open_regular(src, "blob", StoreError)
    try:
        with os.fdopen(fd, "rb") as f:
            declared = declared_size(src, f.read(FRAME_HEADER_MAX))
            if declared is not None and declared > limit:
                raise StoreError(f"blob {src} declares {declared} bytes of content, more "
                                 f"than the limit of {limit} ({MAX_BLOB_ENV}); not extracted")
            bound = limit if declared is None else declared
            f.seek(0)
            reader = zstandard.ZstdDecompressor().stream_reader(f)
            written = 0
            while chunk := reader.read(CHUNK):
                written += len(chunk)
                if written > bound:
                    why = "it declares" if declared is not None else \
                        f"allowed ({MAX_BLOB_ENV})"
                    raise StoreError(f"blob {src} decompresses to more than the {bound} "
                                     f"bytes {why}; corrupt or hostile, not used")
                digest.update(chunk)
                if out is not None:
                    out.write(chunk)
    except zstandard.ZstdError as e:
        raise StoreError(f"blob {src} is corrupt (not valid zstd data: {e})") from e
    except OSError as e:
        raise StoreError(f"blob {src}: cannot read or write: {e.strerror or e}") from e
    if digest.hexdigest() != blob_id:
        raise StoreError(f"blob {src} is corrupt: its content hashes to {digest.hexdigest()}, "
                         f"not to its id {blob_id}")


def compress_file(src: Path, out: BinaryIO) -> None:
    compressor = zstandard.ZstdCompressor(level=COMPRESSION_LEVEL, threads=-1)
    with open(src, "rb") as f:
        compressor.copy_stream(f, out, size=src.stat().st_size)
