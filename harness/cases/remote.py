"""The remote blob store a team shares: any fsspec URL (a directory, s3://, gs://,
http(s):// read-only).

Layout: one object per blob, `<remote>/<id>.zst`, holding the same zstd bytes
as `testdata/blobs/<id>.zst`. Uploading is a copy of the compressed file, and
a directory remote looks exactly like a `testdata/blobs` directory. Objects
are immutable: an id names one content, so an existing object is never
written again; whoever reads one still checks its sha256 (BlobStore does).

Configuration, first match wins:

* `COREDUMP_REMOTE` (environment): the URL; set but empty means "no remote".
* `[tool.coredump] remote = "..."` in the repository's pyproject.toml. A
  relative directory is taken relative to that file.

fsspec storage options (e.g. an S3 `endpoint_url`, `anon = true`) come from
`COREDUMP_REMOTE_OPTIONS` (a JSON object) or `[tool.coredump.remote-options]`.
S3 credentials come from the usual AWS variables or files; `AWS_ENDPOINT_URL`
works too.
"""

from __future__ import annotations

import json
import os
import uuid
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

from ..errors import StoreError
from ..paths import PYPROJECT, tool_config
from .blobs import BLOB_ID, SUFFIX, check_id

REMOTE_ENV = "COREDUMP_REMOTE"
OPTIONS_ENV = "COREDUMP_REMOTE_OPTIONS"
READ_ONLY_PROTOCOLS = frozenset({"http", "https"})


class RemoteError(StoreError):
    """The remote store is misconfigured, unreachable, or refused an operation."""


@dataclass(frozen=True)
class RemoteConfig:
    url: str
    options: dict[str, Any] = field(default_factory=dict)
    source: str = ""  # where the URL came from, for messages

    def __hash__(self) -> int:  # options is a dict; the JSON form identifies it
        return hash((self.url, json.dumps(self.options, sort_keys=True)))


@dataclass(frozen=True)
class RemoteBlob:
    blob_id: str
    size: int
    mtime: datetime | None  # upload time (S3 LastModified, file mtime); None if unknown


class RemoteStore(ABC):
    """What the lifecycle commands and BlobStore need from a remote."""

    url: str
    read_only: bool

    @abstractmethod
    def list(self) -> dict[str, RemoteBlob]:
        """Every blob on the remote (objects not named `<id>.zst` are ignored)."""

    @abstractmethod
    def exists(self, blob_id: str) -> bool: ...

    @abstractmethod
    def fetch(self, blob_id: str, dest: Path) -> bool:
        """Write the compressed blob to dest; False if the remote lacks it."""

    @abstractmethod
    def put(self, blob_id: str, src: Path) -> bool:
        """Upload a compressed blob unless the remote has it; True if it was uploaded."""

    @abstractmethod
    def delete(self, blob_id: str) -> None: ...


def _mtime(info: Mapping[str, Any]) -> datetime | None:
    """Modification time from an fsspec info dict, whatever the backend calls it."""
    for key in ("LastModified", "mtime", "updated", "last_modified", "modified"):
        value = info.get(key)
        if value is None:
            continue
        if isinstance(value, datetime):
            return value if value.tzinfo else value.replace(tzinfo=UTC)
        if isinstance(value, int | float):
            return datetime.fromtimestamp(value, UTC)
        if isinstance(value, str):
            try:
                parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
            except ValueError:
                continue
            return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    return None


class FsspecRemote(RemoteStore):
    """A remote store on any fsspec filesystem."""

    def __init__(self, url: str, options: Mapping[str, Any] | None = None) -> None:
        try:
            import fsspec
        except ImportError as e:  # pragma: no cover - a declared dependency
            raise RemoteError("fsspec is not installed: pip install fsspec") from e
        self.url = url.rstrip("/")
        try:
            self.fs, root = fsspec.core.url_to_fs(self.url, **dict(options or {}))
        except ImportError as e:
            raise RemoteError(f"remote {url}: {e} (e.g. pip install s3fs for s3://, "
                              "gcsfs for gs://)") from e
        except (ValueError, TypeError) as e:
            raise RemoteError(f"remote {url}: {e}") from e
        self.root = str(root).rstrip("/")
        protocols = self.fs.protocol if isinstance(self.fs.protocol, tuple) else (
            self.fs.protocol,)
        self.local = "file" in protocols or "local" in protocols
        self.read_only = bool(READ_ONLY_PROTOCOLS & set(protocols))

    def __str__(self) -> str:
        return self.url

    def _path(self, blob_id: str) -> str:
        return f"{self.root}/{check_id(blob_id)}{SUFFIX}"

    def _error(self, action: str, e: Exception) -> RemoteError:
        return RemoteError(f"remote {self.url}: {action} failed: {type(e).__name__}: {e}")

    def _writable(self) -> None:
        if self.read_only:
            raise RemoteError(f"remote {self.url} is read-only (HTTP); upload and clean need "
                              "a writable store such as s3://, gs:// or a directory")

    def list(self) -> dict[str, RemoteBlob]:
        try:
            self.fs.invalidate_cache(self.root)
            entries = self.fs.ls(self.root, detail=True)
        except FileNotFoundError:
            return {}  # nothing uploaded yet
        except Exception as e:
            raise self._error("listing", e) from e
        blobs = {}
        for info in entries:
            name = str(info.get("name", "")).rstrip("/").rsplit("/", 1)[-1]
            stem = name[: -len(SUFFIX)] if name.endswith(SUFFIX) else ""
            if info.get("type", "file") == "file" and BLOB_ID.match(stem):
                blobs[stem] = RemoteBlob(stem, int(info.get("size") or 0), _mtime(info))
        return blobs

    def exists(self, blob_id: str) -> bool:
        try:
            return bool(self.fs.exists(self._path(blob_id)))
        except Exception as e:
            raise self._error(f"looking up {blob_id}", e) from e

    def fetch(self, blob_id: str, dest: Path) -> bool:
        try:
            self.fs.get_file(self._path(blob_id), str(dest))
        except FileNotFoundError:
            return False
        except Exception as e:
            raise self._error(f"downloading {blob_id}", e) from e
        return True

    def put(self, blob_id: str, src: Path) -> bool:
        self._writable()
        target = self._path(blob_id)
        try:
            if self.fs.exists(target):
                return False
            if self.local:
                # A directory is not atomic like an object PUT: write aside, then rename,
                # so an interrupted upload never leaves a partial blob under its id.
                self.fs.makedirs(self.root, exist_ok=True)
                tmp = f"{self.root}/.{blob_id}.{uuid.uuid4().hex}.tmp"
                self.fs.put_file(str(src), tmp)
                self.fs.mv(tmp, target)
            else:
                self.fs.put_file(str(src), target)
        except RemoteError:
            raise
        except Exception as e:
            raise self._error(f"uploading {blob_id}", e) from e
        finally:
            self.fs.invalidate_cache(self.root)
        return True

    def delete(self, blob_id: str) -> None:
        self._writable()
        try:
            self.fs.rm_file(self._path(blob_id))
        except FileNotFoundError:
            pass  # already gone: the goal is reached
        except Exception as e:
            raise self._error(f"deleting {blob_id}", e) from e
        finally:
            self.fs.invalidate_cache(self.root)


def _options_from_env(text: str) -> dict[str, Any]:
    try:
        options = json.loads(text)
    except json.JSONDecodeError as e:
        raise RemoteError(f"{OPTIONS_ENV} is not valid JSON: {e}") from e
    if not isinstance(options, dict):
        raise RemoteError(f"{OPTIONS_ENV} must be a JSON object, e.g. "
                          '{"endpoint_url": "http://127.0.0.1:9000"}')
    return options


def remote_config(pyproject: Path = PYPROJECT,
                  environ: Mapping[str, str] | None = None) -> RemoteConfig | None:
    """The configured remote, or None (offline: everything comes from committed blobs)."""
    env = os.environ if environ is None else environ
    tool = tool_config(pyproject)
    if REMOTE_ENV in env:
        url, source = env[REMOTE_ENV].strip(), f"${REMOTE_ENV}"
        options: Any = {}
    else:
        url = tool.get("remote", "")
        source = f"{pyproject} [tool.coredump] remote"
        options = tool.get("remote-options", {})
        if not isinstance(url, str) or not isinstance(options, dict):
            raise RemoteError(f"{pyproject}: [tool.coredump] remote must be a string and "
                              "remote-options a table")
        if url and "://" not in url and not os.path.isabs(url):
            url = str((pyproject.parent / url).resolve())
    if OPTIONS_ENV in env:
        options = _options_from_env(env[OPTIONS_ENV])
    if not url:
        return None
    return RemoteConfig(url, dict(options), source)


@lru_cache(maxsize=8)
def open_remote(config: RemoteConfig) -> RemoteStore:
    """One store object per configuration (a filesystem keeps its connections)."""
    return FsspecRemote(config.url, config.options)


def configured_remote() -> RemoteStore | None:
    config = remote_config()
    return open_remote(config) if config is not None else None


def require_remote() -> RemoteStore:
    remote = configured_remote()
    if remote is None:
        raise RemoteError(
            f"no remote store is configured: set {REMOTE_ENV}=s3://bucket/prefix (or a "
            "directory, gs://..., https://...) or `remote = \"...\"` under [tool.coredump] "
            "in pyproject.toml")
    return remote
