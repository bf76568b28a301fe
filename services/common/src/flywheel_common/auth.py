"""Service-to-service authentication: one shared bearer token on every gRPC call.

**What is checked.** Every gRPC call to a Flywheel service must carry
``authorization: Bearer <token>`` in its metadata, where ``<token>`` is the deployment's service
token (``FLYWHEEL_SERVICE_TOKEN``: a Kubernetes Secret in the chart, ``<state>/service.token`` in
the embedded stack). :class:`AuthInterceptor` (installed by :class:`flywheel_common.server.GrpcApp`
on every service) compares it in constant time with the tokens the service accepts and answers
``UNAUTHENTICATED``, with a message that says what is missing and how to pass it, otherwise. The
model server's state-changing HTTP routes take the same token (``Authorization: Bearer``).

**What stays open.** ``grpc.health.v1.Health`` (the kubelet's gRPC probes cannot send headers,
and health says nothing about the data) and server reflection (the schema is the public proto
files of this repository; keeping it open keeps ``grpcurl -plaintext HOST:PORT list`` and
``describe`` working for anyone debugging, while every call that reads or changes data needs the
token). Network policies in the chart stay as the second wall.

**Rotation without downtime.** A service accepts ``FLYWHEEL_SERVICE_TOKEN`` and, when set,
``FLYWHEEL_SERVICE_TOKEN_NEXT``; clients send ``FLYWHEEL_SERVICE_TOKEN``. Roll out the new token
as ``…_NEXT`` everywhere, then swap the two (clients now send the new one, servers still accept
the old), then drop ``…_NEXT``.

**No token configured.** A service refuses to start (:class:`MissingServiceToken`) unless
``FLYWHEEL_AUTH_DISABLED=1`` says, on purpose, that it may serve without authentication; it then
logs a warning at start. Secure by default: a forgotten Secret is an error, not an open port.

**Why not mTLS.** Mutual TLS would also encrypt the traffic, but it needs a certificate authority
in every cluster (cert-manager is not always installed) and gives every ``grpcurl`` user a client
certificate to manage; a bearer token is one Secret and one ``-H`` flag. Encryption on the wire,
where needed, is the job of a service mesh.

Clients open channels with :func:`channel` (asyncio) or :func:`sync_channel`, which add the
token to every call; nothing else in the code base should call ``grpc.insecure_channel``.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import grpc
from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

log = logging.getLogger("flywheel.auth")

#: The environment variable every service and client reads the token from.
TOKEN_VARIABLE = "FLYWHEEL_SERVICE_TOKEN"
#: The metadata key (gRPC) and header (HTTP) that carries it, as ``Bearer <token>``.
AUTHORIZATION_KEY = "authorization"
#: gRPC services any caller may use without a token (see the module docstring for why).
OPEN_SERVICES = frozenset(
    {
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
        "grpc.reflection.v1.ServerReflection",
    }
)
#: How to pass the token, appended to every refusal.
HOW_TO = (
    'send "authorization: Bearer <token>" in the call\'s metadata, e.g. '
    f'grpcurl -H "authorization: Bearer ${TOKEN_VARIABLE}" …; the token is {TOKEN_VARIABLE} of '
    "this deployment (the embedded stack keeps it in <state-dir>/service.token, `flywheel status` "
    "shows where; the Helm chart keeps it in its Secret, key service-token)"
)
#: The same for an HTTP route (the model server's admin routes).
HTTP_HOW_TO = (
    f'send the header "Authorization: Bearer <token>", e.g. curl -H "Authorization: Bearer ${TOKEN_VARIABLE}" …; '
    f"the token is {TOKEN_VARIABLE} of this deployment (the embedded stack keeps it in "
    "<state-dir>/service.token; the Helm chart in its Secret, key service-token)"
)


class AuthSettings(BaseSettings):
    """The service token, shared by every service and client: ``FLYWHEEL_SERVICE_TOKEN`` & co."""

    model_config = SettingsConfigDict(env_prefix="FLYWHEEL_", extra="ignore")

    service_token: SecretStr | None = Field(
        None,
        description="The token this process sends on every call to another service, and accepts on "
        "its own. Required unless auth_disabled; the same value on every service.",
    )
    service_token_next: SecretStr | None = Field(
        None,
        description="A second token a service also accepts (never sends): the next one, during a rotation.",
    )
    auth_disabled: bool = Field(
        False,
        description="Serve without checking tokens (FLYWHEEL_AUTH_DISABLED=1). Only where nothing "
        "else can reach the ports; a warning is logged at start.",
    )

    def token(self) -> str | None:
        """The token to send, or None when none is set (an empty value counts as unset)."""
        value = self.service_token.get_secret_value().strip() if self.service_token else ""
        return value or None

    def accepted(self) -> list[str]:
        """Every token a server accepts (current, then next), without empty ones."""
        found = [s.get_secret_value().strip() for s in (self.service_token, self.service_token_next) if s]
        return [token for token in found if token]


class MissingServiceToken(RuntimeError):
    """A service was started with no token and without ``FLYWHEEL_AUTH_DISABLED=1``."""


def server_tokens(settings: AuthSettings, service: str) -> list[str] | None:
    """The tokens ``service`` accepts, or None when checking is disabled (warned loudly).

    Raises :class:`MissingServiceToken` when there is no token and checking is not disabled.
    """
    if settings.auth_disabled:
        log.warning(
            "%s: FLYWHEEL_AUTH_DISABLED is set: every gRPC call is accepted WITHOUT AUTHENTICATION; "
            "anything that reaches this port can change its data",
            service,
        )
        return None
    tokens = settings.accepted()
    if not tokens:
        raise MissingServiceToken(
            f"{service}: no service token configured: set {TOKEN_VARIABLE} (the same value on every "
            "Flywheel service; `flywheel up` and the Helm chart generate one), or set "
            "FLYWHEEL_AUTH_DISABLED=1 to serve without authentication (only where nothing else can "
            "reach the port)"
        )
    return tokens


def bearer_problem(value: str | None, tokens: Sequence[str], how: str = HOW_TO) -> str | None:
    """Why ``value`` (an authorization header/metadata value) is not accepted, or None if it is.

    Every accepted token is compared, each in constant time, so the answer's timing does not tell
    which one (or how much of one) matched.
    """
    if not value:
        return f"this call carries no service token: {how}"
    scheme, _, presented = value.strip().partition(" ")
    if scheme.lower() != "bearer" or not presented.strip():
        return f'the authorization value must be "Bearer <token>": {how}'
    given = presented.strip().encode()
    matched = False
    for token in tokens:
        matched |= hmac.compare_digest(given, token.encode())
    if not matched:
        return f"the service token is not one this service accepts: {how}"
    return None


def _service_of(method: str) -> str:
    # "/flywheel.sandbox.v1.SandboxService/Execute" -> "flywheel.sandbox.v1.SandboxService"
    return method.lstrip("/").rpartition("/")[0]


def _refusal(handler: grpc.RpcMethodHandler[Any, Any], message: str) -> grpc.RpcMethodHandler[Any, Any]:
    """A handler of the same kind as ``handler`` that answers UNAUTHENTICATED without running it."""

    async def refuse(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    async def refuse_stream(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)
        yield  # never reached: makes this an async generator, as a streaming handler must be

    kinds: dict[str, tuple[Callable[..., grpc.RpcMethodHandler[Any, Any]], Callable[..., Any]]] = {
        "unary_unary": (grpc.unary_unary_rpc_method_handler, refuse),
        "unary_stream": (grpc.unary_stream_rpc_method_handler, refuse_stream),
        "stream_unary": (grpc.stream_unary_rpc_method_handler, refuse),
        "stream_stream": (grpc.stream_stream_rpc_method_handler, refuse_stream),
    }
    for kind, (factory, behaviour) in kinds.items():
        if getattr(handler, kind):
            return factory(
                behaviour,
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
    raise ValueError("a method handler with no behaviour")


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Answers UNAUTHENTICATED to a call without an accepted service token (except OPEN_SERVICES).

    Installed after the observability interceptor, so a refused call is logged and counted like
    any other (code UNAUTHENTICATED).
    """

    def __init__(self, tokens: Sequence[str]) -> None:
        if not tokens:
            raise ValueError("AuthInterceptor needs at least one token")
        self._tokens = list(tokens)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(details)
        if handler is None or _service_of(details.method) in OPEN_SERVICES:
            return handler
        value = None
        for key, item in details.invocation_metadata or ():
            if key == AUTHORIZATION_KEY:
                value = item if isinstance(item, str) else item.decode(errors="replace")
                break
        problem = bearer_problem(value, self._tokens)
        return handler if problem is None else _refusal(handler, problem)


# --- clients -------------------------------------------------------------------------------


_UNSET_TOKEN: Any = object()


def current_token() -> str | None:
    """The token this process sends: ``FLYWHEEL_SERVICE_TOKEN`` as the environment has it now."""
    return AuthSettings().token()


def bearer_metadata(token: str | None) -> tuple[tuple[str, str], ...]:
    """``(("authorization", "Bearer <token>"),)``, or nothing without a token."""
    return ((AUTHORIZATION_KEY, f"Bearer {token}"),) if token else ()


def http_headers(token: str | None = _UNSET_TOKEN) -> dict[str, str]:
    """``{"Authorization": "Bearer <token>"}`` for an HTTP call to a service's admin route (the
    token defaults to :func:`current_token`), or ``{}`` without a token."""
    if token is _UNSET_TOKEN:
        token = current_token()
    return {"Authorization": f"Bearer {token}"} if token else {}


def _with_token(metadata: Any, token: str) -> list[tuple[str, Any]]:
    items = [(k, v) for k, v in (metadata or ()) if k != AUTHORIZATION_KEY]
    return [*items, (AUTHORIZATION_KEY, f"Bearer {token}")]


class _AioToken:
    """Adds the bearer token to a call of an asyncio channel."""

    def __init__(self, token: str) -> None:
        self._token = token

    def _details(self, d: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
        metadata = grpc.aio.Metadata(*_with_token(d.metadata, self._token))
        return grpc.aio.ClientCallDetails(d.method, d.timeout, metadata, d.credentials, d.wait_for_ready)


# grpc.aio files an interceptor under the first of the four kinds it is an instance of, so each
# kind of call needs an object of its own.
class _AioUnaryUnary(_AioToken, grpc.aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(self._details(details), request)


class _AioUnaryStream(_AioToken, grpc.aio.UnaryStreamClientInterceptor):
    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(self._details(details), request)


class _AioStreamUnary(_AioToken, grpc.aio.StreamUnaryClientInterceptor):
    async def intercept_stream_unary(self, continuation: Any, details: Any, request_iterator: Any) -> Any:
        return await continuation(self._details(details), request_iterator)


class _AioStreamStream(_AioToken, grpc.aio.StreamStreamClientInterceptor):
    async def intercept_stream_stream(self, continuation: Any, details: Any, request_iterator: Any) -> Any:
        return await continuation(self._details(details), request_iterator)


class _SyncDetails(grpc.ClientCallDetails):
    def __init__(self, base: grpc.ClientCallDetails, metadata: list[tuple[str, Any]]) -> None:
        self.method = base.method
        self.timeout = base.timeout
        self.metadata = tuple(metadata)
        self.credentials = base.credentials
        self.wait_for_ready = base.wait_for_ready
        self.compression = base.compression


class _SyncToken(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    """Adds the bearer token to every call of a blocking channel."""

    def __init__(self, token: str) -> None:
        self._token = token

    def _details(self, d: grpc.ClientCallDetails) -> grpc.ClientCallDetails:
        return _SyncDetails(d, _with_token(d.metadata, self._token))

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)

    def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)

    def intercept_stream_unary(self, continuation: Any, details: Any, request_iterator: Any) -> Any:
        return continuation(self._details(details), request_iterator)

    def intercept_stream_stream(self, continuation: Any, details: Any, request_iterator: Any) -> Any:
        return continuation(self._details(details), request_iterator)


def channel(
    address: str,
    *,
    token: str | None = _UNSET_TOKEN,
    options: Sequence[tuple[str, Any]] | None = None,
    interceptors: Sequence[grpc.aio.ClientInterceptor] = (),
) -> grpc.aio.Channel:
    """An asyncio plaintext channel to a Flywheel service that sends the service token on every call.

    ``token`` defaults to :func:`current_token` (``FLYWHEEL_SERVICE_TOKEN``); with no token the
    calls go out without one (a server then says UNAUTHENTICATED and how to pass it).
    """
    if token is _UNSET_TOKEN:
        token = current_token()
    kinds = (_AioUnaryUnary, _AioUnaryStream, _AioStreamUnary, _AioStreamStream)
    chain = [*interceptors, *([kind(token) for kind in kinds] if token else [])]
    return grpc.aio.insecure_channel(address, options=options, interceptors=chain or None)


class _ClosingChannel(grpc.Channel):
    """An intercepted blocking channel that also closes the channel under it (and is a context manager)."""

    def __init__(self, raw: grpc.Channel, intercepted: grpc.Channel) -> None:
        self._raw = raw
        self._intercepted = intercepted

    def subscribe(self, callback: Any, try_to_connect: bool = False) -> None:
        self._intercepted.subscribe(callback, try_to_connect)

    def unsubscribe(self, callback: Any) -> None:
        self._intercepted.unsubscribe(callback)

    def unary_unary(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return self._intercepted.unary_unary(method, *args, **kwargs)

    def unary_stream(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return self._intercepted.unary_stream(method, *args, **kwargs)

    def stream_unary(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return self._intercepted.stream_unary(method, *args, **kwargs)

    def stream_stream(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return self._intercepted.stream_stream(method, *args, **kwargs)

    def close(self) -> None:
        self._raw.close()

    def __enter__(self) -> _ClosingChannel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def sync_channel(
    address: str,
    *,
    token: str | None = _UNSET_TOKEN,
    options: Sequence[tuple[str, Any]] | None = None,
) -> grpc.Channel:
    """A blocking plaintext channel that sends the service token on every call (see :func:`channel`).

    ``close()`` and ``with`` close the underlying channel.
    """
    if token is _UNSET_TOKEN:
        token = current_token()
    raw = grpc.insecure_channel(address, options=options)
    if not token:
        return raw
    return _ClosingChannel(raw, grpc.intercept_channel(raw, _SyncToken(token)))
