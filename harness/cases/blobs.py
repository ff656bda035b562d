"""What a blob is: zstd-compressed bytes named by the sha256 of their content.

The one place that decides whether compressed bytes are the blob they claim to
be. The store checks every blob it extracts and every blob it downloads; `upload`
checks every blob before it leaves the machine.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import BinaryIO

import zstandard

from ..errors import StoreError
from ..files import CHUNK

BLOB_ID = re.compile(r"^[0-9a-f]{64}$")
SUFFIX = ".zst"  # compressed blobs are <id>.zst, in the repository and on remotes
COMPRESSION_LEVEL = 19


def check_id(blob_id: str) -> str:
    """blob_id itself, or StoreError if it is not 64 lowercase hex digits."""
    if not isinstance(blob_id, str) or not BLOB_ID.match(blob_id):
        raise StoreError(f"{blob_id!r} is not a blob id (64 lowercase hex digits of a sha256)")
    return blob_id


def verify_blob(src: Path, blob_id: str, out: BinaryIO | None = None) -> None:
    """Decompress src, streaming, and check that the content hashes to blob_id;
    the content is written to out as it goes, if given. StoreError if not."""
    digest = hashlib.sha256()
    try:
        with open(src, "rb") as f:
            reader = zstandard.ZstdDecompressor().stream_reader(f)
            while chunk := reader.read(CHUNK):
                digest.update(chunk)
                if out is not None:
                    out.write(chunk)
    except zstandard.ZstdError as e:
        raise StoreError(f"blob {src} is corrupt (not valid zstd data: {e})") from e
    if digest.hexdigest() != blob_id:
        raise StoreError(f"blob {src} is corrupt: its content hashes to {digest.hexdigest()}, "
                         f"not to its id {blob_id}")


def compress_file(src: Path, out: BinaryIO) -> None:
    compressor = zstandard.ZstdCompressor(level=COMPRESSION_LEVEL, threads=-1)
    with open(src, "rb") as f:
        compressor.copy_stream(f, out, size=src.stat().st_size)
