"""Several trajectory-store replicas on one PostgreSQL index (two real gRPC services, one object
store, one schema): they answer alike, share one clock and one watermark, and race safely."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from flywheel.trajectory.v1 import trajectory_pb2 as pb
from flywheel_common.errors import Unavailable
from flywheel_common.events import EventBus
from flywheel_common.runtime import StartupError
from flywheel_common.settings import SettingsError, load_settings
from flywheel_trajectory.index import Query
from flywheel_trajectory.model import IndexRow
from flywheel_trajectory.pg_index import PostgresIndex
from flywheel_trajectory.settings import TrajectorySettings

from .conftest import Service, full_trajectory, running, stored_events
from .test_api import _all_ids, _batch, _rebuilt_equals_live


@pytest.fixture
def pg_env(service_env: dict[str, str], postgres_database: str, postgres_schema: str) -> dict[str, str]:
    return {
        **service_env,
        "FLYWHEEL_TRAJECTORY_DATABASE_URL": postgres_database,
        "FLYWHEEL_TRAJECTORY_DATABASE_SCHEMA": postgres_schema,
    }


@contextlib.asynccontextmanager
async def two_replicas(env: dict[str, str], tmp_path: Path) -> AsyncIterator[tuple[Service, Service]]:
    # Both boot at once: schema creation and the start-up rebuild decision race on purpose.
    a_cm, b_cm = running(env, tmp_path / "idx-a"), running(env, tmp_path / "idx-b")
    a, b = await asyncio.gather(a_cm.__aenter__(), b_cm.__aenter__())
    try:
        yield a, b
    finally:
        await b_cm.__aexit__(None, None, None)
        await a_cm.__aexit__(None, None, None)


async def _pages(svc: Service, flt: pb.TrajectoryFilter, size: int) -> list[tuple[list[bytes], str]]:
    """Every page of a listing: (serialized trajectories, next page token)."""
    pages, token = [], ""
    while True:
        reply = await svc.stub.ListTrajectories(
            pb.ListTrajectoriesRequest(filter=flt, page_size=size, page_token=token)
        )
        pages.append(
            ([t.SerializeToString(deterministic=True) for t in reply.trajectories], reply.next_page_token)
        )
        token = reply.next_page_token
        if not token:
            return pages


async def _export(svc: Service, flt: pb.TrajectoryFilter) -> list[bytes]:
    return [
        m.trajectory.SerializeToString(deterministic=True)
        async for m in svc.stub.ExportTrajectories(pb.ExportTrajectoriesRequest(filter=flt))
    ]


def _rows(env: dict[str, str]) -> list[tuple[str, int]]:
    """(id, count) of every id in the shared table, straight from PostgreSQL."""
    with psycopg.connect(env["FLYWHEEL_TRAJECTORY_DATABASE_URL"]) as conn:
        query = sql.SQL("SELECT id, COUNT(*) FROM {}.trajectories GROUP BY id ORDER BY id").format(
            sql.Identifier(env["FLYWHEEL_TRAJECTORY_DATABASE_SCHEMA"])
        )
        return [(str(i), int(n)) for i, n in conn.execute(query)]


async def test_two_replicas_answer_identically(pg_env: dict[str, str], tmp_path: Path) -> None:
    async with two_replicas(pg_env, tmp_path) as (a, b):
        written = [
            full_trajectory(f"r-{i:02d}", run_id="run-x" if i % 3 else "run-y", resolved=i % 2 == 0)
            for i in range(40)
        ]
        assert (await _batch(a.stub, written[:25])).created_count == 25
        assert (await _batch(b.stub, written[25:])).created_count == 15  # writes through both
        for flt in [
            pb.TrajectoryFilter(),
            pb.TrajectoryFilter(run_ids=["run-x"]),
            pb.TrajectoryFilter(outcome=pb.OUTCOME_FILTER_RESOLVED, labels={"team": "a"}),
        ]:
            pages_a, pages_b = await _pages(a, flt, 7), await _pages(b, flt, 7)
            assert pages_a == pages_b and len(pages_a) > 1
            # A page token issued by one replica continues on the other.
            token = pages_a[0][1]
            reply = await b.stub.ListTrajectories(
                pb.ListTrajectoriesRequest(filter=flt, page_size=7, page_token=token)
            )
            assert [t.SerializeToString(deterministic=True) for t in reply.trajectories] == pages_a[1][0]
            assert await _export(a, flt) == await _export(b, flt)
        got_a = await a.stub.GetTrajectory(pb.GetTrajectoryRequest(trajectory_id="r-30"))
        got_b = await b.stub.GetTrajectory(pb.GetTrajectoryRequest(trajectory_id="r-30"))
        assert got_a == got_b and got_a.trajectory.steps
        listed = [t async for t in _all_ids(a.stub, pb.TrajectoryFilter(), page_size=1000)]
        assert [t.id for t in listed] == [f"r-{i:02d}" for i in range(40)]  # one clock: put order

        # A DeleteRun through one replica is what the other lists.
        reply = await b.stub.DeleteRun(pb.DeleteRunRequest(run_id="run-y", reason="test"))
        assert reply.deleted_count == 14
        assert await _pages(a, pb.TrajectoryFilter(), 50) == await _pages(b, pb.TrajectoryFilter(), 50)
        assert len(_rows(pg_env)) == 26

        # Rebuilt from the objects alone: the same rows, and a replica started on a rebuilt
        # schema lists exactly the same pages.
        live, rebuilt = _rebuilt_equals_live(pg_env, a.index_dir, tmp_path)
        assert live == rebuilt and len(live) == 26
        before = await _pages(a, pb.TrajectoryFilter(), 5)
    fresh = {
        **pg_env,
        "FLYWHEEL_TRAJECTORY_DATABASE_SCHEMA": pg_env["FLYWHEEL_TRAJECTORY_DATABASE_SCHEMA"] + "_r",
    }
    try:
        async with running(fresh, tmp_path / "idx-c") as c:
            assert await _pages(c, pb.TrajectoryFilter(), 5) == before
        async with running(pg_env, tmp_path / "idx-a", rebuild_index_on_start=True) as a:
            assert await _pages(a, pb.TrajectoryFilter(), 5) == before
    finally:
        with psycopg.connect(pg_env["FLYWHEEL_TRAJECTORY_DATABASE_URL"], autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(
                    sql.Identifier(fresh["FLYWHEEL_TRAJECTORY_DATABASE_SCHEMA"])
                )
            )


async def test_concurrent_puts_of_one_trajectory_through_both_give_one_row(
    pg_env: dict[str, str], tmp_path: Path, event_bus: EventBus, nats_url: str
) -> None:
    async with two_replicas(pg_env, tmp_path) as (a, b):
        same = [full_trajectory(f"same-{i}", run_id="run-s") for i in range(30)]
        replies = await asyncio.gather(*(_batch(svc.stub, same) for svc in (a, b, a, b)))
        assert sum(r.created_count for r in replies) == 30 and not any(r.errors for r in replies)
        assert sum(r.unchanged_count for r in replies) == 3 * 30
        singles = await asyncio.gather(
            *(
                svc.stub.PutTrajectory(
                    pb.PutTrajectoryRequest(trajectory=full_trajectory("one", run_id="run-s"))
                )
                for svc in (a, b) * 4
            )
        )
        assert sum(r.created for r in singles) == 1
        assert len({r.trajectory.create_time.ToMicroseconds() for r in singles}) == 1
        assert _rows(pg_env) == sorted([(f"same-{i}", 1) for i in range(30)] + [("one", 1)])
    events = await stored_events(nats_url)
    assert sorted(e.trajectory_id for _, e in events) == sorted([f"same-{i}" for i in range(30)] + ["one"])


async def test_paging_through_one_replica_while_the_other_writes(
    pg_env: dict[str, str], tmp_path: Path
) -> None:
    """The shared watermark: a page read on B never skips a put that A makes visible later."""
    async with two_replicas(pg_env, tmp_path) as (a, b):
        base = [full_trajectory(f"p-{i:02d}") for i in range(20)]
        await _batch(a.stub, base)

        async def writer(svc: Service, prefix: str) -> None:
            for i in range(25):
                await svc.stub.PutTrajectory(
                    pb.PutTrajectoryRequest(trajectory=full_trajectory(f"{prefix}-{i:02d}"))
                )

        tasks = [asyncio.create_task(writer(a, "za")), asyncio.create_task(writer(b, "zb"))]
        seen = []
        for _ in range(4):
            seen.extend([t async for t in _all_ids(b.stub, pb.TrajectoryFilter(), page_size=3)])
            await asyncio.sleep(0)
        await asyncio.gather(*tasks)
        final = [t async for t in _all_ids(a.stub, pb.TrajectoryFilter(), page_size=1000)]
        assert len(final) == 70 and [t.id for t in final] == [
            t.id async for t in _all_ids(b.stub, pb.TrajectoryFilter(), 1000)
        ]
        order = {t.id: n for n, t in enumerate(final)}
        # Every listing pass was a prefix of the final order: nothing skipped, nothing out of order.
        passes: list[list[str]] = []
        for t in seen:
            if not passes or order[t.id] <= order[passes[-1][-1]]:
                passes.append([])
            passes[-1].append(t.id)
        for ids in passes:
            assert ids == [t.id for t in final[: len(ids)]]


async def test_a_bad_database_url_fails_at_start_naming_the_setting(
    service_env: dict[str, str], tmp_path: Path
) -> None:
    env = {
        **service_env,
        "FLYWHEEL_TRAJECTORY_DATABASE_URL": "postgresql://flywheel:hunter2@127.0.0.1:1/nowhere",
    }
    with pytest.raises(StartupError) as err:
        async with running(env, tmp_path / "idx"):
            pass
    message = str(err.value)
    assert "FLYWHEEL_TRAJECTORY_DATABASE_URL" in message and "cannot connect to PostgreSQL" in message
    assert "hunter2" not in message and "flywheel:***@127.0.0.1:1/nowhere" in message

    # Not a PostgreSQL URL at all: the settings refuse it, without echoing the password.
    with pytest.raises(SettingsError) as bad:
        env = {"FLYWHEEL_TRAJECTORY_DATABASE_URL": "mysql://u:hunter2@db/x"}
        with pytest.MonkeyPatch.context() as mp:
            for k, v in env.items():
                mp.setenv(k, v)
            load_settings(TrajectorySettings)
    assert "FLYWHEEL_TRAJECTORY_DATABASE_URL" in str(bad.value) and "hunter2" not in str(bad.value)


def _row(trajectory_id: str, create_time_us: int) -> IndexRow:
    return IndexRow(
        trajectory_id,
        create_time_us,
        "run",
        "suite",
        "task",
        0,
        "m",
        "",
        0,
        1,
        0,
        "{}",
        f"trajectories/{trajectory_id}.pb",
        1,
        "0" * 64,
        "1" * 64,
        b"",
    )


def test_one_clock_and_one_watermark_across_index_replicas(
    postgres_database: str, postgres_schema: str
) -> None:
    """Index level, step by step: what the service tests above can only race for."""
    a, b = (
        PostgresIndex(postgres_database, postgres_schema),
        PostgresIndex(postgres_database, postgres_schema),
    )
    try:
        # A takes a time far ahead of B's clock; B's next put still sorts after it.
        tokens_a, times_a = a.begin_puts(["x", None], [5_000_000, 5_000_001])
        tokens_b, times_b = b.begin_puts(["y"], [1_000])
        assert times_a == [5_000_000, 5_000_001] and times_b == [5_000_002]
        # B's put finishes first: it stays hidden while A's earlier put is in flight.
        assert b.insert([_row("y", times_b[0])]) == {"y"}
        b.end_puts(tokens_b)
        b.clear_pending(tokens_b)
        assert b.page(Query(), None, 10, None) == [] and a.page(Query(), None, 10, None) == []
        assert b.snapshot_bound(None, 0) == times_a[0]
        assert a.insert([_row("x", times_a[0])]) == {"x"} and a.insert([_row("x", times_a[0])]) == set()
        a.end_puts(tokens_a)
        a.clear_pending(tokens_a)
        assert [r[1] for r in b.page(Query(), None, 10, None)] == ["x", "y"]
        # A replica that dies with a put in flight holds nothing back, and its journal is recovered.
        tokens_a, times_a = a.begin_puts(["z"], [0])
        tokens_b, times_b = b.begin_puts(["w"], [0])
        b.insert([_row("w", times_b[0])])
        b.end_puts(tokens_b)
        b.clear_pending(tokens_b)
        assert [r[1] for r in b.page(Query(), None, 10, None)] == ["x", "y"]  # w waits for z
        assert b.pending() == []  # A is alive: its entries are its own
        a.close()
        # The server drops a closed session's locks a moment after the client hangs up.
        deadline = time.monotonic() + 10
        while len(b.page(Query(), None, 10, None)) < 3 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert [r[1] for r in b.page(Query(), None, 10, None)] == ["x", "y", "w"]
        assert [(t, i) for t, i, _ in b.pending()] == [(tokens_a[0], "z")]
    finally:
        a.close()
        b.close()


def test_a_dropped_connection_is_unavailable_once_then_reconnected(
    postgres_database: str, postgres_schema: str
) -> None:
    index = PostgresIndex(postgres_database, postgres_schema)
    try:
        index.insert([_row("a", 1)])
        assert index.count() == 1
        with psycopg.connect(postgres_database, autocommit=True) as admin:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        time.sleep(0.2)
        with pytest.raises(Unavailable, match="FLYWHEEL_TRAJECTORY_DATABASE_URL"):
            index.insert([_row("b", 2)])
        assert index.insert([_row("b", 2)]) == {"b"}  # reconnected, liveness lock retaken
        with pytest.raises(Unavailable):
            index.count()
        assert index.count() == 2
        with psycopg.connect(postgres_database) as admin:
            held = admin.execute(
                "SELECT COUNT(*) FROM pg_locks WHERE locktype = 'advisory' AND classid = %s::oid "
                "AND objid = %s::oid AND objsubid = 2 AND granted",
                (index.lock_class, index.owner),
            ).fetchone()
        assert held == (1,)
    finally:
        index.close()
