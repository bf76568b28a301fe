"""What ``flywheel up`` does while the stack runs: restart what dies, say what is wrong.

* A service that exits is started again on the same port, after an exponential back-off like
  Kubernetes' CrashLoopBackOff (1 s, 2 s, 4 s … up to :attr:`Backoff.cap_s`; back to 1 s once
  the new process has stayed up :attr:`Backoff.reset_after_s`). Each crash is logged with the
  exit status (or the signal) and each restart once the service answers health again; the
  restart count goes to ``stack.json`` (``flywheel status`` shows it).
* The embedded nats-server is watched the same way: its death is logged (the services lose the
  event bus; their clients retry) and it is started again on the same port and JetStream store.
  An external one (``FLYWHEEL_NATS_URL``) cannot be restarted from here: the log says when it
  stops answering and when it answers again.

Everything happens on the calling thread, in :meth:`Supervisor.tick`, between signal checks.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from dataclasses import dataclass

from flywheel_cli.health import tcp_open
from flywheel_cli.stack import Running, Stack, log_tail
from flywheel_common.natsserver import NatsServerError


@dataclass
class Backoff:
    """Delays between restarts of one process: doubling from ``initial_s`` up to ``cap_s``."""

    initial_s: float = 1.0  #: delay before the first restart
    cap_s: float = 30.0  #: the longest delay
    reset_after_s: float = 60.0  #: seconds up (since its start) after which a process is stable again
    last_s: float = 0.0  #: the delay handed out last; 0 = none since the last reset

    def next_delay(self) -> float:
        self.last_s = self.initial_s if not self.last_s else min(self.cap_s, self.last_s * 2)
        return self.last_s

    def reset(self) -> None:
        self.last_s = 0.0


def describe_exit(code: int) -> str:
    """``status 1`` or ``signal SIGKILL`` (Popen reports death by signal N as -N)."""
    if code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"status {code}"


@dataclass
class _Pending:
    """A dead process waiting for its restart."""

    dead: Running
    due: float  #: time.monotonic() of the restart


class Supervisor:
    """Keeps a started :class:`Stack` running until SIGINT or SIGTERM (see the module doc)."""

    def __init__(
        self,
        stack: Stack,
        *,
        on_crash: Callable[[Running], None] | None = None,
        make_backoff: Callable[[], Backoff] = Backoff,
        poll_s: float = 0.2,
        external_nats_check_s: float = 5.0,
    ) -> None:
        self.stack = stack
        self.on_crash = on_crash or (lambda child: None)
        self.make_backoff = make_backoff
        self.poll_s = poll_s
        self.external_nats_check_s = external_nats_check_s
        self.backoffs: dict[str, Backoff] = {}
        self.pending: dict[str, _Pending] = {}
        self.nats_backoff = make_backoff()
        self.nats_due: float | None = None  #: when the embedded nats-server is started again
        self.nats_started = time.monotonic()  #: when the embedded nats-server last started
        self.nats_reachable = True
        self.nats_checked = 0.0
        self.stopping = False

    def event(self, name: str, message: str) -> None:
        self.stack.on_event(name, message)

    def run_until_signal(self) -> None:
        """Supervise until SIGINT or SIGTERM; the caller stops the stack afterwards."""

        def handler(signum: int, frame: object) -> None:
            self.stopping = True

        signal.signal(signal.SIGINT, handler)
        signal.signal(signal.SIGTERM, handler)
        while not self.stopping:
            self.tick()
            time.sleep(self.poll_s)

    def tick(self) -> None:
        """One round: notice deaths, start what is due, report what became healthy."""
        now = time.monotonic()
        self._watch_nats(now)
        for child in list(self.stack.children):
            if self.stopping:
                return
            name = child.component.name
            if name in self.pending:
                continue
            code = child.proc.poll()
            if code is None:
                self._watch_running(child, now)
                continue
            backoff = self.backoffs.setdefault(name, self.make_backoff())
            delay = backoff.next_delay()
            self.event(
                name,
                f"exited with {describe_exit(code)} (pid {child.proc.pid}); "
                f"restart #{child.restarts + 1} in {delay:g} s",
            )
            self.on_crash(child)
            self.pending[name] = _Pending(child, now + delay)
        for name, pending in list(self.pending.items()):
            if self.stopping:
                return
            if time.monotonic() >= pending.due:
                del self.pending[name]
                fresh = self.stack.replace(pending.dead)
                self.stack.save_info()
                self.event(name, f"restart #{fresh.restarts}: started again (pid {fresh.proc.pid})")

    def _watch_running(self, child: Running, now: float) -> None:
        name = child.component.name
        if not child.healthy and child.restarts and self.stack.check_health(child, timeout=0.5):
            self.event(
                name, f"healthy again at {child.address} (pid {child.proc.pid}, restart #{child.restarts})"
            )
        backoff = self.backoffs.get(name)
        if backoff is not None and backoff.last_s and now - child.started_at >= backoff.reset_after_s:
            backoff.reset()

    def _watch_nats(self, now: float) -> None:
        stack = self.stack
        if stack.nats is None and self.nats_due is None:
            self._watch_external_nats(now)
            return
        if stack.nats is not None and stack.nats.is_running():
            if self.nats_backoff.last_s and now - self.nats_started >= self.nats_backoff.reset_after_s:
                self.nats_backoff.reset()
            return
        if self.nats_due is None:
            delay = self.nats_backoff.next_delay()
            pid = stack.nats.pid if stack.nats is not None else "?"
            self.event(
                "nats",
                f"nats-server (pid {pid}) is not running: the services have no event bus until it "
                f"is back; restart #{stack.nats_restarts + 1} in {delay:g} s; last lines of "
                f"{stack.nats_log}:\n{log_tail(stack.nats_log)}",
            )
            self.nats_due = now + delay
            return
        if now < self.nats_due:
            return
        try:
            stack.restart_nats()
        except NatsServerError as err:
            delay = self.nats_backoff.next_delay()
            self.event("nats", f"could not start nats-server again ({err}); next try in {delay:g} s")
            self.nats_due = time.monotonic() + delay
            return
        self.nats_due = None
        self.nats_started = time.monotonic()
        self.event("nats", f"restart #{stack.nats_restarts}: nats-server is back at {stack.nats_url}")

    def _watch_external_nats(self, now: float) -> None:
        if not self.stack.nats_url or now - self.nats_checked < self.external_nats_check_s:
            return
        self.nats_checked = now
        host, _, port = self.stack.nats_url.split("://")[-1].rpartition(":")
        reachable = tcp_open(host or "127.0.0.1", int(port or 4222))
        if reachable != self.nats_reachable:
            self.nats_reachable = reachable
            url = self.stack.nats_url
            self.event(
                "nats",
                f"the NATS server at {url} answers again"
                if reachable
                else f"the NATS server at {url} does not answer (FLYWHEEL_NATS_URL; not managed by "
                "this stack): the services have no event bus until it is back",
            )
