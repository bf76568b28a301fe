"""Pytest plugin: the infrastructure backends from Docker containers or from local processes.

Every integration test that asks for a backend runs once per provider:

* ``containers``: MinIO, PostgreSQL and NATS (JetStream) containers started with
  ``testcontainers`` (pinned images below), once per session. Skipped, with the reason
  ``no Docker daemon reachable: …``, only when no Docker daemon answers; a daemon that answers
  but cannot start a container is an error, not a skip.
* ``local``: the same backends as real local processes, which always run: the moto S3 server
  (``s3_endpoint``), the session's PostgreSQL database (``postgres_database``) and the session's
  nats-server (``nats_url``).

Fixtures (session scope): ``backend_provider`` (the parameter), ``s3_backend`` (an
:class:`~flywheel_testing.s3.S3Endpoint`), ``postgres_backend`` (a URL of an empty database),
``nats_backend`` (a NATS URL with JetStream). ``testcontainers`` and ``docker`` are imported only
when the containers provider runs, so collection never needs them or a daemon.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator

import pytest

from flywheel_testing.s3 import S3Endpoint

PROVIDERS = ["containers", "local"]
MINIO_IMAGE = "minio/minio:RELEASE.2025-04-22T22-12-26Z"
POSTGRES_IMAGE = "postgres:17-alpine"
NATS_IMAGE = "nats:2.11-alpine"


@functools.cache
def docker_unreachable() -> str | None:
    """None when a Docker daemon answers a ping (DOCKER_HOST or the default socket), else why not."""
    try:
        import docker

        client = docker.from_env(timeout=5)
        try:
            client.ping()
        finally:
            client.close()
    except Exception as err:  # any failure to reach the daemon: no socket, refused, no permission
        return f"{type(err).__name__}: {err}".strip()
    return None


@pytest.fixture(scope="session", params=PROVIDERS)
def backend_provider(request: pytest.FixtureRequest) -> str:
    if request.param == "containers":
        why = docker_unreachable()
        if why is not None:
            pytest.skip(f"no Docker daemon reachable: {why}")
    return str(request.param)


@pytest.fixture(scope="session")
def s3_backend(backend_provider: str, request: pytest.FixtureRequest) -> Iterator[S3Endpoint]:
    if backend_provider == "local":
        yield request.getfixturevalue("s3_endpoint")
        return
    from testcontainers.community.minio import MinioContainer

    with MinioContainer(MINIO_IMAGE, access_key="flywheel-test", secret_key="flywheel-test-secret") as minio:
        config = minio.get_config()
        yield S3Endpoint(
            endpoint=config["endpoint"], access_key=config["access_key"], secret_key=config["secret_key"]
        )


@pytest.fixture(scope="session")
def postgres_backend(backend_provider: str, request: pytest.FixtureRequest) -> Iterator[str]:
    if backend_provider == "local":
        yield request.getfixturevalue("postgres_database")
        return
    from testcontainers.community.postgres import PostgresContainer

    with PostgresContainer(
        POSTGRES_IMAGE, username="flywheel", password="flywheel", dbname="flywheel", driver=None
    ) as pg:
        yield pg.get_connection_url()


@pytest.fixture(scope="session")
def nats_backend(backend_provider: str, request: pytest.FixtureRequest) -> Iterator[str]:
    if backend_provider == "local":
        yield request.getfixturevalue("nats_url")
        return
    from testcontainers.community.nats import NatsContainer

    with NatsContainer(NATS_IMAGE, jetstream=True) as nats:
        yield nats.nats_uri()
