"""A real S3-compatible server on 127.0.0.1 for the remote-store tests (moto's
standalone server, spoken to over HTTP by s3fs/aiobotocore: no client mocking).

Tests use `s3_remote`: a fresh bucket per test, configured through the same
environment variables a user sets (COREDUMP_REMOTE, COREDUMP_REMOTE_OPTIONS).
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from harness.cases.remote import FsspecRemote, configured_remote

DUMMY_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """Start moto's S3 server on a free port of 127.0.0.1 (skips if it cannot)."""
    try:
        import s3fs  # noqa: F401
        from moto.server import ThreadedMotoServer
    except ImportError as e:
        pytest.skip(f"the local S3 server needs moto[server] and s3fs ({e}); "
                    "pip install 'moto[server]' s3fs")
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    try:
        server.start()
    except Exception as e:  # a sandbox without sockets, ...
        pytest.skip(f"cannot start moto's S3 server on 127.0.0.1: {e}")
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@dataclass
class S3Remote:
    url: str
    endpoint: str
    remote: FsspecRemote

    def put_raw(self, name: str, data: bytes) -> None:
        """Write an object directly (bypassing the store), e.g. a corrupt blob."""
        self.remote.fs.pipe(f"{self.remote.root}/{name}", data)
        self.remote.fs.invalidate_cache()


@pytest.fixture
def s3_remote(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> S3Remote:
    """A new empty bucket, configured as the remote through the environment."""
    for key, value in DUMMY_CREDENTIALS.items():
        monkeypatch.setenv(key, value)
    for key in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(key, raising=False)
    bucket = f"coredump-{uuid.uuid4().hex[:12]}"
    url = f"s3://{bucket}/blobs"
    monkeypatch.setenv("COREDUMP_REMOTE", url)
    monkeypatch.setenv("COREDUMP_REMOTE_OPTIONS", json.dumps({"endpoint_url": s3_endpoint}))
    remote = configured_remote()
    assert isinstance(remote, FsspecRemote)
    remote.fs.mkdir(bucket)
    return S3Remote(url, s3_endpoint, remote)
