"""The HTTP surface of the model server: the subset of vLLM's OpenAI server that Flywheel uses.

Inference routes (``/v1/models``, completions, health) are open, as vLLM's are without
``--api-key``; the routes that change what is served (``/v1/load_lora_adapter``,
``/v1/unload_lora_adapter``) need ``Authorization: Bearer $FLYWHEEL_SERVICE_TOKEN``
(:mod:`flywheel_common.auth`) and answer 401 with an OpenAI error body otherwise.

Errors use the OpenAI error body (``{"error": {"message", "type", "param", "code"}}``) with
the status code as ``code``, as vLLM does. Routes are thin: they validate the body
(:mod:`protocol`), hand a job to the :class:`~flywheel_model_server.engine.Engine` and shape
its events into OpenAI responses or server-sent events.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from flywheel_common.auth import HTTP_HOW_TO, bearer_problem, server_tokens
from flywheel_model_server import toolcalls
from flywheel_model_server.engine import (
    Delta,
    Done,
    Engine,
    Failed,
    GenerationJob,
    Prompt,
    SamplingParams,
    Started,
    TokenLogprob,
)
from flywheel_model_server.protocol import (
    APIError,
    ChatCompletionRequest,
    CompletionRequest,
    LoadLoRAAdapterRequest,
    SamplingRequest,
    UnloadLoRAAdapterRequest,
    bad_request,
    parse,
)
from flywheel_model_server.settings import ModelServerSettings

log = logging.getLogger("flywheel.model_server")

#: vLLM's OpenAI-compatible endpoints that Flywheel relies on, and their methods.
OPENAI_ROUTES = (
    ("/v1/models", "GET"),
    ("/v1/chat/completions", "POST"),
    ("/v1/completions", "POST"),
    ("/v1/load_lora_adapter", "POST"),
    ("/v1/unload_lora_adapter", "POST"),
)

#: /v1/completions without max_tokens generates this many tokens, as OpenAI and vLLM do.
COMPLETIONS_DEFAULT_MAX_TOKENS = 16


def error_response(status: int, message: str, kind: str) -> JSONResponse:
    """An OpenAI-style error body with ``status`` as the HTTP status and as ``code``."""
    return JSONResponse({"error": {"message": message, "type": kind, "param": None, "code": status}}, status)


def api_error_response(err: APIError) -> JSONResponse:
    return JSONResponse(err.body(), err.status, headers=err.headers)


async def read_json(request: Request) -> Any:
    body = await request.body()
    if not body:
        raise bad_request("the request body is empty; send a JSON object")
    try:
        return json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise bad_request(f"the request body is not valid JSON: {err}") from None


def sampling(req: SamplingRequest) -> SamplingParams:
    req.check_supported()
    return SamplingParams(
        max_tokens=req.max_tokens,
        temperature=req.temperature,
        top_p=req.top_p,
        top_k=req.top_k,
        min_p=req.min_p,
        repetition_penalty=req.repetition_penalty,
        n=req.n,
        stop=req.stop_list(),
        seed=req.seed,
    )


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def sse(data: Any) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"


class Handlers:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    # ----------------------------------------------------------------------------------------- probes

    async def health(self, request: Request) -> JSONResponse:
        """Liveness: 200 while the process serves HTTP, whether or not the model is loaded; 503 once
        the accelerator failed (its context is lost for good: only a restart helps)."""
        if self.engine.device_failed:
            return JSONResponse({"status": "failed", "message": self.engine.state_message}, 503)
        return JSONResponse({"status": "ok"})

    async def ready(self, request: Request) -> JSONResponse:
        """Readiness: 200 once the base model answers, else 503 with the reason (loading, missing …)."""
        info = self.engine.readiness()
        return JSONResponse(info, 200 if info["status"] == "ready" else 503)

    # ----------------------------------------------------------------------------------------- models

    async def models(self, request: Request) -> JSONResponse:
        return JSONResponse({"object": "list", "data": self.engine.models()})

    async def load_lora_adapter(self, request: Request) -> Response:
        req = parse(LoadLoRAAdapterRequest, await read_json(request))
        if not req.lora_name or not req.lora_path:
            raise APIError(400, "Both 'lora_name' and 'lora_path' must be provided.", "InvalidUserInput")
        await self.engine.load_adapter(req.lora_name, req.lora_path, replace=req.load_inplace)
        return PlainTextResponse(f"Success: LoRA adapter '{req.lora_name}' added successfully.")

    async def unload_lora_adapter(self, request: Request) -> Response:
        req = parse(UnloadLoRAAdapterRequest, await read_json(request))
        if not req.lora_name:
            raise APIError(
                400,
                "either 'lora_name' or 'lora_int_id' needs to be provided (this server knows adapters by "
                "lora_name only).",
                "InvalidUserInput",
            )
        await self.engine.unload_adapter(req.lora_name)
        return PlainTextResponse(f"Success: LoRA adapter '{req.lora_name}' removed successfully.")

    # ------------------------------------------------------------------------------------ completions

    async def chat_completions(self, request: Request) -> Response:
        req = parse(ChatCompletionRequest, await read_json(request))
        params = sampling(req)
        choice = req.tool_choice_label()
        # tool_choice none: the tools are neither shown to the model nor parsed out of its answer.
        tools = req.tool_dicts() if req.tools and choice != "none" else None
        prompt = Prompt(
            messages=req.template_messages(),
            tools=tools,
            add_generation_prompt=req.add_generation_prompt,
            template_kwargs=req.chat_template_kwargs or {},
            forced=toolcalls.forced_start(choice) if tools else "",
        )
        job = GenerationJob(
            self.engine.check_model(req.model),
            [prompt],
            params,
            self.engine.settings.default_max_tokens,
            logprobs=(req.top_logprobs or 0) if req.logprobs else None,
            want_ids=bool(req.return_token_ids),
        )
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        shape = _Shape(
            job.model,
            chat=True,
            parse_tools=tools is not None,
            parallel_tool_calls=req.parallel_tool_calls is not False,
            want_ids=job.want_ids,
            logprobs=job.logprobs,
        )
        return await self._respond(job, req.stream, include_usage, shape, echo=False)

    async def completions(self, request: Request) -> Response:
        req = parse(CompletionRequest, await read_json(request))
        params = sampling(req)
        prompts = [Prompt(text=p) if isinstance(p, str) else Prompt(token_ids=p) for p in req.prompts()]
        job = GenerationJob(
            self.engine.check_model(req.model),
            prompts,
            params,
            COMPLETIONS_DEFAULT_MAX_TOKENS,
            logprobs=req.logprobs,
            want_ids=bool(req.return_token_ids),
        )
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        shape = _Shape(job.model, chat=False, want_ids=job.want_ids, logprobs=job.logprobs)
        return await self._respond(job, req.stream, include_usage, shape, echo=req.echo)

    async def _respond(
        self, job: GenerationJob, stream: bool, include_usage: bool, shape: _Shape, *, echo: bool
    ) -> Response:
        job.stream = stream
        events = self.engine.submit(job)
        try:
            first = await events.get()
        except BaseException:
            job.cancelled.set()
            raise
        if isinstance(first, Failed):
            raise first.error
        assert isinstance(first, Started)
        shape.start(first, job.params.n, echo)
        if stream:
            return StreamingResponse(
                self._stream(job, events, shape, include_usage),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            )
        try:
            while True:
                event = await events.get()
                if isinstance(event, Delta):
                    shape.add(event)
                elif isinstance(event, Failed):
                    raise event.error
                elif isinstance(event, Done):
                    return JSONResponse(shape.whole(usage(event.prompt_tokens, event.completion_tokens)))
        finally:
            job.cancelled.set()  # a client that went away stops the generation

    async def _stream(
        self, job: GenerationJob, events: Any, shape: _Shape, include_usage: bool
    ) -> AsyncIterator[str]:
        try:
            for index in range(shape.choices):
                yield sse(shape.first_chunk(index))
            while True:
                event = await events.get()
                if isinstance(event, Delta):
                    for chunk in shape.chunks(event):
                        yield sse(chunk)
                elif isinstance(event, Failed):
                    yield sse(event.error.body())
                    break
                elif isinstance(event, Done):
                    if include_usage:
                        yield sse(shape.usage_chunk(usage(event.prompt_tokens, event.completion_tokens)))
                    break
            yield "data: [DONE]\n\n"
        finally:
            job.cancelled.set()


def _logprob(value: float) -> float:
    # -inf is not JSON; vLLM reports the same floor.
    return max(value, -9999.0)


class _Shape:
    """OpenAI response and chunk bodies for chat (``chat.completion``) or text (``text_completion``),
    with vLLM's extensions: ``token_ids`` / ``prompt_token_ids`` (``return_token_ids``) and
    ``stop_reason``; tool calls parsed out of chat answers (toolcalls.py).

    ``system_fingerprint`` (OpenAI's field, on the response and on every chunk) is the content
    digest (``sha256:<hex>``) of the adapter whose weights generated the answer, as the engine
    reported it for this very generation (``Started.adapter_digest``) — never looked up again by
    name, which could race with a reload. It is null for the base model (and for an adapter loaded
    without a digest): clients read a null as "no adapter identity", as for vLLM or a hosted API."""

    def __init__(
        self,
        model: str,
        *,
        chat: bool,
        parse_tools: bool = False,
        parallel_tool_calls: bool = True,
        want_ids: bool = False,
        logprobs: int | None = None,
    ) -> None:
        self.ident = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"
        self.model, self.chat = model, chat
        self.parse_tools, self.parallel = parse_tools, parallel_tool_calls
        self.want_ids, self.logprobs = want_ids, logprobs
        self.created = int(time.time())
        self.choices = 0
        self.fingerprint: str | None = None

    def start(self, started: Started, n: int, echo: bool) -> None:
        """Per choice (prompt-major, n per prompt): echo prefix, prompt ids, forced start of the answer."""
        self.choices = n * len(started.prompt_texts)
        self.fingerprint = started.adapter_digest
        per_prompt = range(len(started.prompt_texts))
        self.prefixes = [started.prompt_texts[p] if echo else "" for p in per_prompt for _ in range(n)]
        self.prompt_ids = [started.prompt_token_ids[p] for p in per_prompt for _ in range(n)]
        forced = started.forced or [""] * len(started.prompt_texts)
        self.forced = [forced[p] for p in per_prompt for _ in range(n)]
        self.texts = list(self.prefixes)
        self.ids: list[list[int]] = [[] for _ in range(self.choices)]
        self.lps: list[list[TokenLogprob]] = [[] for _ in range(self.choices)]
        self.finish: list[str | None] = [None] * self.choices
        self.stop_reasons: list[str | None] = [None] * self.choices
        self.filters = [toolcalls.StreamFilter(f) for f in self.forced] if self.parse_tools else []
        self.offsets = [len(p) for p in self.prefixes]  # legacy logprobs' text_offset

    def _envelope(self, kind: str, choices: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "id": self.ident,
            "object": kind,
            "created": self.created,
            "model": self.model,
            "system_fingerprint": self.fingerprint,
            "choices": choices,
        }

    @property
    def _kind(self) -> str:
        return "chat.completion" if self.chat else "text_completion"

    # ------------------------------------------------------------------------------ log-probs

    def _chat_logprobs(self, lps: list[TokenLogprob]) -> dict[str, Any]:
        return {
            "content": [
                {
                    "token": lp.token,
                    "logprob": _logprob(lp.logprob),
                    "bytes": list(lp.token.encode("utf-8")),
                    "top_logprobs": [
                        {"token": t, "logprob": _logprob(v), "bytes": list(t.encode("utf-8"))}
                        for t, v in lp.top
                    ],
                }
                for lp in lps
            ]
        }

    def _text_logprobs(self, index: int, lps: list[TokenLogprob]) -> dict[str, Any]:
        """The legacy completions shape; text_offset counts characters from the start of the choice's text."""
        offsets = []
        for lp in lps:
            offsets.append(self.offsets[index])
            self.offsets[index] += len(lp.token)
        return {
            "text_offset": offsets,
            "token_logprobs": [_logprob(lp.logprob) for lp in lps],
            "tokens": [lp.token for lp in lps],
            "top_logprobs": [
                {**{t: _logprob(v) for t, v in lp.top}, lp.token: _logprob(lp.logprob)} for lp in lps
            ],
        }

    def _logprobs_field(self, index: int, lps: list[TokenLogprob] | None) -> dict[str, Any] | None:
        if self.logprobs is None or lps is None:
            return None
        return self._chat_logprobs(lps) if self.chat else self._text_logprobs(index, lps)

    # ------------------------------------------------------------------------------ whole answers

    def add(self, event: Delta) -> None:
        i = event.index
        self.texts[i] += event.text
        self.ids[i].extend(event.token_ids)
        if event.logprobs:
            self.lps[i].extend(event.logprobs)
        if event.finish_reason:
            self.finish[i], self.stop_reasons[i] = event.finish_reason, event.stop_reason

    def whole(self, used: dict[str, int]) -> dict[str, Any]:
        choices = []
        for i, text in enumerate(self.texts):
            choice: dict[str, Any] = {"index": i}
            finish = self.finish[i] or "length"
            if self.chat:
                message: dict[str, Any] = {"role": "assistant", "content": text, "tool_calls": []}
                if self.parse_tools:
                    parsed = toolcalls.parse(self.forced[i] + text)
                    message["content"] = parsed.content
                    if parsed.called:
                        message["tool_calls"] = parsed.calls if self.parallel else parsed.calls[:1]
                        finish = "tool_calls"
                choice["message"] = message
            else:
                choice["text"] = text
            choice.update(
                logprobs=self._logprobs_field(i, self.lps[i]),
                finish_reason=finish,
                stop_reason=self.stop_reasons[i],
            )
            if self.want_ids:
                choice["token_ids"] = self.ids[i]
                if not self.chat:
                    choice["prompt_token_ids"] = self.prompt_ids[i]
            choices.append(choice)
        body = self._envelope(self._kind, choices)
        if self.want_ids and self.chat:
            body["prompt_token_ids"] = self.prompt_ids[0] if self.prompt_ids else []
        body["usage"] = used
        return body

    # ------------------------------------------------------------------------------ streaming

    def first_chunk(self, index: int) -> dict[str, Any]:
        """The role (chat) or the echoed prompt (text); prompt token ids go here, as vLLM sends them."""
        choice: dict[str, Any] = {"index": index}
        if self.chat:
            choice["delta"] = {"role": "assistant", "content": ""}
        else:
            choice["text"] = self.prefixes[index]
            if self.want_ids:
                choice["prompt_token_ids"] = self.prompt_ids[index]
        choice.update(logprobs=None, finish_reason=None)
        body = self._envelope(self._kind + ".chunk" if self.chat else self._kind, [choice])
        if self.want_ids and self.chat and index == 0:
            body["prompt_token_ids"] = self.prompt_ids[0]
        return body

    def _chunk(
        self,
        index: int,
        delta: dict[str, Any] | None = None,
        text: str = "",
        finish: str | None = None,
        stop_reason: str | None = None,
        ids: list[int] | None = None,
        lps: list[TokenLogprob] | None = None,
    ) -> dict[str, Any]:
        choice: dict[str, Any] = {"index": index}
        if self.chat:
            choice["delta"] = delta or {}
        else:
            choice["text"] = text
        choice.update(logprobs=self._logprobs_field(index, lps), finish_reason=finish)
        if finish:
            choice["stop_reason"] = stop_reason
        if self.want_ids and ids is not None:
            choice["token_ids"] = ids
        return self._envelope(self._kind + ".chunk" if self.chat else self._kind, [choice])

    def chunks(self, event: Delta) -> list[dict[str, Any]]:
        """The chunks one engine delta becomes (several when tool calls are settled at the end)."""
        i = event.index
        lps = event.logprobs if self.logprobs is not None else None
        if not self.chat:
            return [self._chunk(i, text=event.text, finish=event.finish_reason, stop_reason=event.stop_reason,
                                ids=event.token_ids, lps=lps)]  # fmt: skip
        if not self.parse_tools:
            delta = {"content": event.text} if event.text else {}
            return [self._chunk(i, delta, finish=event.finish_reason, stop_reason=event.stop_reason,
                                ids=event.token_ids, lps=lps)]  # fmt: skip
        stream = self.filters[i]
        content = stream.feed(event.text)
        if not event.finish_reason:
            return [self._chunk(i, {"content": content} if content else {}, ids=event.token_ids, lps=lps)]
        rest, calls = stream.finish()
        content += rest
        out = [self._chunk(i, {"content": content} if content else {}, ids=event.token_ids, lps=lps)]
        calls = calls if self.parallel else calls[:1]
        for piece in toolcalls.call_deltas(calls):
            out.append(self._chunk(i, {"tool_calls": [piece]}))
        finish = "tool_calls" if calls else event.finish_reason
        out.append(self._chunk(i, {}, finish=finish, stop_reason=event.stop_reason))
        return out

    def usage_chunk(self, used: dict[str, int]) -> dict[str, Any]:
        body = self._envelope(self._kind + ".chunk" if self.chat else self._kind, [])
        body["usage"] = used
        return body


# --------------------------------------------------------------------------------------- error glue


async def api_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, APIError)
    if exc.status >= 500 and exc.status != 503:  # 503 = model not loaded yet: readiness says so
        log.warning("%s %s -> %d: %s", request.method, request.url.path, exc.status, exc.message)
    return api_error_response(exc)


async def http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        return error_response(404, f"no such endpoint: {request.method} {request.url.path}", "NotFoundError")
    if exc.status_code == 405:
        return error_response(
            405, f"{request.method} is not allowed on {request.url.path}", "MethodNotAllowed"
        )
    return error_response(exc.status_code, str(exc.detail), "HTTPError")


async def internal_error(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return error_response(500, f"internal error: {type(exc).__name__}: {exc}", "InternalServerError")


Endpoint = Callable[[Request], Awaitable[Response]]


def admin_only(endpoint: Endpoint, tokens: list[str] | None) -> Endpoint:
    """``endpoint`` behind the service token (None: checking disabled); 401 without it."""
    if tokens is None:
        return endpoint
    accepted = tokens

    async def checked(request: Request) -> Response:
        problem = bearer_problem(request.headers.get("authorization"), accepted, HTTP_HOW_TO)
        if problem is not None:
            response = error_response(401, problem, "AuthenticationError")
            response.headers["WWW-Authenticate"] = "Bearer"
            return response
        return await endpoint(request)

    return checked


def build_app(settings: ModelServerSettings | None = None, engine: Engine | None = None) -> Starlette:
    """The ASGI app; its lifespan starts loading the base model in the background.

    Raises ``MissingServiceToken`` when no service token is configured and auth is not disabled.
    """
    settings = settings if settings is not None else ModelServerSettings()
    tokens = server_tokens(settings.auth, "model-server")
    engine = engine if engine is not None else Engine(settings)
    h = Handlers(engine)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await engine.start()
        try:
            yield
        finally:
            await engine.close()

    routes = [
        Route("/health", h.health, methods=["GET"]),
        Route("/health/ready", h.ready, methods=["GET"]),
        Route("/v1/models", h.models, methods=["GET"]),
        Route("/v1/chat/completions", h.chat_completions, methods=["POST"]),
        Route("/v1/completions", h.completions, methods=["POST"]),
        Route("/v1/load_lora_adapter", admin_only(h.load_lora_adapter, tokens), methods=["POST"]),
        Route("/v1/unload_lora_adapter", admin_only(h.unload_lora_adapter, tokens), methods=["POST"]),
    ]
    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={APIError: api_error, HTTPException: http_error, Exception: internal_error},
    )
    app.state.engine = engine
    return app
