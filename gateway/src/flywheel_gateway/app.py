"""Our thin ASGI layer around the LiteLLM proxy app: auth, model check, OpenAI error shapes, fast path.

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

The fast path
-------------
LiteLLM's own pipeline costs ~20 ms per request here (its SDK alone ~7.7 ms), far above the
issue's 8 ms budget. Requests that go to *our* model server (``ft/*`` adapters and the base
models) with the master key are therefore forwarded by this layer itself: one pooled aiohttp
connection to the model server, the body passed through with only ``model`` rewritten exactly as
LiteLLM's ``ft/*`` → ``hosted_vllm/*`` route does, the same retries and fallbacks as configured for
LiteLLM, the same OpenAI error shapes, and the same logging callbacks (the ``CustomLogger``
instances named in the config get ``async_log_success_event`` / ``async_log_failure_event`` after
the answer is sent). Hosted providers, virtual keys (budgets, rate limits) and every admin route
still go through LiteLLM unchanged. ``FLYWHEEL_GATEWAY_FAST_PATH=false`` turns the fast path off.
"""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import hmac
import importlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import aiohttp
import orjson

from flywheel_gateway.settings import GatewaySettings

log = logging.getLogger("flywheel.gateway")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

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
MASTER_KEY_ALIAS = "master-key"
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})


def openai_error(
    status: int, message: str, kind: str, code: str | None = None, param: str | None = None
) -> bytes:
    return orjson.dumps({"error": {"message": message, "type": kind, "param": param, "code": code}})


def key_hash(key: str) -> str:
    """How a key is named in logs and callbacks: never the key itself."""
    return hashlib.sha256(key.encode()).hexdigest()


class UpstreamError(Exception):
    """The model server could not be reached or failed with a retryable status."""

    def __init__(self, message: str, status: int = 502) -> None:
        super().__init__(message)
        self.status = status


def resolve_callbacks(names: list[str]) -> list[Any]:
    """The CustomLogger instances the config names (``module.instance``), the same objects LiteLLM uses."""
    found = []
    for name in names:
        module, _, attr = name.rpartition(".")
        found.append(getattr(importlib.import_module(module), attr))
    return found


class GatewayApp:
    """ASGI app: our checks and fast path in front of LiteLLM's FastAPI app (``inner``)."""

    def __init__(self, settings: GatewaySettings, inner: ASGIApp, callbacks: list[Any] | None = None) -> None:
        self.settings = settings
        self.inner = inner
        self.master_key = settings.master_key.get_secret_value().encode()
        self.master_hash = key_hash(settings.master_key.get_secret_value())
        self.prefix = settings.adapter_prefix
        self.base_models = frozenset(settings.base_models)
        self.hosted_prefixes = tuple(
            p
            for p, key in (("openai/", settings.openai_api_key), ("anthropic/", settings.anthropic_api_key))
            if key
        )
        self.has_db = settings.database_url is not None
        self.upstream = settings.model_server_url.rstrip("/")
        self.callbacks = callbacks or []
        # Models whose fallback chain leaves the model server: LiteLLM serves them whole.
        self.hosted_fallbacks = frozenset(
            name
            for name, chain in settings.fallbacks.items()
            if any(self.route_of(m) != "fast" for m in chain)
        )
        self._session: aiohttp.ClientSession | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    # ------------------------------------------------------------------ plumbing

    async def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=60, ttl_dns_cache=300),
                timeout=aiohttp.ClientTimeout(total=self.settings.request_timeout_s, sock_connect=5),
                json_serialize=lambda o: orjson.dumps(o).decode(),
                skip_auto_headers=("User-Agent",),
            )
        return self._session

    async def close(self) -> None:
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=5)
        if self._session is not None:
            await self._session.close()

    @staticmethod
    async def respond(
        send: Send, status: int, body: bytes, content_type: bytes = b"application/json"
    ) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(b"content-type", content_type), (b"content-length", str(len(body)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": body})

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
        if (model.startswith(self.prefix) and len(model) > len(self.prefix)) or model in self.base_models:
            return "fast"
        if model.startswith(self.hosted_prefixes) and self.hosted_prefixes:
            return "litellm"
        return None

    def upstream_model(self, model: str) -> str:
        # Same mapping as the LiteLLM route `ft/*` -> `hosted_vllm/*`: the part after the prefix.
        return model[len(self.prefix) :] if model.startswith(self.prefix) else model

    def known_models(self) -> str:
        names = [
            f"{self.prefix}<adapter>",
            *sorted(self.base_models),
            *(f"{p}<model>" for p in self.hosted_prefixes),
        ]
        return ", ".join(names)

    # ------------------------------------------------------------------ ASGI entry

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.inner(scope, receive, send)  # lifespan (LiteLLM's start-up) and websockets
            return
        path = scope["path"]
        if path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES) or path == "/ui":
            await self.inner(scope, receive, send)
            return
        key = self.api_key(scope)
        if key is None:
            await self.respond(
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
            await self.respond(
                send,
                401,
                openai_error(
                    401, f"Incorrect API key provided: {shown}.", "invalid_request_error", "invalid_api_key"
                ),
            )
            return
        if scope["method"] == "POST" and path in MODEL_PATHS:
            await self.model_request(scope, receive, send, key, master)
            return
        if scope["method"] == "GET" and path in ("/v1/models", "/models") and master:
            await self.list_models(scope, receive, send)
            return
        await self.inner(scope, receive, _ErrorRewriter(send))

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
            await self.respond(send, captured["status"], raw)
            return
        known = {m.get("id") for m in listing["data"] if isinstance(m, dict)}
        try:
            session = await self.session()
            async with session.get(
                self.upstream + "/models", timeout=aiohttp.ClientTimeout(total=5)
            ) as reply:
                upstream = await reply.json(content_type=None) if reply.status == 200 else {}
        except (aiohttp.ClientError, TimeoutError, ValueError) as err:
            log.warning("cannot list the model server's adapters: %s", err)
            upstream = {}
        for model in upstream.get("data", []) if isinstance(upstream, dict) else []:
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
                    }
                )
        await self.respond(send, 200, orjson.dumps(listing))

    async def model_request(self, scope: Scope, receive: Receive, send: Send, key: str, master: bool) -> None:
        chunks = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > MAX_BODY_BYTES:
                await self.respond(
                    send,
                    413,
                    openai_error(
                        413, f"request body larger than {MAX_BODY_BYTES} bytes", "invalid_request_error"
                    ),
                )
                return
            chunks.append(chunk)
            if not message.get("more_body"):
                break
        raw = b"".join(chunks)
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError as err:
            await self.respond(
                send,
                400,
                openai_error(400, f"request body is not valid JSON: {err}", "invalid_request_error"),
            )
            return
        model = body.get("model") if isinstance(body, dict) else None
        if not isinstance(model, str) or not model:
            await self.respond(
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
        if route is None and not self.has_db:  # with a database, LiteLLM may know models added at run time
            await self.respond(
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
        if route == "fast" and master and self.settings.fast_path and model not in self.hosted_fallbacks:
            await self.fast_path(scope, send, body, model, MODEL_PATHS[scope["path"]])
            return
        sent = False

        async def replay() -> Message:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": raw, "more_body": False}
            return await receive()

        await self.inner(scope, replay, _ErrorRewriter(send))

    # ------------------------------------------------------------------ fast path

    async def fast_path(
        self, scope: Scope, send: Send, body: dict[str, Any], model: str, upstream_path: str
    ) -> None:
        start = datetime.datetime.now()
        t0 = time.perf_counter()
        call_id = str(uuid.uuid4())
        stream = bool(body.get("stream"))
        candidates = [model, *self.settings.fallbacks.get(model, [])]
        last_error: UpstreamError | None = None
        for candidate in candidates:
            if self.route_of(candidate) != "fast":
                continue  # not reached: chains with hosted models go to LiteLLM (hosted_fallbacks)
            body["model"] = self.upstream_model(candidate)
            payload = orjson.dumps(body)
            for attempt in range(self.settings.num_retries + 1):
                if attempt:
                    await asyncio.sleep(min(0.05 * 2**attempt, 1.0))
                try:
                    response = await self._post(upstream_path, payload)
                except UpstreamError as err:
                    last_error = err
                    continue
                try:
                    final = attempt == self.settings.num_retries and candidate == candidates[-1]
                    if response.status in RETRY_STATUSES and not final:
                        last_error = UpstreamError(
                            f"model server answered {response.status}", response.status
                        )
                        continue
                    if response.status >= 400:
                        await self._relay_error(send, response, candidate)
                        self._log_failure(body, model, call_id, start, f"HTTP {response.status}")
                        return
                    if stream:
                        result = await self._relay_stream(send, response, model)
                    else:
                        result = await self._relay_json(send, response, model)
                finally:
                    response.release()
                body["model"] = model
                self._log_success(body, result, model, candidate, call_id, start, time.perf_counter() - t0)
                return
        body["model"] = model
        status = last_error.status if last_error else 502
        message = f"model server at {self.upstream} failed for `{model}`: {last_error}"
        self._log_failure(body, model, call_id, start, message)
        await self.respond(
            send,
            status if status >= 500 else 502,
            openai_error(status, message, "api_error", "upstream_unavailable"),
        )

    async def _post(self, path: str, payload: bytes) -> aiohttp.ClientResponse:
        session = await self.session()
        try:
            return await session.post(
                self.upstream + path, data=payload, headers={"Content-Type": "application/json"}
            )
        except (aiohttp.ClientError, TimeoutError, OSError) as err:
            raise UpstreamError(f"{type(err).__name__}: {err}") from err

    async def _relay_error(self, send: Send, response: aiohttp.ClientResponse, model: str) -> None:
        """The model server's error in OpenAI's shape (vLLM answers flat or nested, with an int code)."""
        raw = await response.read()
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError:
            data = {"message": raw.decode(errors="replace")}
        if not isinstance(data, dict):
            data = {"message": str(data)}
        error = data["error"] if isinstance(data.get("error"), dict) else data
        message = str(error.get("message") or f"HTTP {response.status}")
        if response.status == 404:
            body = openai_error(
                404,
                f"The model `{model}` does not exist: {message}",
                "invalid_request_error",
                "model_not_found",
                "model",
            )
        else:
            default = "invalid_request_error" if response.status < 500 else "api_error"
            kind = error.get("type") if isinstance(error.get("type"), str) else default
            code = error.get("code") if isinstance(error.get("code"), str) else None
            param = error.get("param") if isinstance(error.get("param"), str) else None
            body = openai_error(response.status, message, kind, code, param)
        await self.respond(send, response.status, body)

    async def _relay_json(self, send: Send, response: aiohttp.ClientResponse, model: str) -> dict[str, Any]:
        data = orjson.loads(await response.read())
        data["model"] = model  # the name the caller used, e.g. ft/coder-v3
        await self.respond(send, 200, orjson.dumps(data))
        return data

    async def _relay_stream(self, send: Send, response: aiohttp.ClientResponse, model: str) -> dict[str, Any]:
        """Pass server-sent events through (``model`` rewritten) and assemble the answer for callbacks."""
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")],
            }
        )
        text: list[str] = []
        tool_calls: dict[int, dict[str, Any]] = {}
        finish = None
        usage = None
        pending = b""
        async for piece in response.content.iter_any():
            pending += piece
            *lines, pending = pending.split(b"\n")
            out = []
            for line in lines:
                if line.startswith(b"data:") and line[5:].strip() not in (b"[DONE]", b""):
                    try:
                        chunk = orjson.loads(line[5:])
                    except orjson.JSONDecodeError:
                        out.append(line)
                        continue
                    chunk["model"] = model
                    usage = chunk.get("usage") or usage
                    for choice in chunk.get("choices") or ():
                        delta = choice.get("delta") or {}
                        if delta.get("content"):
                            text.append(delta["content"])
                        for call in delta.get("tool_calls") or ():
                            slot = tool_calls.setdefault(
                                call.get("index", 0),
                                {"id": "", "type": "function", "function": {"name": "", "arguments": ""}},
                            )
                            slot["id"] = call.get("id") or slot["id"]
                            fn = call.get("function") or {}
                            slot["function"]["name"] += fn.get("name") or ""
                            slot["function"]["arguments"] += fn.get("arguments") or ""
                        finish = choice.get("finish_reason") or finish
                    out.append(b"data: " + orjson.dumps(chunk))
                else:
                    out.append(line)
            if out:
                await send({"type": "http.response.body", "body": b"\n".join(out) + b"\n", "more_body": True})
        await send({"type": "http.response.body", "body": pending, "more_body": False})
        message: dict[str, Any] = {"role": "assistant", "content": "".join(text)}
        if tool_calls:
            message["tool_calls"] = [tool_calls[i] for i in sorted(tool_calls)]
        return {
            "model": model,
            "choices": [{"index": 0, "message": message, "finish_reason": finish}],
            "usage": usage or {},
        }

    # ------------------------------------------------------------------ callbacks

    def _kwargs(self, body: dict[str, Any], model: str, call_id: str) -> dict[str, Any]:
        # The subset of LiteLLM's callback kwargs our callbacks (and most CustomLoggers) read.
        metadata = {
            "user_api_key_alias": MASTER_KEY_ALIAS,
            "user_api_key_hash": self.master_hash,
            "model_group": model,
            "flywheel_fast_path": True,
        }
        params = {k: v for k, v in body.items() if k not in ("model", "messages", "prompt")}
        return {
            "model": model,
            "messages": body.get("messages") or [{"role": "user", "content": str(body.get("prompt", ""))}],
            "optional_params": params,
            "stream": bool(body.get("stream")),
            "litellm_call_id": call_id,
            "litellm_params": {"metadata": metadata, "proxy_server_request": {"body": body}},
            "standard_logging_object": {"model_group": model, "metadata": metadata, "id": call_id},
        }

    def _spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _log_success(
        self,
        body: dict[str, Any],
        result: dict[str, Any],
        model: str,
        served: str,
        call_id: str,
        start: datetime.datetime,
        elapsed_s: float,
    ) -> None:
        if not self.callbacks:
            return
        kwargs = self._kwargs(body, model, call_id)
        kwargs["litellm_params"]["metadata"]["served_model"] = served
        end = start + datetime.timedelta(seconds=elapsed_s)
        for callback in self.callbacks:
            self._spawn(_guarded(callback.async_log_success_event(kwargs, result, start, end), callback))

    def _log_failure(
        self, body: dict[str, Any], model: str, call_id: str, start: datetime.datetime, reason: str
    ) -> None:
        if not self.callbacks:
            return
        kwargs = self._kwargs(body, model, call_id)
        kwargs["exception"] = reason
        for callback in self.callbacks:
            self._spawn(
                _guarded(
                    callback.async_log_failure_event(kwargs, None, start, datetime.datetime.now()), callback
                )
            )


async def _guarded(coro: Awaitable[None], callback: object) -> None:
    try:
        await coro
    except Exception:  # a logging hook must never break serving
        log.exception("callback %s failed", type(callback).__name__)


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
        await self.send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await self.send({"type": "http.response.body", "body": body})
