"""The shared resources a service opens at start-up and closes at shutdown.

A service says which it needs (the event bus, the object store); :class:`Dependencies` opens
them before the gRPC port is bound — so a service never reports SERVING without them — and
closes them after in-flight RPCs have finished (the bus is drained, so no ack is lost).
"""

from __future__ import annotations

import asyncio
import logging

from flywheel_common.events import EventBus
from flywheel_common.objectstore import ObjectStore, open_object_store
from flywheel_common.server import GrpcApp
from flywheel_common.settings import ServiceSettings

log = logging.getLogger("flywheel.runtime")


class StartupError(RuntimeError):
    """A dependency could not be reached at start-up; the message names it and its address."""


class Dependencies:
    """Event bus and object store of one service, opened and closed with its :class:`GrpcApp`."""

    def __init__(self, settings: ServiceSettings, name: str, *, events: bool, objects: bool) -> None:
        self.settings = settings
        self.name = name
        self.want_events = events
        self.want_objects = objects
        self._bus: EventBus | None = None
        self._store: ObjectStore | None = None

    @property
    def bus(self) -> EventBus:
        if self._bus is None:
            raise RuntimeError(f"{self.name}: the event bus is not open (not asked for, or before start-up)")
        return self._bus

    @property
    def store(self) -> ObjectStore:
        if self._store is None:
            raise RuntimeError(
                f"{self.name}: the object store is not open (not asked for, or before start-up)"
            )
        return self._store

    def attach(self, app: GrpcApp) -> Dependencies:
        app.on_startup.append(self.open)
        app.on_shutdown.append(self.close)
        return self

    async def open(self) -> None:
        if self.want_objects:
            store = open_object_store(self.settings.object_store)
            try:
                await asyncio.to_thread(store.ensure_ready)
            except Exception as err:
                raise StartupError(f"{self.name}: object store not usable: {err}") from err
            self._store = store
            log.info("object store ready", extra={"backend": self.settings.object_store.backend})
        if self.want_events:
            nats = self.settings.nats
            try:
                bus = await EventBus.connect(nats, name=self.name)
            except Exception as err:
                raise StartupError(
                    f"{self.name}: cannot connect to NATS at {nats.url} (FLYWHEEL_NATS_URL): {err}"
                ) from err
            try:
                await bus.ensure_stream()
            except Exception as err:
                await bus.close()
                raise StartupError(
                    f"{self.name}: cannot set up the JetStream stream {nats.stream}: {err}"
                ) from err
            self._bus = bus
            log.info("event bus ready", extra={"nats_url": nats.url, "stream": nats.stream})

    async def close(self) -> None:
        if self._bus is not None:
            await self._bus.close()
            self._bus = None
