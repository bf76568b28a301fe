"""The store's logic without gRPC: what happens when the event bus fails mid-put.

The bus is replaced by a recording function here (a real NATS outage cannot be timed inside one
put); everything else — object store, SQLite index, writer — is real.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from flywheel_common.errors import Unavailable
from flywheel_common.objectstore import ObjectStoreSettings
from flywheel_common.objectstore.fs import FilesystemObjectStore
from flywheel_trajectory.index import SqliteIndex
from flywheel_trajectory.store import TrajectoryStore
from flywheel_trajectory.writer import WriterPool

from .conftest import full_trajectory


async def test_a_put_whose_event_failed_is_announced_by_its_retry(tmp_path: Path) -> None:
    objects = FilesystemObjectStore(tmp_path / "objects")
    objects.ensure_ready()
    published: list[str] = []
    failing = {"on": True}

    async def publish(subject: str, message: object, msg_id: str) -> None:
        if failing["on"]:
            raise ConnectionError("nats: no servers available")
        published.append(msg_id)

    settings = ObjectStoreSettings(backend="fs", root=tmp_path / "objects")
    store = TrajectoryStore(
        objects, SqliteIndex(tmp_path / "index.sqlite"), publish, WriterPool(objects, settings, 0, 4)
    )
    try:
        with pytest.raises(Unavailable, match=r"is stored but its flywheel\.trajectory\.stored event"):
            await store.put_many([full_trajectory("t-1")])
        assert objects.exists("trajectories/t-1.pb") and store.index.has("t-1")
        assert [row[1] for row in store.index.pending()] == ["t-1"]  # still owed an event
        failing["on"] = False
        (result,) = await store.put_many([full_trajectory("t-1")])
        assert result.error is None and not result.created
        assert len(published) == 1 and published[0].startswith("trajectory-stored:t-1:")
        # A later identical put, with nothing owed, publishes nothing.
        (again,) = await store.put_many([full_trajectory("t-1")])
        assert not again.created and len(published) == 1
    finally:
        store.close()
