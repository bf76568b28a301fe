"""Pytest plugin: a real S3 HTTP endpoint (moto's server, as a subprocess) for the whole session.

Fixtures:

* ``s3_endpoint`` (session): starts ``python -m moto.server`` on a free 127.0.0.1 port, waits
  until it answers, yields an :class:`S3Endpoint`, and stops the server at the end. On Linux the
  server also gets SIGTERM if the test process dies, so it never outlives the session.
* ``s3_store`` (function): an :class:`~flywheel_common.objectstore.s3.S3ObjectStore` on a fresh,
  empty bucket of that endpoint, with the smallest S3 part size (5 MiB) so that multipart uploads
  happen at test sizes. The bucket is emptied and removed afterwards.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from flywheel_common.objectstore.settings import MIN_PART_SIZE, ObjectStoreSettings
from flywheel_common.procs import die_with_parent

_START_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class S3Endpoint:
    """A running S3 endpoint; moto accepts any credentials, these are the ones the fixtures use."""

    endpoint: str  # "127.0.0.1:PORT"
    access_key: str
    secret_key: str
    region: str = "us-east-1"
    pid: int = 0

    @property
    def url(self) -> str:
        return f"http://{self.endpoint}"

    def settings(self, bucket: str, **overrides: object) -> ObjectStoreSettings:
        """ObjectStoreSettings for this endpoint (ignores FLYWHEEL_OBJECT_STORE_* in the environment)."""
        values: dict[str, object] = {
            "backend": "s3",
            "endpoint": self.endpoint,
            "access_key": self.access_key,
            "secret_key": self.secret_key,
            "bucket": bucket,
            "secure": False,
            "region": self.region,
        }
        values.update(overrides)
        return ObjectStoreSettings.model_validate(values)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/", timeout=1) as response:
            return response.status < 500
    except urllib.error.HTTPError as exc:
        return exc.code < 500  # any S3 error document means the server is up
    except OSError:
        return False


def _start(log: Path) -> tuple[subprocess.Popen[bytes], int]:
    """Start moto's server on a free port; retry with another port if a race took the first one."""
    problems = []
    for _ in range(3):
        port = _free_port()
        env = {**os.environ, "AWS_DEFAULT_REGION": "us-east-1", "MOTO_ALLOW_NONEXISTENT_REGION": "true"}
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                preexec_fn=die_with_parent,
            )
        deadline = time.monotonic() + _START_TIMEOUT_S
        while time.monotonic() < deadline and proc.poll() is None:
            if _answers(f"http://127.0.0.1:{port}"):
                return proc, port
            time.sleep(0.05)
        _stop(proc)
        problems.append(
            f"port {port}: exit code {proc.returncode}; output:\n{log.read_text(errors='replace')[-2000:]}"
        )
    raise RuntimeError("moto server did not start:\n" + "\n".join(problems))


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[S3Endpoint]:
    """A moto S3 server on 127.0.0.1, shared by the session."""
    if importlib.util.find_spec("moto") is None or importlib.util.find_spec("flask") is None:
        pytest.fail("the s3_endpoint fixture needs moto[server]: pip install 'moto[server]'")
    with tempfile.TemporaryDirectory(prefix="flywheel-moto-") as tmp:
        proc, port = _start(Path(tmp) / "moto.log")
        try:
            yield S3Endpoint(
                endpoint=f"127.0.0.1:{port}",
                access_key="flywheel-test",
                secret_key="flywheel-test-secret",
                pid=proc.pid,
            )
        finally:
            _stop(proc)


@pytest.fixture
def s3_store(s3_endpoint: S3Endpoint) -> Iterator[object]:
    """A ready S3ObjectStore on a fresh bucket; emptied and removed after the test."""
    from flywheel_common.objectstore.s3 import S3ObjectStore

    bucket = f"test-{uuid.uuid4().hex[:24]}"
    store = S3ObjectStore.from_settings(s3_endpoint.settings(bucket, part_size_bytes=MIN_PART_SIZE))
    store.ensure_ready()
    try:
        yield store
    finally:
        # Free the server's memory: moto keeps every object of the session otherwise.
        with contextlib.suppress(Exception):
            for info in list(store.list()):
                store.delete(info.key)
            store._client.remove_bucket(bucket)
        store.close()
