"""The listing index in PostgreSQL: one schema that every trajectory-store replica shares.

Same table, columns and listing SQL as the SQLite index (both built in ``index.py``); what
differs is what several writer processes need:

- **One clock.** A put's ``create_time`` is taken in the transaction that journals it, under a
  row lock on ``clock``: times are strictly increasing across replicas, and a put whose journal
  entry is not yet committed gets a time after every row any reader can already see.
- **One watermark.** A journal entry is ``in_flight`` from that transaction until the put's row
  is inserted (``end_puts``). Every page query hides rows at or after the oldest in-flight entry
  of a *live* replica, in the same statement (one snapshot), so a page token never skips a
  trajectory another replica makes visible later.
- **Liveness.** Each replica holds a session advisory lock (schema key, owner id) for its
  lifetime. An entry whose owner's lock is gone belongs to a dead replica: it no longer holds
  pages back, and the next replica to start recovers it (index row + event).
- **Idempotent writes.** Rows are inserted with ``ON CONFLICT (id) DO NOTHING``; a redelivered or
  raced put of one id leaves one row. Schema creation runs under a transaction advisory lock, so
  replicas starting at once do not trip over each other's ``CREATE``.

Rebuilding (``rebuild``) works in place while other replicas keep writing: every object's row is
upserted, then rows whose objects were not listed are deleted, except rows of puts that were in
flight when the rebuild began or started after it.
"""

from __future__ import annotations

import contextlib
import functools
import random
import re
import threading
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import astuple
from typing import ParamSpec, TypeVar

import psycopg
from psycopg import sql

from flywheel_common.errors import Unavailable
from flywheel_trajectory.index import COLUMNS, SCHEMA_VERSION, PageRow, Query, TrajectoryIndex, table_ddl
from flywheel_trajectory.model import IndexRow

SCHEMA_RE = re.compile(r"[a-z_][a-z0-9_]{0,62}")
#: Second key of the advisory locks: schema creation (transaction lock) and start-up (session lock).
_SCHEMA_KEY = 0
_STARTUP_KEY = -1
_MAX_US = 2**63 - 1

_PG_TYPES = {"key": 'TEXT COLLATE "C"', "int": "BIGINT", "text": "TEXT", "bytes": "BYTEA"}

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
{table_ddl(_PG_TYPES)}
CREATE TABLE IF NOT EXISTS pending (
    token BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id TEXT COLLATE "C" NOT NULL,
    content_sha256 TEXT NOT NULL,
    create_time_us BIGINT NOT NULL,
    owner BIGINT NOT NULL,
    in_flight BOOLEAN NOT NULL DEFAULT TRUE
);
CREATE INDEX IF NOT EXISTS pending_by_id ON pending (id);
CREATE TABLE IF NOT EXISTS clock (id INTEGER PRIMARY KEY, last_us BIGINT NOT NULL);
INSERT INTO clock (id, last_us) VALUES (1, 0) ON CONFLICT DO NOTHING;
INSERT INTO meta (key, value) VALUES ('schema_version', '{SCHEMA_VERSION}') ON CONFLICT DO NOTHING;
"""

_INSERT = (
    f"INSERT INTO trajectories ({', '.join(COLUMNS)}) VALUES ({', '.join(['%s'] * len(COLUMNS))}) "
    "ON CONFLICT (id) DO NOTHING RETURNING id"
)
_UPSERT = (
    f"INSERT INTO trajectories ({', '.join(COLUMNS)}) VALUES ({', '.join(['%s'] * len(COLUMNS))}) "
    f"ON CONFLICT (id) DO UPDATE SET {', '.join(f'{c} = EXCLUDED.{c}' for c in COLUMNS if c != 'id')}"
)
#: The oldest create time still in flight on a live replica (pg_locks holds the owners' locks).
_LIVE_INFLIGHT_MIN = """(SELECT MIN(p.create_time_us) FROM pending p WHERE p.in_flight AND EXISTS (
    SELECT 1 FROM pg_locks l WHERE l.locktype = 'advisory' AND l.classid = ?::oid
    AND l.objid = p.owner::oid AND l.objsubid = 2 AND l.granted
    AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())))"""


def redact_url(url: str) -> str:
    """``url`` with its password replaced by ``***`` (URL and ``key=value`` forms)."""
    url = re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", url)
    return re.sub(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", r"\1***", url, flags=re.IGNORECASE)


class IndexDatabaseError(RuntimeError):
    """The index database cannot be used; the message names the setting (password redacted)."""


P = ParamSpec("P")
R = TypeVar("R")


def _db(method: Callable[P, R]) -> Callable[P, R]:
    """A lost database connection becomes UNAVAILABLE (the client retries; the next call
    reconnects), with the setting named and the password redacted."""

    @functools.wraps(method)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return method(*args, **kwargs)
        except (psycopg.OperationalError, IndexDatabaseError) as err:
            index = args[0]
            assert isinstance(index, PostgresIndex)
            raise Unavailable(
                f"the trajectory index database ({index._setting}={redact_url(index.url)}) is unreachable: "
                f"{str(err).strip() or type(err).__name__}; retry"
            ) from err

    return wrapper


def _pg(statement: str) -> str:
    """The shared SQL's ``?`` placeholders as psycopg's ``%s``."""
    return statement.replace("?", "%s")


class PostgresIndex(TrajectoryIndex):
    """One PostgreSQL schema. Writes go through one connection under a lock; reader threads
    keep their own connection; one more connection holds this replica's liveness lock."""

    def __init__(self, url: str, schema: str, *, setting: str = "FLYWHEEL_TRAJECTORY_DATABASE_URL") -> None:
        if not SCHEMA_RE.fullmatch(schema):
            raise IndexDatabaseError(
                f"schema {schema!r}: 1-63 characters of [a-z0-9_], not starting with a digit"
            )
        self.url = url
        self.schema = schema
        self._setting = setting
        #: First key of every advisory lock of this schema (positive int4; crc32 of its name).
        self.lock_class = zlib.crc32(f"flywheel-trajectory:{schema}".encode()) & 0x7FFFFFFF
        self._lock = threading.Lock()
        self._local = threading.local()
        self._readers: list[psycopg.Connection] = []
        self._conn = self._connect()
        try:
            with self._lock, self._conn.transaction():
                self._conn.execute("SELECT pg_advisory_xact_lock(%s, %s)", (self.lock_class, _SCHEMA_KEY))
                # Created only when missing: a schema a DBA made (and granted) needs no CREATE
                # right on the database, which CREATE SCHEMA IF NOT EXISTS would still check.
                exists = self._conn.execute(
                    "SELECT 1 FROM pg_namespace WHERE nspname = %s", (schema,)
                ).fetchone()
                if exists is None:
                    self._conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
                self._conn.execute(_SCHEMA.encode())
            self._live_lock = threading.Lock()
            self._live = self._connect()
            self.owner = self._take_owner()
        except psycopg.Error as err:
            self.close()
            raise IndexDatabaseError(
                f"{setting} ({redact_url(url)}): cannot create the index schema {schema!r}: {err}"
            ) from err

    def _connect(self) -> psycopg.Connection:
        try:
            conn = psycopg.connect(self.url, autocommit=True, connect_timeout=10)
        except (psycopg.Error, ValueError) as err:
            raise IndexDatabaseError(
                f"{self._setting} ({redact_url(self.url)}): cannot connect to PostgreSQL: "
                f"{str(err).strip() or type(err).__name__}"
            ) from err
        conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(self.schema)))
        return conn

    def _take_owner(self) -> int:
        """A positive owner id no live replica of this schema holds; its lock is held until close."""
        while True:
            owner = random.randint(1, 2**31 - 1)
            row = self._live.execute(
                "SELECT pg_try_advisory_lock(%s, %s)", (self.lock_class, owner)
            ).fetchone()
            if row is not None and row[0]:
                return owner

    def _writer(self) -> psycopg.Connection:
        """The writer connection (caller holds ``_lock``), reopened after the server dropped it;
        then the liveness session is checked too, and its lock taken again if it was lost."""
        if self._conn.closed:
            self._conn = self._connect()
            with self._live_lock:
                with contextlib.suppress(psycopg.Error):
                    self._live.execute("SELECT 1")
                if self._live.closed:
                    self._live = self._connect()
                    row = self._live.execute(
                        "SELECT pg_try_advisory_lock(%s, %s)", (self.lock_class, self.owner)
                    ).fetchone()
                    if not (row and row[0]):  # another replica drew the same id meanwhile
                        self.owner = self._take_owner()
        return self._conn

    @contextlib.contextmanager
    def _write(self) -> Iterator[psycopg.Connection]:
        with self._lock:
            yield self._writer()

    @contextlib.contextmanager
    def _write_tx(self) -> Iterator[psycopg.Connection]:
        with self._lock:
            conn = self._writer()
            with conn.transaction():
                yield conn

    def _reader(self) -> psycopg.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None or conn.closed:
            conn = self._connect()
            self._local.conn = conn
            with self._lock:
                self._readers = [c for c in self._readers if not c.closed]
                self._readers.append(conn)
        return conn

    def close(self) -> None:
        with self._lock:
            conns = [self._conn, *self._readers, getattr(self, "_live", None)]
            self._readers.clear()
        for conn in conns:
            if conn is not None:
                with contextlib.suppress(psycopg.Error):
                    conn.close()

    @contextlib.contextmanager
    def startup_lock(self) -> Iterator[None]:
        """Held while a replica decides whether to rebuild (and does): one replica at a time."""
        with self._live_lock:
            self._live.execute("SELECT pg_advisory_lock(%s, %s)", (self.lock_class, _STARTUP_KEY))
        try:
            yield
        finally:
            with self._live_lock:
                self._live.execute("SELECT pg_advisory_unlock(%s, %s)", (self.lock_class, _STARTUP_KEY))

    # -------------------------------------------------------------------------------- dialect

    def _label_clause(self, key: str, value: str) -> tuple[str, list[object]]:
        return "(labels_json::jsonb ->> ?) = ?", [key, value]

    def _visible_clause(self) -> tuple[str, list[object]] | None:
        return f"create_time_us < COALESCE({_LIVE_INFLIGHT_MIN}, {_MAX_US})", [self.lock_class]

    # ------------------------------------------------------------------------------------ meta

    @_db
    def get_meta(self, key: str) -> str | None:
        row = self._reader().execute("SELECT value FROM meta WHERE key = %s", (key,)).fetchone()
        return None if row is None else str(row[0])

    @_db
    def set_meta(self, key: str, value: str) -> None:
        with self._write() as conn:
            conn.execute(
                "INSERT INTO meta (key, value) VALUES (%s, %s) ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
                (key, value),
            )

    # -------------------------------------------------------------------------------- journal

    @_db
    def begin_puts(self, ids: Sequence[str | None], times: Sequence[int]) -> tuple[list[int], list[int]]:
        if not times:
            return [], []
        with self._write_tx() as conn:
            # The row lock orders every replica's puts: times strictly increase across them.
            row = conn.execute("SELECT last_us FROM clock WHERE id = 1 FOR UPDATE").fetchone()
            last = int(row[0]) if row else 0
            shift = max(0, last + 1 - min(times))
            new = [t + shift for t in times]
            conn.execute("UPDATE clock SET last_us = GREATEST(last_us, %s) WHERE id = 1", (max(new),))
            tokens: list[int] = []
            with conn.cursor() as cur:
                for trajectory_id, t in zip(ids, new, strict=True):
                    if trajectory_id is None:
                        continue
                    cur.execute(
                        "INSERT INTO pending (id, content_sha256, create_time_us, owner) "
                        "VALUES (%s, '', %s, %s) RETURNING token",
                        (trajectory_id, t, self.owner),
                    )
                    got = cur.fetchone()
                    assert got is not None  # RETURNING always gives the row
                    tokens.append(int(got[0]))
        return tokens, new

    @_db
    def end_puts(self, tokens: Sequence[int]) -> None:
        if tokens:
            with self._write() as conn:
                conn.execute("UPDATE pending SET in_flight = FALSE WHERE token = ANY(%s)", (list(tokens),))

    @_db
    def clear_pending(self, tokens: Sequence[int]) -> None:
        if tokens:
            with self._write() as conn:
                conn.execute("DELETE FROM pending WHERE token = ANY(%s)", (list(tokens),))

    @_db
    def pending_tokens(self, ids: Sequence[str], except_tokens: Sequence[int]) -> dict[str, list[int]]:
        found: dict[str, list[int]] = {}
        mine = set(except_tokens)
        rows = self._reader().execute("SELECT token, id FROM pending WHERE id = ANY(%s)", (list(ids),))
        for token, trajectory_id in rows:
            if token not in mine:
                found.setdefault(trajectory_id, []).append(int(token))
        return found

    @_db
    def pending(self) -> list[tuple[int, str, str]]:
        """Entries of dead replicas (their liveness lock is free) and of this one."""
        with self._live_lock:
            owners = [int(r[0]) for r in self._live.execute("SELECT DISTINCT owner FROM pending")]
            mine_or_dead = [self.owner]
            for owner in owners:
                if owner == self.owner:
                    continue
                row = self._live.execute(
                    "SELECT pg_try_advisory_lock(%s, %s)", (self.lock_class, owner)
                ).fetchone()
                if row is not None and row[0]:
                    self._live.execute("SELECT pg_advisory_unlock(%s, %s)", (self.lock_class, owner))
                    mine_or_dead.append(owner)
        return [
            (int(t), str(i), str(h))
            for t, i, h in self._reader().execute(
                "SELECT token, id, content_sha256 FROM pending WHERE owner = ANY(%s) ORDER BY token",
                (mine_or_dead,),
            )
        ]

    # ----------------------------------------------------------------------------------- rows

    @_db
    def insert(self, rows: Iterable[IndexRow]) -> set[str]:
        params = [astuple(row) for row in rows]
        inserted: set[str] = set()
        if not params:
            return inserted
        with self._write_tx() as conn, conn.cursor() as cur:
            cur.executemany(_INSERT, params, returning=True)
            while True:
                for (trajectory_id,) in cur.fetchall():
                    inserted.add(trajectory_id)
                if not cur.nextset():
                    break
        return inserted

    @_db
    def delete_ids(self, ids: Sequence[str]) -> None:
        if ids:
            with self._write() as conn:
                conn.execute("DELETE FROM trajectories WHERE id = ANY(%s)", (list(ids),))

    @_db
    def has(self, trajectory_id: str) -> bool:
        return (
            self._reader().execute("SELECT 1 FROM trajectories WHERE id = %s", (trajectory_id,)).fetchone()
            is not None
        )

    @_db
    def max_create_time_us(self) -> int:
        row = self._reader().execute("SELECT MAX(create_time_us) FROM trajectories").fetchone()
        return int(row[0] or 0) if row else 0

    @_db
    def count(self) -> int:
        row = self._reader().execute("SELECT COUNT(*) FROM trajectories").fetchone()
        return int(row[0]) if row else 0

    @_db
    def page(
        self, query: Query, after: tuple[int, str] | None, limit: int, watermark_us: int | None
    ) -> list[PageRow]:
        statement, params = self.page_sql(query, after, limit, watermark_us)
        return [
            (int(r[0]), str(r[1]), str(r[2]), bytes(r[3]), int(r[4]), str(r[5]))
            for r in self._reader().execute(_pg(statement).encode(), params)
        ]

    @_db
    def snapshot_bound(self, local_watermark: int | None, local_last: int) -> int:
        # Not this process's clock: another replica's may be ahead, and its rows count too.
        row = (
            self._reader()
            .execute(
                _pg(
                    f"SELECT LEAST(COALESCE({_LIVE_INFLIGHT_MIN}, {_MAX_US}), (SELECT last_us FROM clock WHERE id = 1) + 1)"
                ).encode(),
                (self.lock_class,),
            )
            .fetchone()
        )
        bound = int(row[0]) if row else local_last + 1
        return bound if local_watermark is None else min(bound, local_watermark)

    def dump(self) -> Iterator[tuple[object, ...]]:
        for row in self._reader().execute(
            f"SELECT {', '.join(COLUMNS)} FROM trajectories ORDER BY create_time_us, id"
        ):
            yield tuple(bytes(v) if isinstance(v, memoryview) else v for v in row)

    # -------------------------------------------------------------------------------- rebuild

    @_db
    def rebuild(self, rows: Iterable[IndexRow], meta: dict[str, str], batch: int = 1000) -> int:
        """Make the table equal to ``rows`` (every object's row) while other replicas write.

        Rows are upserted; then rows not among ``rows`` are deleted unless their put was in
        flight when the rebuild began or began after it (a listing may not show its object)."""
        with self._write() as conn:
            found = conn.execute(
                "SELECT (SELECT last_us FROM clock WHERE id = 1), ARRAY(SELECT id FROM pending)"
            ).fetchone()
        assert found is not None
        start, pending_at_start = int(found[0]) + 1, list(found[1])
        seen: list[str] = []
        chunk: list[tuple[object, ...]] = []

        def flush() -> None:
            if chunk:
                with self._write_tx() as conn, conn.cursor() as cur:
                    cur.executemany(_UPSERT, chunk)
                chunk.clear()

        for row in rows:
            seen.append(row.id)
            chunk.append(astuple(row))
            if len(chunk) >= batch:
                flush()
        flush()
        with self._write_tx() as conn:
            conn.execute('CREATE TEMP TABLE rebuild_seen (id TEXT COLLATE "C" PRIMARY KEY) ON COMMIT DROP')
            with conn.cursor().copy("COPY rebuild_seen (id) FROM STDIN") as copy:
                for trajectory_id in dict.fromkeys(seen):
                    copy.write_row((trajectory_id,))
            conn.execute(
                "DELETE FROM trajectories t WHERE t.create_time_us < %s "
                "AND NOT EXISTS (SELECT 1 FROM rebuild_seen s WHERE s.id = t.id) "
                "AND NOT (t.id = ANY(%s)) AND NOT EXISTS (SELECT 1 FROM pending p WHERE p.id = t.id)",
                (start, pending_at_start),
            )
            # The clock stays ahead of every row, as on a live index.
            conn.execute(
                "UPDATE clock SET last_us = GREATEST(last_us, "
                "COALESCE((SELECT MAX(create_time_us) FROM trajectories), 0)) WHERE id = 1"
            )
            for key, value in meta.items():
                conn.execute(
                    "INSERT INTO meta (key, value) VALUES (%s, %s) "
                    "ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
                    (key, value),
                )
        return len(set(seen))

    def drop_schema(self) -> None:
        """Remove this index's schema and everything in it (tests, and replacing an index)."""
        with self._write() as conn:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(self.schema)))
