"""Pytest plugin: a real PostgreSQL database for the whole session.

Fixtures:

* ``postgres_server`` (session): the URL of a PostgreSQL server's ``postgres`` database. It is
  ``FLYWHEEL_TEST_POSTGRES_URL`` if set, else ``postgresql://postgres@127.0.0.1:5432/postgres``
  (a server with trust auth, as on the dev machine and in CI). When nothing answers there, a
  private server is started with ``initdb``/``pg_ctl`` in a temporary folder on a free port
  (as the ``postgres`` user through ``runuser`` when root: initdb refuses root) and stopped at the
  end. When that fails too, every test that needs it FAILS with the reason: never a silent skip.
* ``postgres_database`` (session): a fresh database ``flywheel_test_<pid>_<hex>`` on that server,
  as a URL, with a linguistic default collation (ICU en-US) where the server has ICU; dropped at
  the end of the session.
* ``postgres_schema`` (function): a fresh schema name in that database, dropped after the test, so
  tests share the database without seeing each other's tables.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
_START_TIMEOUT_S = 60


def _answers(url: str) -> str | None:
    """None when ``url`` accepts a connection, else why not."""
    try:
        with psycopg.connect(url, connect_timeout=3) as conn:
            conn.execute("SELECT 1")
        return None
    except psycopg.Error as err:
        return str(err).strip() or type(err).__name__


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _as_postgres(cmd: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


@contextlib.contextmanager
def _private_server() -> Iterator[str]:
    """initdb + pg_ctl in a temporary folder; yields the URL of its ``postgres`` database."""
    for tool in ("initdb", "pg_ctl"):
        if shutil.which(tool) is None:
            raise RuntimeError(f"{tool} is not on PATH (install the PostgreSQL server binaries)")
    root = Path(tempfile.mkdtemp(prefix="flywheel-pg-"))
    data = root / "data"
    if os.geteuid() == 0:
        shutil.chown(root, "postgres")
    port = _free_port()
    log = root / "server.log"
    try:
        done = subprocess.run(
            _as_postgres(["initdb", "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8"]),
            capture_output=True,
            text=True,
            timeout=120,
        )
        if done.returncode != 0:
            raise RuntimeError(f"initdb failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
        options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off"
        done = subprocess.run(
            _as_postgres(
                [
                    "pg_ctl",
                    "-D",
                    str(data),
                    "-l",
                    str(log),
                    "-o",
                    options,
                    "-w",
                    "-t",
                    str(_START_TIMEOUT_S),
                    "start",
                ]
            ),
            capture_output=True,
            text=True,
            timeout=_START_TIMEOUT_S + 10,
        )
        if done.returncode != 0:
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise RuntimeError(f"pg_ctl start failed ({done.returncode}): {done.stderr.strip()}\n{tail}")
        try:
            yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
        finally:
            subprocess.run(
                _as_postgres(["pg_ctl", "-D", str(data), "-m", "immediate", "-w", "stop"]),
                capture_output=True,
                timeout=60,
            )
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    url = os.environ.get("FLYWHEEL_TEST_POSTGRES_URL", DEFAULT_URL)
    why = _answers(url)
    if why is None:
        yield url
        return
    try:
        server = _private_server()
        private = server.__enter__()
    except (RuntimeError, OSError, subprocess.SubprocessError) as err:
        pytest.fail(
            f"no PostgreSQL for the tests: {url} does not answer ({why}), and starting a private "
            f"server with initdb/pg_ctl failed: {err}. Set FLYWHEEL_TEST_POSTGRES_URL to a server "
            "(trust auth, a user that may CREATE DATABASE) or install the PostgreSQL server.",
            pytrace=False,
        )
    try:
        yield private
    finally:
        server.__exit__(None, None, None)


def _with_database(url: str, database: str) -> str:
    head, _, _ = url.rpartition("/")
    return f"{head}/{database}"


@pytest.fixture(scope="session")
def postgres_database(postgres_server: str) -> Iterator[str]:
    name = f"flywheel_test_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(postgres_server, autocommit=True) as conn:
        try:
            # A linguistic default collation (ICU en-US), as many production servers have: text
            # then sorts "a-1" < "A-2", so code that needs byte order must say so (COLLATE "C").
            conn.execute(
                sql.SQL(
                    "CREATE DATABASE {} TEMPLATE template0 LOCALE_PROVIDER icu ICU_LOCALE 'en-US' LOCALE 'C.UTF-8'"
                ).format(sql.Identifier(name))
            )
        except psycopg.Error:  # a server without ICU (or before 15): its default collation
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield _with_database(postgres_server.split("?")[0], name)
    finally:
        with psycopg.connect(postgres_server, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture
def postgres_schema(postgres_database: str) -> Iterator[str]:
    name = f"t_{uuid.uuid4().hex[:12]}"
    yield name
    with psycopg.connect(postgres_database, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(name)))
