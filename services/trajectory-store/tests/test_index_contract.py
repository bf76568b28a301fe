"""The index contract: SQLite and PostgreSQL give the same answers to every query the store makes.

Both indexes get the same rows (written directly, with tied create times and ids whose order
depends on collation, and rebuilt from the same objects), then every filter is paged through at
several page sizes, with and without a watermark, and the pages must be equal, row for row.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from flywheel.common.v1 import common_pb2
from flywheel.trajectory.v1 import trajectory_pb2 as pb
from flywheel_common.objectstore.fs import FilesystemObjectStore
from flywheel_trajectory.index import SqliteIndex, TrajectoryIndex
from flywheel_trajectory.model import IndexRow
from flywheel_trajectory.pg_index import PostgresIndex
from flywheel_trajectory.store import build_query, rebuild_index

from .conftest import full_trajectory, running
from .test_api import _batch

# Ids whose order differs between a byte-wise and a linguistic collation ("a-1" < "A-2" in
# en_US, "A-2" < "a-1" in C): the index must order them byte-wise, as SQLite does.
IDS = ["A-2", "a-1", "a_1", "B.2", "b-10", "b-9", "Z", "z", "0", "9.a", "x-1", "X-1"]


def _rows() -> list[IndexRow]:
    rows = []
    for n, trajectory_id in enumerate(IDS * 1):
        for k in range(3):
            rid = f"{trajectory_id}-{k}"
            labels = {"team": "ab"[n % 2], "k.x": "é ü"} if k != 1 else {}
            rows.append(
                IndexRow(
                    id=rid,
                    create_time_us=1_000 + (n // 3),  # ties: three ids share each time
                    run_id=f"run-{n % 3}",
                    suite="s" if k else "other",
                    task_id=f"t/{k}",
                    split=k,
                    model=["m1", "m2"][n % 2],
                    adapter_name="ad" if n % 4 else "",
                    adapter_version=n % 3,
                    resolved=int(n % 2 == 0),
                    teacher_kind=k,
                    labels_json=json.dumps(labels, sort_keys=True),
                    object_key=f"trajectories/{rid}.pb",
                    size_bytes=100 + n,
                    sha256=f"{n:064x}",
                    content_sha256=f"{k:064x}",
                    basic=bytes([n, k, 0, 255]),
                )
            )
    return rows


FILTERS = [
    pb.TrajectoryFilter(),
    pb.TrajectoryFilter(run_ids=["run-0", "run-2"]),
    pb.TrajectoryFilter(suite="s", task_ids=["t/1"]),
    pb.TrajectoryFilter(split=common_pb2.TASK_SPLIT_TRAIN),
    pb.TrajectoryFilter(model="m2", outcome=pb.OUTCOME_FILTER_UNRESOLVED),
    pb.TrajectoryFilter(outcome=pb.OUTCOME_FILTER_RESOLVED),
    pb.TrajectoryFilter(adapter_name="ad", adapter_version=2),
    pb.TrajectoryFilter(teacher_kinds=[pb.TEACHER_KIND_MODEL, 2]),
    pb.TrajectoryFilter(labels={"team": "a"}),
    pb.TrajectoryFilter(labels={"team": "b", "k.x": "é ü"}),
    pb.TrajectoryFilter(labels={"missing": ""}),
    pb.TrajectoryFilter(
        create_time_range=common_pb2.TimeRange(
            start_time={"seconds": 0, "nanos": 1_001_000}, end_time={"seconds": 0, "nanos": 1_003_000}
        )
    ),
]


@pytest.fixture
def both(tmp_path: Path, postgres_database: str, postgres_schema: str) -> Iterator[list[TrajectoryIndex]]:
    sqlite = SqliteIndex(tmp_path / "index.sqlite")
    pg = PostgresIndex(postgres_database, postgres_schema)
    try:
        yield [sqlite, pg]
    finally:
        sqlite.close()
        pg.close()


def _pages(index: TrajectoryIndex, flt: pb.TrajectoryFilter, size: int, watermark: int | None) -> list[list]:
    pages, after = [], None
    while True:
        rows = index.page(build_query(flt), after, size, watermark)
        if not rows:
            return pages
        pages.append(rows)
        after = (rows[-1][0], rows[-1][1])


def test_same_rows_same_pages_on_both(both: list[TrajectoryIndex]) -> None:
    sqlite, pg = both
    rows = _rows()
    for index in both:
        assert index.insert(rows[::2]) == {r.id for r in rows[::2]}
        assert index.insert(rows) == {r.id for r in rows[1::2]}  # the rest; existing ids untouched
    assert sqlite.count() == pg.count() == len(rows)
    assert list(sqlite.dump()) == list(pg.dump())
    # Ties on the time are ordered by id byte-wise on both ("A-2-0" before "a-1-0").
    first = [r[0] for r in pg.dump()][:9]
    assert first == sorted(first, key=str.encode) and first[0] == "A-2-0" and first[3] == "a-1-0"
    assert sqlite.max_create_time_us() == pg.max_create_time_us()
    for flt in FILTERS:
        for size in (1, 4, 1000):
            for watermark in (None, 1_002):
                got = _pages(sqlite, flt, size, watermark)
                assert got == _pages(pg, flt, size, watermark), (flt, size, watermark)
        assert any(_pages(sqlite, flt, 1000, None)) or flt.labels, flt  # each filter selects something
    # Pending journal and deletes behave alike.
    for index in both:
        tokens, times = index.begin_puts(["A-2-0", None, "new"], [5, 6, 7])
        assert len(tokens) == 2 and times[0] >= 5
        assert set(index.pending_tokens(["A-2-0", "nope"], [])) == {"A-2-0"}
        assert index.pending_tokens(["A-2-0"], tokens) == {}
        index.end_puts(tokens)
        index.clear_pending(tokens)
        assert index.pending() == []
        index.delete_ids([r.id for r in rows if r.run_id == "run-1"])
    assert list(sqlite.dump()) == list(pg.dump()) and sqlite.count() == pg.count() == 24


async def test_both_rebuilt_from_the_same_objects_agree(
    service_env: dict[str, str], both: list[TrajectoryIndex], tmp_path: Path
) -> None:
    async with running(service_env, tmp_path / "idx") as svc:
        sent = []
        for i in range(25):
            t = full_trajectory(f"o-{i:02d}", run_id=f"run-{i % 3}", resolved=i % 2 == 0)
            t.labels["n"] = str(i % 4)
            sent.append(t)
        assert (await _batch(svc.stub, sent)).created_count == 25
    objects = FilesystemObjectStore(service_env["FLYWHEEL_OBJECT_STORE_ROOT"])
    sqlite_path = tmp_path / "rebuilt.sqlite"
    assert rebuild_index(objects, sqlite_path, {}) == 25
    sqlite, pg = SqliteIndex(sqlite_path), both[1]
    try:
        assert rebuild_index(objects, pg, {}) == 25
        assert rebuild_index(objects, pg, {}) == 25  # again: nothing changes
        assert list(sqlite.dump()) == list(pg.dump()) and pg.count() == 25
        for flt in [*FILTERS, pb.TrajectoryFilter(labels={"n": "1"}, run_ids=["run-1"])]:
            assert _pages(sqlite, flt, 4, None) == _pages(pg, flt, 4, None), flt
        # A row whose object is gone is dropped by the next rebuild, on both.
        objects.delete("trajectories/o-03.pb")
        rebuild_index(objects, sqlite_path, {})
        rebuild_index(objects, pg, {})
        sqlite.close()
        sqlite = SqliteIndex(sqlite_path)
        assert list(sqlite.dump()) == list(pg.dump()) and pg.count() == 24
    finally:
        sqlite.close()
