"""The listing index: SQLite in the service's state folder, rebuildable from the objects alone.

Why SQLite: listing one run of 100,000 trajectories must start in milliseconds, which needs a
B-tree on (run, time); SQLite gives that in-process with no server, WAL readers that never block
the writer, and atomic transactions. The objects stay the truth: every column is derived from an
object's bytes by :func:`flywheel_trajectory.model.index_row`, and :func:`rebuild` recreates the
whole table from a listing of ``trajectories/``.

Order and pagination: rows are ordered by (create_time_us, id). ``create_time`` is assigned by the
store from a strictly increasing clock when a put starts, so a trajectory that becomes visible
later always sorts after every row already served — provided a reader never sees rows at or past
the oldest put still in flight. The store passes that "watermark" to every query, which is what
keeps pages stable under concurrent writes.

Also here: the ``pending`` journal. Before a put writes its object it records the id here;
after the index row is committed and the event published it removes it. A restart finds what a
crash interrupted and finishes it (index + event), so nothing written is left unindexed.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import astuple, fields
from pathlib import Path

from flywheel_trajectory.model import IndexRow

SCHEMA_VERSION = 1
COLUMNS = [f.name for f in fields(IndexRow)]

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS trajectories (
    id TEXT PRIMARY KEY,
    create_time_us INTEGER NOT NULL,
    run_id TEXT NOT NULL,
    suite TEXT NOT NULL,
    task_id TEXT NOT NULL,
    split INTEGER NOT NULL,
    model TEXT NOT NULL,
    adapter_name TEXT NOT NULL,
    adapter_version INTEGER NOT NULL,
    resolved INTEGER NOT NULL,
    teacher_kind INTEGER NOT NULL,
    labels_json TEXT NOT NULL,
    object_key TEXT NOT NULL,
    size_bytes INTEGER NOT NULL,
    sha256 TEXT NOT NULL,
    content_sha256 TEXT NOT NULL,
    basic BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS by_time ON trajectories (create_time_us, id);
CREATE INDEX IF NOT EXISTS by_run ON trajectories (run_id, create_time_us, id);
CREATE INDEX IF NOT EXISTS by_suite ON trajectories (suite, create_time_us, id);
CREATE INDEX IF NOT EXISTS by_model ON trajectories (model, create_time_us, id);
CREATE INDEX IF NOT EXISTS by_adapter ON trajectories (adapter_name, create_time_us, id);
CREATE TABLE IF NOT EXISTS pending (
    token INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL,
    content_sha256 TEXT NOT NULL
);
INSERT OR IGNORE INTO meta (key, value) VALUES ('schema_version', '{SCHEMA_VERSION}');
"""

_INSERT = (
    f"INSERT OR IGNORE INTO trajectories ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})"
)


class Query:
    """A WHERE clause built from a filter: ``sql`` with ``?`` placeholders and its ``params``."""

    def __init__(self) -> None:
        self.clauses: list[str] = []
        self.params: list[object] = []

    def eq(self, column: str, value: object) -> None:
        self.clauses.append(f"{column} = ?")
        self.params.append(value)

    def any_of(self, column: str, values: Sequence[object]) -> None:
        self.clauses.append(f"{column} IN ({', '.join('?' * len(values))})")
        self.params.extend(values)

    def raw(self, clause: str, *params: object) -> None:
        self.clauses.append(clause)
        self.params.extend(params)


class TrajectoryIndex:
    """One SQLite file. Writes go through one connection under a lock; reads open their own."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._conn = self._connect()
        with self._lock, self._conn:
            self._conn.executescript(_SCHEMA)
        self._local = threading.local()

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        # NORMAL in WAL mode: a committed transaction survives a killed process (the OS has it);
        # only a power loss can drop the last ones, and the index can be rebuilt from the objects.
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA busy_timeout=10000")
        # 4 MiB of page cache per connection: the hot index pages of a listing fit; memory stays bounded.
        conn.execute("PRAGMA cache_size=-4096")
        return conn

    def _reader(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._connect()
            self._local.conn = conn
        return conn

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    # ------------------------------------------------------------------------------------ meta

    def get_meta(self, key: str) -> str | None:
        row = self._reader().execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def set_meta(self, key: str, value: str) -> None:
        with self._lock:
            self._conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))

    # -------------------------------------------------------------------------------- journal

    def add_pending(self, items: Iterable[tuple[str, str]]) -> list[int]:
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                tokens: list[int] = []
                for item in items:
                    cursor = self._conn.execute(
                        "INSERT INTO pending (id, content_sha256) VALUES (?, ?)", item
                    )
                    assert cursor.lastrowid is not None  # an INSERT always sets it
                    tokens.append(cursor.lastrowid)
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
        return tokens

    def clear_pending(self, tokens: Sequence[int]) -> None:
        if not tokens:
            return
        with self._lock:
            self._conn.executemany("DELETE FROM pending WHERE token = ?", [(t,) for t in tokens])

    def pending_tokens(self, ids: Sequence[str], except_tokens: Sequence[int]) -> dict[str, list[int]]:
        """Journal entries of ``ids`` other than ``except_tokens``: id -> tokens."""
        found: dict[str, list[int]] = {}
        mine = set(except_tokens)
        conn = self._reader()
        for start in range(0, len(ids), 500):
            chunk = list(ids[start : start + 500])
            sql = f"SELECT token, id FROM pending WHERE id IN ({', '.join('?' * len(chunk))})"
            for token, trajectory_id in conn.execute(sql, chunk):
                if token not in mine:
                    found.setdefault(trajectory_id, []).append(token)
        return found

    def pending(self) -> list[tuple[int, str, str]]:
        return [
            tuple(r)
            for r in self._reader().execute("SELECT token, id, content_sha256 FROM pending ORDER BY token")
        ]

    # ----------------------------------------------------------------------------------- rows

    def insert(self, rows: Iterable[IndexRow]) -> set[str]:
        """Insert rows (an existing id is left alone); returns the ids that were new."""
        inserted: set[str] = set()
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                for row in rows:
                    if self._conn.execute(_INSERT, astuple(row)).rowcount:
                        inserted.add(row.id)
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
        return inserted

    def delete_ids(self, ids: Sequence[str]) -> None:
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                self._conn.executemany("DELETE FROM trajectories WHERE id = ?", [(i,) for i in ids])
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise

    def has(self, trajectory_id: str) -> bool:
        return (
            self._reader().execute("SELECT 1 FROM trajectories WHERE id = ?", (trajectory_id,)).fetchone()
            is not None
        )

    def max_create_time_us(self) -> int:
        row = self._reader().execute("SELECT MAX(create_time_us) FROM trajectories").fetchone()
        return int(row[0] or 0)

    def count(self) -> int:
        return int(self._reader().execute("SELECT COUNT(*) FROM trajectories").fetchone()[0])

    def page(
        self, query: Query, after: tuple[int, str] | None, limit: int, watermark_us: int | None
    ) -> list[tuple[int, str, str, bytes, int, str]]:
        """Up to ``limit`` rows (create_time_us, id, object_key, basic, size_bytes, sha256) after ``after``."""
        clauses = list(query.clauses)
        params = list(query.params)
        if after is not None:
            clauses.append("(create_time_us, id) > (?, ?)")
            params.extend(after)
        if watermark_us is not None:
            clauses.append("create_time_us < ?")
            params.append(watermark_us)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        sql = (
            f"SELECT create_time_us, id, object_key, basic, size_bytes, sha256 FROM trajectories {where} "
            "ORDER BY create_time_us, id LIMIT ?"
        )
        return [tuple(r) for r in self._reader().execute(sql, [*params, limit])]

    def dump(self) -> Iterator[tuple[object, ...]]:
        """Every row in order: what "the rebuilt index equals the live one" compares."""
        yield from self._reader().execute(
            f"SELECT {', '.join(COLUMNS)} FROM trajectories ORDER BY create_time_us, id"
        )


def rebuild(path: Path, rows: Iterable[IndexRow], meta: dict[str, str], batch: int = 1000) -> int:
    """Write a fresh index at ``path`` from ``rows`` atomically (temp file, then rename).

    The old file, if any, stays in use until the rename; returns the number of rows.
    """
    tmp = path.with_name(path.name + ".rebuild")
    for suffix in ("", "-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):
            Path(str(tmp) + suffix).unlink()
    index = TrajectoryIndex(tmp)
    count = 0
    chunk: list[IndexRow] = []
    for row in rows:
        chunk.append(row)
        if len(chunk) >= batch:
            count += len(index.insert(chunk))
            chunk.clear()
    count += len(index.insert(chunk))
    for key, value in meta.items():
        index.set_meta(key, value)
    with index._lock:
        index._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        index._conn.execute("PRAGMA journal_mode=DELETE")
    index.close()
    for suffix in ("-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):
            Path(str(path) + suffix).unlink()
    tmp.replace(path)
    return count
