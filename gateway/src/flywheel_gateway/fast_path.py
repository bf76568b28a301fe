"""The fast path: requests for our model server's routes forwarded by our layer, not by LiteLLM.

LiteLLM's own pipeline costs ~20 ms per request here (its SDK alone ~7.7 ms), far above the
issue's 8 ms budget. Requests that go to *our* model server (``ft/*`` adapters and the base
models) with the master key are therefore forwarded here: one pooled aiohttp connection to the
model server, the body passed through with only ``model`` rewritten exactly as LiteLLM's
``ft/*`` → ``hosted_vllm/*`` route does, the same retries and fallbacks as configured for
LiteLLM, the same OpenAI error shapes, and the same logging callbacks (the ``CustomLogger``
instances named in the config get ``async_log_success_event`` / ``async_log_failure_event`` after
the answer is sent). Which requests take this path is decided by the guard (``app.py``).
"""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import importlib
import logging
import time
import uuid
from collections.abc import Awaitable
from typing import Any, Protocol

import aiohttp
import orjson

from flywheel_gateway.asgi import Send, openai_error, respond
from flywheel_gateway.settings import GatewaySettings

log = logging.getLogger("flywheel.gateway")

MASTER_KEY_ALIAS = "master-key"
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})


class CallbackLogger(Protocol):
    """The two hooks of LiteLLM's ``CustomLogger`` that the fast path calls."""

    async def async_log_success_event(
        self,
        kwargs: dict[str, Any],
        response_obj: dict[str, Any],
        start_time: datetime.datetime,
        end_time: datetime.datetime,
    ) -> None: ...

    async def async_log_failure_event(
        self,
        kwargs: dict[str, Any],
        response_obj: None,
        start_time: datetime.datetime,
        end_time: datetime.datetime,
    ) -> None: ...


def resolve_callbacks(names: list[str]) -> list[CallbackLogger]:
    """The CustomLogger instances the config names (``module.instance``), the same objects LiteLLM uses."""
    found = []
    for name in names:
        module, _, attr = name.rpartition(".")
        found.append(getattr(importlib.import_module(module), attr))
    return found


def key_hash(key: str) -> str:
    """How a key is named in logs and callbacks: never the key itself."""
    return hashlib.sha256(key.encode()).hexdigest()


class UpstreamError(Exception):
    """The model server could not be reached or failed with a retryable status."""

    def __init__(self, message: str, status: int = 502) -> None:
        super().__init__(message)
        self.status = status


class FastPath:
    """Forwards a request to the model server: retries, fallbacks, the answer relayed, callbacks."""

    def __init__(self, settings: GatewaySettings, callbacks: list[CallbackLogger]) -> None:
        self.settings = settings
        self.upstream = settings.model_server_url.rstrip("/")
        self.prefix = settings.adapter_prefix
        self.base_models = frozenset(settings.base_models)
        self.master_hash = key_hash(settings.master_key.get_secret_value())
        self.callbacks = callbacks
        self._session: aiohttp.ClientSession | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def serves(self, model: str) -> bool:
        """Whether the model server answers ``model``: an adapter under the prefix, or a base model."""
        return (model.startswith(self.prefix) and len(model) > len(self.prefix)) or model in self.base_models

    def upstream_model(self, model: str) -> str:
        # Same mapping as the LiteLLM route `ft/*` -> `hosted_vllm/*`: the part after the prefix.
        return model[len(self.prefix) :] if model.startswith(self.prefix) else model

    async def session(self) -> aiohttp.ClientSession:
        """The pooled connection to the model server (the guard's model listing uses it too)."""
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

    # ------------------------------------------------------------------ forwarding

    async def forward(
        self,
        send: Send,
        body: dict[str, Any],
        model: str,
        upstream_path: str,
        *,
        shown: str | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        """Answers the request ``body`` (naming ``model``) from the model server's ``upstream_path``.

        ``shown`` is the name the caller used when it differs from ``model`` (a served alias): the
        answer and the callbacks show it. ``metadata`` goes into the callbacks' metadata.
        """
        shown = shown or model
        start = datetime.datetime.now()
        t0 = time.perf_counter()
        call_id = str(uuid.uuid4())
        stream = bool(body.get("stream"))
        candidates = [model, *self.settings.fallbacks.get(model, [])]
        last_error: UpstreamError | None = None
        for candidate in candidates:
            if not self.serves(candidate):
                continue  # not reached: chains with hosted models go to LiteLLM (the guard's hosted_fallbacks)
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
                        body["model"] = shown
                        self._log_failure(body, shown, call_id, start, f"HTTP {response.status}", metadata)
                        return
                    if stream:
                        result = await self._relay_stream(send, response, shown, candidate)
                    else:
                        result = await self._relay_json(send, response, shown, candidate)
                finally:
                    response.release()
                body["model"] = shown
                self._log_success(
                    body, result, shown, candidate, call_id, start, time.perf_counter() - t0, metadata
                )
                return
        body["model"] = shown
        status = last_error.status if last_error else 502
        message = f"model server at {self.upstream} failed for `{model}`: {last_error}"
        self._log_failure(body, shown, call_id, start, message, metadata)
        await respond(
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

    # ------------------------------------------------------------------ relaying the answer

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
            kind, code, param = (error.get(name) for name in ("type", "code", "param"))
            body = openai_error(
                response.status,
                message,
                kind if isinstance(kind, str) else default,
                code if isinstance(code, str) else None,
                param if isinstance(param, str) else None,
            )
        await respond(send, response.status, body)

    async def _relay_json(
        self, send: Send, response: aiohttp.ClientResponse, model: str, served: str
    ) -> dict[str, Any]:
        data: dict[str, Any] = orjson.loads(await response.read())
        data["model"] = model  # the name the caller used, e.g. ft/coder-v3
        raw = orjson.dumps(data)
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(raw)).encode()),
            (b"x-flywheel-served-model", served.encode()),
        ]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": raw})
        return data

    async def _relay_stream(
        self, send: Send, response: aiohttp.ClientResponse, model: str, served: str
    ) -> dict[str, Any]:
        """Pass server-sent events through (``model`` rewritten) and assemble the answer for callbacks."""
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"text/event-stream"),
                    (b"cache-control", b"no-cache"),
                    (b"x-flywheel-served-model", served.encode()),
                ],
            }
        )
        answer_id = fingerprint = None
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
                    answer_id = answer_id or chunk.get("id")
                    fingerprint = fingerprint or chunk.get("system_fingerprint")
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
            "id": answer_id,
            "model": model,
            "system_fingerprint": fingerprint,
            "choices": [{"index": 0, "message": message, "finish_reason": finish}],
            "usage": usage or {},
        }

    # ------------------------------------------------------------------ callbacks

    def _kwargs(
        self, body: dict[str, Any], model: str, call_id: str, extra: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        # The subset of LiteLLM's callback kwargs our callbacks (and most CustomLoggers) read.
        metadata = {
            **(extra or {}),
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
        metadata: dict[str, Any] | None = None,
    ) -> None:
        if not self.callbacks:
            return
        kwargs = self._kwargs(body, model, call_id, metadata)
        kwargs["litellm_params"]["metadata"]["served_model"] = served
        end = start + datetime.timedelta(seconds=elapsed_s)
        for callback in self.callbacks:
            self._spawn(_guarded(callback.async_log_success_event(kwargs, result, start, end), callback))

    def _log_failure(
        self,
        body: dict[str, Any],
        model: str,
        call_id: str,
        start: datetime.datetime,
        reason: str,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        if not self.callbacks:
            return
        kwargs = self._kwargs(body, model, call_id, metadata)
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
