"""The asyncio gRPC server every Flywheel service runs on.

One :class:`GrpcApp` gives a service, with no code of its own:

* gRPC health checking (``grpc.health.v1.Health``; SERVING once started, NOT_SERVING while
  shutting down) and server reflection, so ``grpcurl -plaintext HOST:PORT list`` works with no
  local proto files;
* one interceptor for the cross-cutting concerns: a request id (taken from the ``x-request-id``
  metadata or made up, returned in the trailing metadata and put on every log line), one
  structured log line per RPC, Prometheus metrics, and the mapping of exceptions to canonical
  status codes (:mod:`flywheel_common.errors`);
* service-token authentication (:mod:`flywheel_common.auth`): every call but health and
  reflection needs ``authorization: Bearer $FLYWHEEL_SERVICE_TOKEN``; with no token configured
  the server refuses to start unless ``FLYWHEEL_AUTH_DISABLED=1``;
* graceful shutdown on SIGTERM/SIGINT that ends within ``shutdown_timeout_s``: health goes
  NOT_SERVING, in-flight RPCs get ``grace_period_s`` to finish (at most half the budget), then
  the service's own resources are closed (shutdown hooks, in what is left of the budget). Run by
  :func:`run_service`, a process that has not exited by then stops the children it started and
  exits anyway, so that its supervisor (``flywheel up``, the kubelet) never has to SIGKILL it;
* a ready file with the bound ports, so a caller that asked for port 0 learns the real one.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import grpc
from google.protobuf.descriptor import ServiceDescriptor
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram, start_http_server

from flywheel_common.auth import AuthInterceptor, MissingServiceToken, server_tokens
from flywheel_common.errors import bounded_message, status_for
from flywheel_common.logs import request_id_var
from flywheel_common.settings import ServiceSettings

S = TypeVar("S", bound=ServiceSettings)

log = logging.getLogger("flywheel.server")

REQUEST_ID_KEY = "x-request-id"
#: Largest message a server receives (trajectory imports carry files of up to 60 MiB); clients
#: (the CLI) use the same limit both ways.
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
#: How often a client may ping a connection while it has a call in flight (seconds). gRPC's
#: default (5 min) makes a server close a quiet Watch stream whose client checks every minute
#: that the server is still there.
MIN_CLIENT_PING_INTERVAL_S = 30
#: Seconds a process that ran past its shutdown budget gets to exit on its own before
#: :func:`run_service`'s watchdog ends it (its asyncio loop and thread pools close in this time).
EXIT_SLACK_S = 1.0


class Metrics:
    """The RPC metrics of one process (one registry; tests may pass their own)."""

    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        self.registry = registry
        self.requests = Counter(
            "flywheel_grpc_requests",
            "RPCs handled, by method and final status code.",
            ["service", "method", "code"],
            registry=registry,
        )
        self.latency = Histogram(
            "flywheel_grpc_request_duration_seconds",
            "Wall time of an RPC, from the call until its last response message (seconds).",
            ["service", "method"],
            registry=registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
        )


_default_metrics: Metrics | None = None


def default_metrics() -> Metrics:
    """The process-wide metrics (created once: prometheus refuses duplicate registrations)."""
    global _default_metrics
    if _default_metrics is None:
        _default_metrics = Metrics()
    return _default_metrics


def _split_method(full: str) -> tuple[str, str]:
    # "/flywheel.sandbox.v1.SandboxService/Execute" -> ("flywheel.sandbox.v1.SandboxService", "Execute")
    service, _, method = full.lstrip("/").rpartition("/")
    return service, method


class ObservabilityInterceptor(grpc.aio.ServerInterceptor):
    """Request ids, one log line per RPC, metrics, and exception → status code, for every RPC."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(details)
        if handler is None:
            return handler
        service, method = _split_method(details.method)
        incoming = dict(details.invocation_metadata or ())
        factory, behaviour = _handler_parts(handler)
        streaming_out = handler.response_streaming

        def start(context: grpc.aio.ServicerContext[Any, Any]) -> tuple[str, contextvars_token, float]:
            rid = str(incoming.get(REQUEST_ID_KEY) or uuid.uuid4().hex)
            token = request_id_var.set(rid)
            context.set_trailing_metadata(((REQUEST_ID_KEY, rid),))
            return rid, token, time.perf_counter()

        def finish(
            token: contextvars_token, started: float, code: grpc.StatusCode, error: str | None
        ) -> None:
            elapsed = time.perf_counter() - started
            self.metrics.requests.labels(service, method, code.name).inc()
            self.metrics.latency.labels(service, method).observe(elapsed)
            level = logging.INFO if code is grpc.StatusCode.OK else logging.WARNING
            if code is grpc.StatusCode.INTERNAL:
                level = logging.ERROR
            log.log(
                level,
                "rpc %s/%s %s",
                service,
                method,
                code.name,
                extra={
                    "rpc": f"{service}/{method}",
                    "code": code.name,
                    "duration_ms": round(elapsed * 1000, 3),
                }
                | ({"error": error} if error else {}),
            )
            # A server stream the client cancelled is closed (aclose) from another task, whose
            # Context did not create the token; that Context ends with its task anyway.
            with contextlib.suppress(ValueError):
                request_id_var.reset(token)

        def describe(exc: BaseException) -> tuple[grpc.StatusCode, str]:
            """The status and the message the caller gets; unexpected errors are logged in full."""
            known = status_for(exc)
            if known is not None:
                return known
            log.exception("unexpected error in %s/%s", service, method)
            rid = request_id_var.get()
            return grpc.StatusCode.INTERNAL, f"internal error (request id {rid}); see the service log"

        if not streaming_out:

            async def unary_out(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
                _, token, started = start(context)
                code, error = grpc.StatusCode.OK, None
                try:
                    return await behaviour(request, context)
                except grpc.aio.AbortError:
                    code = context.code() or grpc.StatusCode.UNKNOWN
                    error = context.details()
                    raise
                except asyncio.CancelledError:
                    code, error = grpc.StatusCode.CANCELLED, "cancelled"
                    raise
                except Exception as exc:
                    # Record before the status goes out: a caller that sees the error must also
                    # find it in the metrics and the log.
                    code, message = describe(exc)
                    error = message if code is not grpc.StatusCode.INTERNAL else bounded_message(repr(exc))
                    finish(token, started, code, error)
                    token = None
                    await context.abort(code, message)
                finally:
                    if token is not None:
                        finish(token, started, _code_of(context, code), error)

            wrapped: Callable[..., Any] = unary_out
        else:

            async def stream_out(
                request: Any, context: grpc.aio.ServicerContext[Any, Any]
            ) -> AsyncIterator[Any]:
                _, token, started = start(context)
                code, error = grpc.StatusCode.OK, None
                try:
                    async for item in behaviour(request, context):
                        yield item
                except grpc.aio.AbortError:
                    code = context.code() or grpc.StatusCode.UNKNOWN
                    error = context.details()
                    raise
                except (asyncio.CancelledError, GeneratorExit):
                    code, error = grpc.StatusCode.CANCELLED, "cancelled"
                    raise
                except Exception as exc:
                    # Record before the status goes out: a caller that sees the error must also
                    # find it in the metrics and the log.
                    code, message = describe(exc)
                    error = message if code is not grpc.StatusCode.INTERNAL else bounded_message(repr(exc))
                    finish(token, started, code, error)
                    token = None
                    await context.abort(code, message)
                finally:
                    if token is not None:
                        finish(token, started, _code_of(context, code), error)

            wrapped = stream_out

        return factory(
            wrapped,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )


contextvars_token = Any  # the Token type of contextvars is not subscriptable on 3.11


def _code_of(context: grpc.aio.ServicerContext[Any, Any], fallback: grpc.StatusCode) -> grpc.StatusCode:
    # A handler may set a code on the context without raising; prefer what the caller will see.
    code = context.code()
    return code if isinstance(code, grpc.StatusCode) else fallback


def _handler_parts(
    handler: grpc.RpcMethodHandler[Any, Any],
) -> tuple[Callable[..., grpc.RpcMethodHandler[Any, Any]], Any]:
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler, handler.unary_unary
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler, handler.unary_stream
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler, handler.stream_unary
    return grpc.stream_stream_rpc_method_handler, handler.stream_stream


@dataclass
class ServiceBinding:
    """One gRPC service to serve: the servicer object, its generated ``add_…_to_server`` and descriptor."""

    servicer: object
    add_to_server: Callable[[Any, grpc.aio.Server], None]
    descriptor: ServiceDescriptor

    @property
    def name(self) -> str:
        return self.descriptor.full_name


Hook = Callable[[], Awaitable[None]]


@dataclass
class GrpcApp:
    """A gRPC server with health, reflection, the interceptor, metrics and graceful shutdown."""

    name: str
    settings: ServiceSettings
    bindings: Sequence[ServiceBinding]
    on_startup: list[Hook] = field(default_factory=list)
    on_shutdown: list[Hook] = field(default_factory=list)
    metrics: Metrics = field(default_factory=default_metrics)
    server: grpc.aio.Server | None = None
    port: int = 0
    metrics_port: int | None = None
    health: health.aio.HealthServicer = field(default_factory=health.aio.HealthServicer)

    async def start(self) -> int:
        """Run the start-up hooks, bind, serve; returns the bound port."""
        # Before any hook: a service without a token must not open connections or start work.
        tokens = server_tokens(self.settings.auth, self.name)
        for hook in self.on_startup:
            await hook()
        interceptors: list[grpc.aio.ServerInterceptor] = [ObservabilityInterceptor(self.metrics)]
        if tokens is not None:
            # Inside the observability interceptor, so a refused call is logged and counted too.
            interceptors.append(AuthInterceptor(tokens))
        self.server = grpc.aio.server(
            interceptors=interceptors,
            options=[
                ("grpc.so_reuseport", 0),
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                ("grpc.http2.min_recv_ping_interval_without_data_ms", MIN_CLIENT_PING_INTERVAL_S * 1000),
            ],
        )
        for binding in self.bindings:
            binding.add_to_server(binding.servicer, self.server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        names = [b.name for b in self.bindings]
        reflection.enable_server_reflection(
            [*names, health.SERVICE_NAME, reflection.SERVICE_NAME], self.server
        )
        address = f"{self.settings.host}:{self.settings.port}"
        self.port = self.server.add_insecure_port(address)
        if self.port == 0:
            raise OSError(f"{self.name}: cannot bind the gRPC port {address} (in use?)")
        await self.server.start()
        if self.settings.metrics_port is not None:
            httpd, _ = start_http_server(
                self.settings.metrics_port, self.settings.host, self.metrics.registry
            )
            self.metrics_port = httpd.server_port
        for name in ["", *names]:
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        self._write_ready_file()
        log.info(
            "%s serving on %s:%d",
            self.name,
            self.settings.host,
            self.port,
            extra={"port": self.port, "metrics_port": self.metrics_port, "services": names},
        )
        return self.port

    def _write_ready_file(self) -> None:
        if self.settings.ready_file is not None:
            write_ready_file(self.settings.ready_file, self.name, self.port, self.metrics_port)

    async def stop(self, grace: float | None = None) -> None:
        """NOT_SERVING, let in-flight RPCs finish, then run the shutdown hooks; all within the budget.

        The budget is ``settings.shutdown_timeout_s``: in-flight RPCs get ``grace`` seconds
        (default: ``grace_period_s``, at most half the budget), the hooks what is left. A hook
        still running at the end of the budget is cancelled, and the hooks after it are skipped
        (each one logged): the process is about to exit, and its supervisor would otherwise
        SIGKILL it half-way through anyway.
        """
        if self.server is None:
            return
        loop = asyncio.get_running_loop()
        budget = self.settings.shutdown_timeout_s
        if grace is None:
            grace = min(self.settings.grace_period_s, budget / 2)
        deadline = loop.time() + max(budget, grace)
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace)
        self.server = None
        for hook in reversed(self.on_shutdown):
            name = getattr(hook, "__qualname__", repr(hook))
            left = deadline - loop.time()
            if left <= 0:
                log.error("%s: shutdown budget of %.1f s used up; skipping %s", self.name, budget, name)
                continue
            try:
                await asyncio.wait_for(hook(), left)
            except TimeoutError:
                log.error(
                    "%s: shutdown hook %s did not finish within the %.1f s budget; abandoned",
                    self.name,
                    name,
                    budget,
                )
            except Exception:
                log.exception("%s: a shutdown hook failed", self.name)
        if self.settings.ready_file is not None:
            with contextlib.suppress(FileNotFoundError):
                self.settings.ready_file.unlink()
        log.info("%s stopped", self.name)

    async def serve_until_signal(self, on_signal: Callable[[], None] | None = None) -> None:
        """Start, then wait for SIGTERM or SIGINT and stop gracefully.

        ``on_signal`` runs when the signal arrives, before the shutdown starts (run_service arms
        its exit watchdog there).
        """
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        try:
            await self.start()
            await stop.wait()
            log.info("%s: shutdown signal received", self.name)
            if on_signal is not None:
                on_signal()
        finally:
            await self.stop()


def run_service(name: str, settings_cls: type[S], build: Callable[[S], GrpcApp]) -> int:
    """Entry point of ``python -m <service>``: read settings, set up logging, serve until signalled.

    A configuration error prints one line per bad variable and exits with status 2; a dependency
    that cannot be reached (NATS, the object store, a taken port) exits with status 1.

    Once the shutdown signal has arrived the process is gone within ``shutdown_timeout_s`` plus
    :data:`EXIT_SLACK_S`: :meth:`GrpcApp.stop` keeps to the budget, then any process this one
    started in a process group of its own (``flywheel_common.procs.stop_detached_children``) is
    stopped, and a watchdog thread ends the process (status 1) if something (a thread pool
    waiting on a stuck call, say) still holds it after that.
    """
    import sys

    from flywheel_common.logs import configure_logging
    from flywheel_common.procs import stop_detached_children
    from flywheel_common.runtime import StartupError
    from flywheel_common.settings import SettingsError, load_settings

    try:
        settings = load_settings(settings_cls)
    except SettingsError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    configure_logging(name, settings.log_level, settings.log_format)
    budget = settings.shutdown_timeout_s

    def watchdog() -> None:
        log.error(
            "%s: still running %.1f s after the shutdown signal (budget %.1f s); exiting now",
            name,
            budget + EXIT_SLACK_S,
            budget,
        )
        stop_detached_children(grace_s=0)
        logging.shutdown()
        os._exit(1)

    def arm_watchdog() -> None:
        timer = threading.Timer(budget + EXIT_SLACK_S, watchdog)
        timer.daemon = True
        timer.start()

    try:
        asyncio.run(build(settings).serve_until_signal(on_signal=arm_watchdog))
    except (OSError, StartupError, MissingServiceToken) as err:
        log.error("%s cannot start: %s", name, err)
        print(f"error: {err}", file=sys.stderr)
        return 1
    # Children in our process group are stopped with it (the supervisor signals what is left of
    # the group once we are gone); the ones a hook should have stopped and that live in a group
    # of their own would be orphans.
    left = stop_detached_children(grace_s=EXIT_SLACK_S / 2)
    if left:
        log.warning("%s: stopped %d leftover child process(es): %s", name, len(left), left)
    return 0


def write_ready_file(path: Path, service: str, port: int, metrics_port: int | None = None) -> None:
    """Atomically write the ready file (JSON: pid, port, metrics_port, service) once serving.

    Every service, gRPC or HTTP, writes it the same way; `flywheel up` and the tests read it
    with :func:`ready_file_info`. Temp file then rename: a reader never sees half of it.
    """
    info = {"pid": os.getpid(), "port": port, "metrics_port": metrics_port, "service": service}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(info))
    os.replace(tmp, path)


def ready_file_info(path: Path) -> dict[str, Any] | None:
    """Read a ready file written by :func:`write_ready_file`, or None while it does not exist yet."""
    try:
        info: dict[str, Any] = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    return info
