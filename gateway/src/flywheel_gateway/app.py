"""Our thin ASGI layer around the LiteLLM proxy app: auth, model check, OpenAI error shapes, routing.

Why a layer of ours (and not LiteLLM's ``custom_auth`` alone)
-------------------------------------------------------------
Stock LiteLLM 1.103 answers a missing key with 500, a wrong key (no database) with 400 and an
unknown model with 400. A ``custom_auth`` hook runs *inside* LiteLLM's request pipeline, after
FastAPI routing and body parsing, and cannot change how LiteLLM reports an unknown model. One
small ASGI layer in front of LiteLLM's app, in the same process, fixes all three in one place:

* every route except the probes needs a key: none → 401, not the master key → 401 (or, when a
  database is configured, LiteLLM checks its virtual keys and we turn its auth errors into 401);
* an inference request naming a model no route serves → 404 ``model_not_found``;
* every error we produce, and LiteLLM's auth / unknown-model errors, have OpenAI's body
  ``{"error": {"message", "type", "param", "code"}}``.

Routing
-------
Requests naming a served alias (``aliases.py``) are rewritten to the model that answers them
(the alias's target, or a canary's candidate) and then routed exactly as if the caller had named
it; real routes win over an alias of the same name.

Requests for our model server's routes (``ft/*`` adapters and the base models) with the master key
take the fast path (``fast_path.py``), unless their fallback chain leaves the model server or
``FLYWHEEL_GATEWAY_FAST_PATH=false``. Hosted providers, virtual keys (budgets, rate limits) and
every admin route go through LiteLLM unchanged.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import time
from typing import Any

import aiohttp
import orjson

from flywheel_gateway.aliases import AliasResponse, AliasService, Resolution, ShadowSink
from flywheel_gateway.asgi import ASGIApp, Message, Receive, Scope, Send, openai_error, read_body, respond
from flywheel_gateway.channels import ServiceChannels
from flywheel_gateway.console import ConsoleApp
from flywheel_gateway.fast_path import CallbackLogger, FastPath
from flywheel_gateway.fine_tuning import FineTuningAPI, fine_tuning_path
from flywheel_gateway.settings import GatewaySettings

log = logging.getLogger("flywheel.gateway")

#: Paths that need no key: the Kubernetes probes, and pages LiteLLM serves to browsers (its admin
#: UI and login, which LiteLLM authenticates itself with its own session cookie; the API docs).
PUBLIC_PATHS = frozenset(
    {
        "/health/liveliness",
        "/health/readiness",
        "/health/liveness",
        "/",
        "/docs",
        "/openapi.json",
        "/login",
        "/v2/login",
        "/sso/key/generate",
        "/sso/callback",
    }
)
PUBLIC_PREFIXES = ("/ui/", "/litellm-asset-prefix/")
#: Inference paths whose body names a model: path -> model-server path.
MODEL_PATHS = {
    "/v1/chat/completions": "/chat/completions",
    "/chat/completions": "/chat/completions",
    "/v1/completions": "/completions",
    "/completions": "/completions",
}
MAX_BODY_BYTES = 32 * 1024 * 1024
FEEDBACK_PATHS = frozenset({"/v1/feedback", "/feedback"})
#: How long a virtual key LiteLLM accepted is trusted for feedback without asking again (s).
KEY_TRUST_S = 60.0


class GatewayApp:
    """ASGI app: our checks and routing in front of LiteLLM's FastAPI app (``inner``)."""

    def __init__(
        self,
        settings: GatewaySettings,
        inner: ASGIApp,
        callbacks: list[CallbackLogger] | None = None,
        aliases: AliasService | None = None,
        fine_tuning: bool = False,
    ) -> None:
        self.settings = settings
        self.inner = inner
        self.fast = FastPath(settings, callbacks or [])
        self.aliases = aliases
        #: OpenAI's files and fine-tuning API on our services (None without an object store).
        #: One gRPC channel per service for the whole process (console and fine-tuning API).
        self.channels = ServiceChannels()
        self.fine_tuning = (
            FineTuningAPI.from_environment(settings, self.fast, self.channels) if fine_tuning else None
        )
        self._trusted_keys: dict[str, float] = {}
        self.master_key = settings.master_key.get_secret_value().encode()
        self.prefix = settings.adapter_prefix
        self.hosted_prefixes = tuple(
            p
            for p, key in (("openai/", settings.openai_api_key), ("anthropic/", settings.anthropic_api_key))
            if key
        )
        self.has_db = settings.database_url is not None
        self.console = console_app(self)
        # Models whose fallback chain leaves the model server: LiteLLM serves them whole.
        self.hosted_fallbacks = frozenset(
            name
            for name, chain in settings.fallbacks.items()
            if any(self.route_of(m) != "fast" for m in chain)
        )

    async def close(self) -> None:
        if self.aliases is not None:
            await self.aliases.close()
        # The console and the fine-tuning API hold nothing but this process's shared channels.
        await self.channels.close()
        await self.fast.close()

    @staticmethod
    def api_key(scope: Scope) -> str | None:
        """The caller's key: ``Authorization: Bearer``, or ``x-api-key`` / ``api-key`` as LiteLLM accepts."""
        found = None
        for name, value in scope["headers"]:
            if name == b"authorization":
                text = value.decode("latin-1").strip()
                scheme, _, token = text.partition(" ")
                found = token.strip() if scheme.lower() == "bearer" else text
                break
            if name in (b"x-api-key", b"api-key") and found is None:
                found = value.decode("latin-1").strip()
        return found or None

    def is_master(self, key: str) -> bool:
        return hmac.compare_digest(key.encode(), self.master_key)

    def route_of(self, model: str) -> str | None:
        """'fast' for model-server routes, 'litellm' for hosted ones, None when nothing serves it."""
        if self.fast.serves(model):
            return "fast"
        if model.startswith(self.hosted_prefixes) and self.hosted_prefixes:
            return "litellm"
        return None

    def known_models(self) -> str:
        names = [
            f"{self.prefix}<adapter>",
            *sorted(self.fast.base_models),
            *(f"{p}<model>" for p in self.hosted_prefixes),
        ]
        return ", ".join(names)

    # ------------------------------------------------------------------ ASGI entry

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.inner(scope, receive, send)  # lifespan (LiteLLM's start-up) and websockets
            return
        path = scope["path"]
        if self.console is not None and (path == "/console" or path.startswith("/console/")):
            await self.console(scope, receive, send)  # signs its users in itself (same keys)
            return
        if path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES) or path == "/ui":
            await self.inner(scope, receive, send)
            return
        key = self.api_key(scope)
        if key is None:
            await respond(
                send,
                401,
                openai_error(
                    401,
                    "Missing API key: send 'Authorization: Bearer <key>'.",
                    "invalid_request_error",
                    "missing_api_key",
                ),
            )
            return
        master = self.is_master(key)
        if not master and not self.has_db:
            shown = key[:3] + "…" + key[-2:] if len(key) > 8 else "***"
            await respond(
                send,
                401,
                openai_error(
                    401, f"Incorrect API key provided: {shown}.", "invalid_request_error", "invalid_api_key"
                ),
            )
            return
        if scope["method"] == "POST" and path in MODEL_PATHS:
            await self.model_request(scope, receive, send, master)
            return
        if scope["method"] == "POST" and path in FEEDBACK_PATHS:
            await self.feedback(scope, receive, send, master, key)
            return
        if scope["method"] == "GET" and path in ("/v1/models", "/models") and master:
            await self.list_models(scope, receive, send)
            return
        if (ft_path := fine_tuning_path(path)) is not None:
            await self.fine_tuning_request(scope, receive, send, master, ft_path)
            return
        await self.inner(scope, receive, _ErrorRewriter(send))

    async def fine_tuning_request(
        self, scope: Scope, receive: Receive, send: Send, master: bool, path: str
    ) -> None:
        """``/v1/files`` and ``/v1/fine_tuning/*``: ours, never LiteLLM's (see ``fine_tuning.py``)."""
        if not master:
            await respond(
                send,
                401,
                openai_error(
                    401,
                    "The files and fine-tuning API needs the gateway's master key.",
                    "invalid_request_error",
                    "invalid_api_key",
                ),
            )
            return
        if self.fine_tuning is None:
            await respond(
                send,
                503,
                openai_error(
                    503,
                    "fine-tuning needs the object store, which this gateway was not given (FLYWHEEL_OBJECT_STORE_*)",
                    "api_error",
                    "fine_tuning_unavailable",
                ),
            )
            return
        await self.fine_tuning(scope, receive, send, path)

    async def list_models(self, scope: Scope, receive: Receive, send: Send) -> None:
        """LiteLLM's model list plus every adapter the model server has loaded, as ``ft/<name>``.

        LiteLLM lists a wildcard route only by its configured names, so without this callers could
        not discover which adapters answer.
        """
        captured: dict[str, Any] = {"status": 500, "body": []}

        async def capture(message: Message) -> None:
            if message["type"] == "http.response.start":
                captured["status"] = message["status"]
            elif message["type"] == "http.response.body":
                captured["body"].append(message.get("body", b""))

        await self.inner(scope, receive, capture)
        raw = b"".join(captured["body"])
        try:
            listing = orjson.loads(raw)
        except orjson.JSONDecodeError:
            listing = None
        if (
            captured["status"] != 200
            or not isinstance(listing, dict)
            or not isinstance(listing.get("data"), list)
        ):
            await respond(send, captured["status"], raw)
            return
        known = {m.get("id") for m in listing["data"] if isinstance(m, dict)}
        by_name: dict[str, dict[str, Any]] = {}
        try:
            session = await self.fast.session()
            async with session.get(
                self.fast.upstream + "/models", timeout=aiohttp.ClientTimeout(total=5)
            ) as reply:
                upstream = await reply.json(content_type=None) if reply.status == 200 else {}
        except (aiohttp.ClientError, TimeoutError, ValueError) as err:
            log.warning("cannot list the model server's adapters: %s", err)
            upstream = {}
        for model in upstream.get("data", []) if isinstance(upstream, dict) else []:
            if isinstance(model, dict) and isinstance(model.get("id"), str):
                by_name[f"{self.prefix}{model['id']}" if model.get("parent") else model["id"]] = model
            if (
                isinstance(model, dict)
                and model.get("parent")
                and f"{self.prefix}{model.get('id')}" not in known
            ):
                listing["data"].append(
                    {
                        "id": f"{self.prefix}{model['id']}",
                        "object": "model",
                        "created": model.get("created", 0),
                        "owned_by": "flywheel",
                        "parent": model["parent"],
                        # The content digest of what the replica loaded (our model server; vLLM has none).
                        **({"digest": model["digest"]} if isinstance(model.get("digest"), str) else {}),
                    }
                )
        if self.aliases is not None:
            listing["data"].extend(e for e in self.aliases.model_entries(by_name) if e["id"] not in known)
        await respond(send, 200, orjson.dumps(listing))

    async def model_request(self, scope: Scope, receive: Receive, send: Send, master: bool) -> None:
        raw = await read_body(receive, send, MAX_BODY_BYTES, "request body")
        if raw is None:
            return
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError as err:
            await respond(
                send,
                400,
                openai_error(400, f"request body is not valid JSON: {err}", "invalid_request_error"),
            )
            return
        model = body.get("model") if isinstance(body, dict) else None
        if not isinstance(model, str) or not model:
            await respond(
                send,
                400,
                openai_error(
                    400,
                    "'model' is required (a string naming the model to call).",
                    "invalid_request_error",
                    "missing_required_parameter",
                    "model",
                ),
            )
            return
        route = self.route_of(model)
        if self.aliases is not None:
            if route is not None:
                self.aliases.note_route(model)
            elif (resolution := self.aliases.resolve(model)) is not None:
                await self.alias_request(scope, send, master, body, resolution)
                return
        if route is None and not self.has_db:  # with a database, LiteLLM may know models added at run time
            await respond(
                send,
                404,
                openai_error(
                    404,
                    f"The model `{model}` does not exist. Models served here: {self.known_models()}.",
                    "invalid_request_error",
                    "model_not_found",
                    "model",
                ),
            )
            return
        if self.takes_fast_path(model, route, master):
            await self.fast.forward(send, body, model, MODEL_PATHS[scope["path"]])
            return
        sent = False

        async def replay() -> Message:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": raw, "more_body": False}
            return await receive()

        send_to = _ErrorRewriter(send)
        if route == "fast":  # a model-server route that LiteLLM serves (virtual key, fast path off)
            send_to = _ErrorRewriter(_VllmFieldsRestorer(send))
        await self.inner(scope, replay, send_to)

    def takes_fast_path(self, model: str, route: str | None, master: bool) -> bool:
        return route == "fast" and master and self.settings.fast_path and model not in self.hosted_fallbacks

    # ------------------------------------------------------------------ aliases

    async def alias_request(
        self, scope: Scope, send: Send, master: bool, body: dict[str, Any], res: Resolution
    ) -> None:
        """Serve a request to a served alias as a request to the arm ``res`` chose."""
        assert self.aliases is not None
        route = self.route_of(res.model)
        fast = self.takes_fast_path(res.model, route, master)
        observer = AliasResponse(send, res, self.aliases, rewrite_model=not fast)
        if route is None and not self.has_db:  # counted as the arm's error by the observer
            await respond(
                observer,
                404,
                openai_error(
                    404,
                    f"The model `{res.alias}` is an alias of `{res.model}`, which no route here serves.",
                    "invalid_request_error",
                    "model_not_found",
                    "model",
                ),
            )
            return
        if res.shadow is not None:
            copy, base = dict(body), dict(scope)
            self.aliases.shadow(lambda: self.shadow_call(base, copy, res, master))
        try:
            await self.dispatch(scope, observer, body, res.model, route, fast, res.alias, res.metadata())
        finally:
            observer.abandon()

    async def shadow_call(self, scope: Scope, body: dict[str, Any], res: Resolution, master: bool) -> None:
        """Send a non-streaming copy of an alias request to the shadow candidate; count, discard."""
        assert self.aliases is not None and res.shadow is not None
        body["stream"] = False
        body.pop("stream_options", None)
        route = self.route_of(res.shadow)
        sink = ShadowSink()
        t0 = time.perf_counter()
        status: int | None = 404
        try:
            if route is not None or self.has_db:
                fast = self.takes_fast_path(res.shadow, route, master)
                metadata = res.metadata("shadow")
                await self.dispatch(scope, sink, body, res.shadow, route, fast, res.alias, metadata)
                status = sink.status
        except Exception as err:
            status = None
            log.warning("shadow copy to %s failed: %s", res.shadow, err)
        finally:
            self.aliases.record(res, res.shadow, (time.perf_counter() - t0) * 1000, status)

    async def dispatch(
        self,
        scope: Scope,
        send: Send,
        body: dict[str, Any],
        model: str,
        route: str | None,
        fast: bool,
        shown: str,
        metadata: dict[str, Any],
    ) -> None:
        """Answer ``body`` from ``model`` (fast path or LiteLLM), showing the caller's name ``shown``."""
        if fast:
            await self.fast.forward(
                send, body, model, MODEL_PATHS[scope["path"]], shown=shown, metadata=metadata
            )
            return
        # LiteLLM passes the request's `metadata` on to its callbacks (capture reads the alias there).
        given = body.get("metadata")
        raw = orjson.dumps(
            {**body, "model": model, "metadata": {**(given if isinstance(given, dict) else {}), **metadata}}
        )
        headers = [(k, v) for k, v in scope["headers"] if k != b"content-length"]
        headers.append((b"content-length", str(len(raw)).encode()))
        sent = False
        idle = asyncio.Event()

        async def replay() -> Message:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": raw, "more_body": False}
            await idle.wait()  # never set: LiteLLM only learns of a disconnect through our caller
            return {"type": "http.disconnect"}

        send_to = _ErrorRewriter(_VllmFieldsRestorer(send) if route == "fast" else send)
        await self.inner({**scope, "headers": headers}, replay, send_to)

    # ------------------------------------------------------------------ feedback

    async def feedback(self, scope: Scope, receive: Receive, send: Send, master: bool, key: str) -> None:
        """``POST /v1/feedback``: any key the gateway accepts (a virtual key is checked by LiteLLM)."""
        if not master and not await self.key_accepted(scope, key):
            await respond(
                send,
                401,
                openai_error(401, "Incorrect API key provided.", "invalid_request_error", "invalid_api_key"),
            )
            return
        if self.aliases is None:
            await respond(
                send,
                503,
                openai_error(
                    503,
                    "feedback needs the object store, which this gateway was not given (FLYWHEEL_OBJECT_STORE_*)",
                    "api_error",
                    "feedback_unavailable",
                ),
            )
            return
        await self.aliases.handle_feedback(receive, send)

    async def viewer_role(self, key: str) -> str | None:
        """The console's role for a key that is not the master key: ``viewer`` when LiteLLM accepts
        it as a virtual key (only with a database), else None."""
        if not self.has_db:
            return None
        scope: Scope = {
            "type": "http", "http_version": "1.1", "scheme": "http", "method": "GET", "path": "/v1/models",
            "raw_path": b"/v1/models", "query_string": b"", "root_path": "", "server": ("127.0.0.1", 0),
            "client": ("127.0.0.1", 0), "headers": [(b"authorization", f"Bearer {key}".encode())],
        }  # fmt: skip
        return "viewer" if await self.key_accepted(scope, key) else None

    async def key_accepted(self, scope: Scope, key: str) -> bool:
        """Whether LiteLLM accepts ``key`` (asked with ``GET /v1/models``; a yes is kept for a minute)."""
        digest = hashlib.sha256(key.encode()).hexdigest()
        now = time.monotonic()
        if now - self._trusted_keys.get(digest, -KEY_TRUST_S) < KEY_TRUST_S:
            return True
        status = ShadowSink()

        async def nothing() -> Message:
            return {"type": "http.request", "body": b"", "more_body": False}

        probe = {
            **scope,
            "method": "GET",
            "path": "/v1/models",
            "raw_path": b"/v1/models",
            "query_string": b"",
        }
        await self.inner(probe, nothing, status)
        if status.status != 200:
            return False
        if len(self._trusted_keys) > 10_000:
            self._trusted_keys.clear()
        self._trusted_keys[digest] = now
        return True


def console_app(gateway: GatewayApp) -> ConsoleApp | None:
    """The web console (``/console``), unless ``FLYWHEEL_GATEWAY_CONSOLE=false``."""
    from flywheel_gateway.console.data import Backends, ServiceAddresses

    settings = gateway.settings
    if not settings.console:
        return None
    store = gateway.aliases.store if gateway.aliases is not None else None
    backends = Backends(ServiceAddresses.of(settings), store, gateway.channels, settings.console_page_size)
    return ConsoleApp(settings.master_key.get_secret_value(), gateway.viewer_role, backends)


class _VllmFieldsRestorer:
    """Puts vLLM's per-choice extras back where vLLM sends them, for answers LiteLLM relays whole.

    LiteLLM keeps choice fields it does not know (``token_ids`` of ``return_token_ids``, vLLM's
    ``stop_reason``) but moves them into ``provider_specific_fields``; callers that asked vLLM
    for them look for them on the choice. Only whole JSON answers with status 200 are touched;
    streams pass through (LiteLLM leaves ``token_ids`` in stream chunks where they were).
    """

    FIELDS = ("token_ids", "prompt_token_ids", "stop_reason")

    def __init__(self, send: Send) -> None:
        self.send = send
        self.start: Message | None = None
        self.parts: list[bytes] = []

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            headers = dict(message.get("headers") or [])
            if message["status"] == 200 and headers.get(b"content-type", b"").startswith(b"application/json"):
                self.start = message
                return
        elif message["type"] == "http.response.body" and self.start is not None:
            self.parts.append(message.get("body", b""))
            if message.get("more_body"):
                return
            await self._flush()
            return
        await self.send(message)

    async def _flush(self) -> None:
        assert self.start is not None
        raw = b"".join(self.parts)
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError:
            data = None
        changed = False
        for choice in data.get("choices") or () if isinstance(data, dict) else ():
            extras = choice.get("provider_specific_fields") if isinstance(choice, dict) else None
            if not isinstance(extras, dict):
                continue
            for name in self.FIELDS:
                if name in extras and name not in choice:
                    choice[name] = extras.pop(name)
                    changed = True
            if not extras:
                del choice["provider_specific_fields"]
        if changed:
            raw = orjson.dumps(data)
        headers = [(k, v) for k, v in self.start.get("headers") or [] if k != b"content-length"]
        headers.append((b"content-length", str(len(raw)).encode()))
        await self.send({**self.start, "headers": headers})
        await self.send({"type": "http.response.body", "body": raw, "more_body": False})


class _ErrorRewriter:
    """Wraps ``send`` for requests LiteLLM serves: its auth and unknown-model errors become 401/404.

    Only error responses (status >= 400) are buffered and inspected; others pass through untouched.
    """

    AUTH_HINTS = (
        "no connected db",
        "invalid proxy server token",
        "authentication error",
        "invalid api key",
        "api key not found",
        "malformed api key",
        "no api key passed",
    )
    MODEL_HINTS = ("invalid model name", "model_not_found", "no deployments available")

    def __init__(self, send: Send) -> None:
        self.send = send
        self.start: Message | None = None
        self.parts: list[bytes] = []

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            if message["status"] >= 400:
                self.start = message
                return
        elif message["type"] == "http.response.body" and self.start is not None:
            self.parts.append(message.get("body", b""))
            if message.get("more_body"):
                return
            await self._flush()
            return
        await self.send(message)

    async def _flush(self) -> None:
        assert self.start is not None
        status = self.start["status"]
        raw = b"".join(self.parts)
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError:
            data = None
        error = data.get("error") if isinstance(data, dict) else None
        message = (error.get("message") if isinstance(error, dict) else None) or raw.decode(errors="replace")
        lowered = str(message).lower()
        if status in (400, 401, 403, 500) and any(h in lowered for h in self.AUTH_HINTS):
            status, body = (
                401,
                openai_error(
                    401, f"Authentication failed: {message}", "invalid_request_error", "invalid_api_key"
                ),
            )
        elif status in (400, 404) and any(h in lowered for h in self.MODEL_HINTS):
            status, body = (
                404,
                openai_error(404, str(message), "invalid_request_error", "model_not_found", "model"),
            )
        elif isinstance(error, dict):
            body = orjson.dumps(
                {
                    "error": {
                        "message": error.get("message"),
                        "type": error.get("type"),
                        "param": error.get("param"),
                        "code": error.get("code"),
                    }
                }
            )
        else:
            kind = "api_error" if status >= 500 else "invalid_request_error"
            body = openai_error(status, str(message), kind)
        await respond(self.send, status, body)
