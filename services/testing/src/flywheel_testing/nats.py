"""Pytest plugin: a real nats-server (JetStream) for the test session, and an event bus per test.

Loaded by the repository's root ``conftest.py`` (``pytest_plugins``) or ``-p flywheel_testing.nats``.

Fixtures
--------
``nats_server`` (session)
    One :class:`~flywheel_common.natsserver.NatsServerProcess` on a free port, with its JetStream
    store in a session temporary folder; stopped at the end of the session.
``nats_url`` (session)
    Its client URL, e.g. ``nats://127.0.0.1:40123``.
``nats_settings`` (function)
    :class:`~flywheel_common.events.NatsSettings` for that server, with the production stream
    name and subjects (``FLYWHEEL``, ``flywheel.>``) and short redelivery back-offs. Requesting it
    gives the test a clean slate (see isolation below).
``event_bus`` (function)
    A connected :class:`~flywheel_common.events.EventBus` whose stream exists; closed after the test.

Isolation: delete, do not rename
--------------------------------
Two streams of one server cannot capture overlapping subjects, so tests cannot each get their own
stream over ``flywheel.>``; a per-test subject prefix would not work either, because services
publish on fixed subjects (``flywheel.trajectory.stored``). Instead every test uses the real stream
name and subjects, and ``nats_settings`` **deletes every Flywheel stream** (any stream capturing
``flywheel.*`` subjects or a bare wildcard), with its messages and consumers, before the test and
again after it. So no test sees another test's messages, and a service started by the test with
``FLYWHEEL_NATS_URL=nats_url`` shares the stream that ``event_bus`` reads, which lets a test watch
the events the service publishes. Streams of other subjects (e.g. KV buckets) are left alone.
Tests that use this server must therefore not run concurrently in one session (pytest-xdist
workers each get their own session, hence their own server).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator

import nats
import pytest
import pytest_asyncio

from flywheel_common.events import EventBus, NatsSettings
from flywheel_common.natsserver import NatsServerProcess

__all__ = ["delete_flywheel_streams", "event_bus", "nats_server", "nats_settings", "nats_url"]


@pytest.fixture(scope="session")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServerProcess]:
    """A real nats-server with JetStream for the whole test session."""
    root = tmp_path_factory.mktemp("nats")
    server = NatsServerProcess(store_dir=root / "store", log_file=root / "nats-server.log")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def nats_url(nats_server: NatsServerProcess) -> str:
    return nats_server.url


def _is_flywheel_subject(subject: str) -> bool:
    first = subject.split(".", 1)[0]
    return first in ("flywheel", "*", ">")


async def delete_flywheel_streams(url: str) -> list[str]:
    """Delete every stream on ``url`` that captures Flywheel subjects; returns their names."""
    nc = await nats.connect(url, connect_timeout=5, allow_reconnect=False)
    try:
        js = nc.jetstream()
        deleted = []
        for info in await js.streams_info():
            name = info.config.name
            if name is not None and any(_is_flywheel_subject(s) for s in info.config.subjects or []):
                await js.delete_stream(name)
                deleted.append(name)
        return deleted
    finally:
        with contextlib.suppress(Exception):
            await nc.close()


@pytest_asyncio.fixture
async def nats_settings(nats_url: str) -> AsyncIterator[NatsSettings]:
    """Settings for the session's server; the Flywheel streams are wiped before and after the test."""
    await delete_flywheel_streams(nats_url)
    # Every field that matters is given explicitly so that FLYWHEEL_NATS_* in the developer's
    # environment cannot leak into the tests.
    yield NatsSettings(
        url=nats_url,
        stream="FLYWHEEL",
        subjects=["flywheel.>"],
        duplicate_window_s=120,
        ack_wait_s=30,
        max_deliver=10,
        storage="file",
        connect_timeout_s=5,
        retry_delay_s=0.1,
        retry_delay_max_s=1.0,
        fetch_timeout_s=5,
    )
    await delete_flywheel_streams(nats_url)


@pytest_asyncio.fixture
async def event_bus(nats_settings: NatsSettings, request: pytest.FixtureRequest) -> AsyncIterator[EventBus]:
    """A connected EventBus with its (fresh, empty) stream created; closed after the test."""
    bus = await EventBus.connect(nats_settings, name=f"pytest:{request.node.name}")
    try:
        await bus.ensure_stream()
        yield bus
    finally:
        await bus.close()
