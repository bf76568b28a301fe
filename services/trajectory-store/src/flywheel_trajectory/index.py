"""The listing index: one interface, two backends, both rebuildable from the objects alone.

- :class:`SqliteIndex`: SQLite in the service's state folder (the embedded stack, one replica).
  Listing one run of 100,000 trajectories must start in milliseconds, which needs a B-tree on
  (run, time); SQLite gives that in-process with no server, WAL readers that never block the
  writer, and atomic transactions.
- :class:`flywheel_trajectory.pg_index.PostgresIndex`: one PostgreSQL schema shared by every
  replica (set ``FLYWHEEL_TRAJECTORY_DATABASE_URL``). Same columns, same SQL for listing and
  filters (built here), plus what several writers need: a shared clock and a shared watermark.

The objects stay the truth: every column is derived from an object's bytes by
:func:`flywheel_trajectory.model.index_row`, and a rebuild recreates the table from a listing of
``trajectories/``.

Order and pagination: rows are ordered by (create_time_us, id). ``create_time`` is assigned by the
store from a strictly increasing clock when a put starts (:meth:`TrajectoryIndex.begin_puts`), so
a trajectory that becomes visible later always sorts after every row already served — provided a
reader never sees rows at or past the oldest put still in flight. That "watermark" bounds every
query, which is what keeps pages stable under concurrent writes.

Also here: the ``pending`` journal. Before a put writes its object it records the id here;
after the index row is committed and the event published it removes it. A restart finds what a
crash interrupted and finishes it (index + event), so nothing written is left unindexed.
"""

from __future__ import annotations

import abc
import contextlib
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import astuple, fields
from pathlib import Path

from flywheel_trajectory.model import IndexRow

SCHEMA_VERSION = 1
COLUMNS = [f.name for f in fields(IndexRow)]
#: Column kinds, rendered per dialect (see ``_TYPES``); the order is IndexRow's.
_KINDS = {
    "id": "key",
    "create_time_us": "int",
    "run_id": "text",
    "suite": "text",
    "task_id": "text",
    "split": "int",
    "model": "text",
    "adapter_name": "text",
    "adapter_version": "int",
    "resolved": "int",
    "teacher_kind": "int",
    "labels_json": "text",
    "object_key": "text",
    "size_bytes": "int",
    "sha256": "text",
    "content_sha256": "text",
    "basic": "bytes",
}
assert list(_KINDS) == COLUMNS
#: Secondary indexes, (name, leading column); each ends with (create_time_us, id), the list order.
INDEXES = [("by_run", "run_id"), ("by_suite", "suite"), ("by_model", "model"), ("by_adapter", "adapter_name")]
#: What a page query returns, in this order.
PAGE_COLUMNS = "create_time_us, id, object_key, basic, size_bytes, sha256"

PageRow = tuple[int, str, str, bytes, int, str]


def table_ddl(types: dict[str, str], if_not_exists: str = "IF NOT EXISTS ") -> str:
    """CREATE TABLE and its indexes for the trajectories table, in one dialect's ``types``."""
    cols = ",\n    ".join(
        f"{name} {types[kind]}{' PRIMARY KEY' if kind == 'key' else ' NOT NULL'}"
        for name, kind in _KINDS.items()
    )
    stmts = [f"CREATE TABLE {if_not_exists}trajectories (\n    {cols}\n)"]
    stmts.append(f"CREATE INDEX {if_not_exists}by_time ON trajectories (create_time_us, id)")
    for name, column in INDEXES:
        stmts.append(f"CREATE INDEX {if_not_exists}{name} ON trajectories ({column}, create_time_us, id)")
    return ";\n".join(stmts) + ";\n"


class Query:
    """A WHERE clause built from a filter: ``clauses`` with ``?`` placeholders and their ``params``,
    plus label equalities, which each dialect renders itself (JSON access differs)."""

    def __init__(self) -> None:
        self.clauses: list[str] = []
        self.params: list[object] = []
        self.labels: list[tuple[str, str]] = []

    def eq(self, column: str, value: object) -> None:
        self.clauses.append(f"{column} = ?")
        self.params.append(value)

    def any_of(self, column: str, values: Sequence[object]) -> None:
        self.clauses.append(f"{column} IN ({', '.join('?' * len(values))})")
        self.params.extend(values)

    def raw(self, clause: str, *params: object) -> None:
        self.clauses.append(clause)
        self.params.extend(params)

    def label(self, key: str, value: str) -> None:
        """``labels[key] == value``; ``key`` must already be a valid label key (no quotes)."""
        self.labels.append((key, value))


class TrajectoryIndex(abc.ABC):
    """The listing index and the put journal. Methods block; the store calls them on its threads.

    Subclasses give the dialect (``_label_clause``, ``_visible_clause``) and the storage; the
    listing SQL is built once, here.
    """

    # ------------------------------------------------------------------------ listing (shared)

    @abc.abstractmethod
    def _label_clause(self, key: str, value: str) -> tuple[str, list[object]]:
        """SQL (``?`` placeholders) and params for ``labels[key] = value``."""

    def _visible_clause(self) -> tuple[str, list[object]] | None:
        """An extra bound every page obeys (the shared watermark of other writers), or None."""
        return None

    def page_sql(
        self, query: Query, after: tuple[int, str] | None, limit: int, watermark_us: int | None
    ) -> tuple[str, list[object]]:
        clauses = list(query.clauses)
        params = list(query.params)
        for key, value in query.labels:
            clause, more = self._label_clause(key, value)
            clauses.append(clause)
            params.extend(more)
        if after is not None:
            clauses.append("(create_time_us, id) > (?, ?)")
            params.extend(after)
        if watermark_us is not None:
            clauses.append("create_time_us < ?")
            params.append(watermark_us)
        visible = self._visible_clause()
        if visible is not None:
            clauses.append(visible[0])
            params.extend(visible[1])
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        sql = f"SELECT {PAGE_COLUMNS} FROM trajectories {where} ORDER BY create_time_us, id LIMIT ?"
        return sql, [*params, limit]

    @abc.abstractmethod
    def page(
        self, query: Query, after: tuple[int, str] | None, limit: int, watermark_us: int | None
    ) -> list[PageRow]:
        """Up to ``limit`` rows (create_time_us, id, object_key, basic, size_bytes, sha256) after
        ``after``, before ``watermark_us`` (and before what other writers still have in flight)."""

    # ---------------------------------------------------------------------------- the rest

    @abc.abstractmethod
    def close(self) -> None: ...

    @abc.abstractmethod
    def get_meta(self, key: str) -> str | None: ...

    @abc.abstractmethod
    def set_meta(self, key: str, value: str) -> None: ...

    @abc.abstractmethod
    def begin_puts(self, ids: Sequence[str | None], times: Sequence[int]) -> tuple[list[int], list[int]]:
        """Journal the ids of a put (None: not journalled) that took ``times`` from the local clock.

        Returns the journal tokens and the create times to use: the same ``times`` where one
        process owns the index, later ones where another writer's clock is ahead."""

    def end_puts(self, tokens: Sequence[int]) -> None:  # noqa: B027 - a no-op unless shared
        """The puts of ``tokens`` are no longer in flight (their journal entries may remain)."""

    @abc.abstractmethod
    def clear_pending(self, tokens: Sequence[int]) -> None: ...

    @abc.abstractmethod
    def pending_tokens(self, ids: Sequence[str], except_tokens: Sequence[int]) -> dict[str, list[int]]:
        """Journal entries of ``ids`` other than ``except_tokens``: id -> tokens."""

    @abc.abstractmethod
    def pending(self) -> list[tuple[int, str, str]]:
        """Journal entries a crash left behind, to recover: (token, id, content hash)."""

    @abc.abstractmethod
    def insert(self, rows: Iterable[IndexRow]) -> set[str]:
        """Insert rows (an existing id is left alone); returns the ids that were new."""

    @abc.abstractmethod
    def delete_ids(self, ids: Sequence[str]) -> None: ...

    @abc.abstractmethod
    def has(self, trajectory_id: str) -> bool: ...

    @abc.abstractmethod
    def max_create_time_us(self) -> int: ...

    @abc.abstractmethod
    def count(self) -> int: ...

    def snapshot_bound(self, local_watermark: int | None, local_last: int) -> int:
        """The exclusive create-time bound of an export starting now (a snapshot)."""
        return local_watermark if local_watermark is not None else local_last + 1

    @abc.abstractmethod
    def dump(self) -> Iterator[tuple[object, ...]]:
        """Every row in order: what "the rebuilt index equals the live one" compares."""


_SQLITE_TYPES = {"key": "TEXT", "int": "INTEGER", "text": "TEXT", "bytes": "BLOB"}

_SQLITE_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
{table_ddl(_SQLITE_TYPES)}
CREATE TABLE IF NOT EXISTS pending (
    token INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL,
    content_sha256 TEXT NOT NULL
);
INSERT OR IGNORE INTO meta (key, value) VALUES ('schema_version', '{SCHEMA_VERSION}');
"""

_SQLITE_INSERT = (
    f"INSERT OR IGNORE INTO trajectories ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})"
)


class SqliteIndex(TrajectoryIndex):
    """One SQLite file. Writes go through one connection under a lock; reads open their own."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._conn = self._connect()
        with self._lock, self._conn:
            self._conn.executescript(_SQLITE_SCHEMA)
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

    def _label_clause(self, key: str, value: str) -> tuple[str, list[object]]:
        return "json_extract(labels_json, ?) = ?", [f'$."{key}"', value]

    # ------------------------------------------------------------------------------------ meta

    def get_meta(self, key: str) -> str | None:
        row = self._reader().execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def set_meta(self, key: str, value: str) -> None:
        with self._lock:
            self._conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))

    # -------------------------------------------------------------------------------- journal

    def begin_puts(self, ids: Sequence[str | None], times: Sequence[int]) -> tuple[list[int], list[int]]:
        # One process owns the file: its clock is the only one, the times stand.
        return self.add_pending([(i, "") for i in ids if i is not None]), list(times)

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
            (int(r[0]), str(r[1]), str(r[2]))
            for r in self._reader().execute("SELECT token, id, content_sha256 FROM pending ORDER BY token")
        ]

    # ----------------------------------------------------------------------------------- rows

    def insert(self, rows: Iterable[IndexRow]) -> set[str]:
        inserted: set[str] = set()
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                for row in rows:
                    if self._conn.execute(_SQLITE_INSERT, astuple(row)).rowcount:
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
    ) -> list[PageRow]:
        sql, params = self.page_sql(query, after, limit, watermark_us)
        return [tuple(r) for r in self._reader().execute(sql, params)]

    def dump(self) -> Iterator[tuple[object, ...]]:
        yield from self._reader().execute(
            f"SELECT {', '.join(COLUMNS)} FROM trajectories ORDER BY create_time_us, id"
        )


def rebuild(path: Path, rows: Iterable[IndexRow], meta: dict[str, str], batch: int = 1000) -> int:
    """Write a fresh SQLite index at ``path`` from ``rows`` atomically (temp file, then rename).

    The old file, if any, stays in use until the rename; returns the number of rows.
    """
    tmp = path.with_name(path.name + ".rebuild")
    for suffix in ("", "-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):
            Path(str(tmp) + suffix).unlink()
    index = SqliteIndex(tmp)
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
