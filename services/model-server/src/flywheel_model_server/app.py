"""The HTTP surface of the model server: the subset of vLLM's OpenAI server that Flywheel uses.

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
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from flywheel_model_server.engine import (
    Delta,
    Done,
    Engine,
    Failed,
    GenerationJob,
    Prompt,
    SamplingParams,
    Started,
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
        """Liveness: 200 while the process serves HTTP, whether or not the model is loaded."""
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
        await self.engine.load_adapter(req.lora_name, req.lora_path)
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
        prompt = Prompt(
            messages=req.template_messages(),
            tools=req.tools,
            add_generation_prompt=req.add_generation_prompt,
            template_kwargs=req.chat_template_kwargs or {},
        )
        job = GenerationJob(
            self.engine.check_model(req.model), [prompt], params, self.engine.settings.default_max_tokens
        )
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        return await self._respond(job, req.stream, include_usage, chat=True, echo=False)

    async def completions(self, request: Request) -> Response:
        req = parse(CompletionRequest, await read_json(request))
        params = sampling(req)
        prompts = [Prompt(text=p) if isinstance(p, str) else Prompt(token_ids=p) for p in req.prompts()]
        job = GenerationJob(
            self.engine.check_model(req.model), prompts, params, COMPLETIONS_DEFAULT_MAX_TOKENS
        )
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        return await self._respond(job, req.stream, include_usage, chat=False, echo=req.echo)

    async def _respond(
        self, job: GenerationJob, stream: bool, include_usage: bool, *, chat: bool, echo: bool
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
        ident = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"
        shape = _Shape(ident, job.model, chat, job.params.n * len(job.prompts))
        prefixes = [text if echo else "" for text in first.prompt_texts for _ in range(job.params.n)]
        if stream:
            return StreamingResponse(
                self._stream(job, events, shape, prefixes, include_usage),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            )
        texts = list(prefixes)
        finish: list[str | None] = [None] * shape.choices
        stop_reasons: list[str | None] = [None] * shape.choices
        try:
            while True:
                event = await events.get()
                if isinstance(event, Delta):
                    texts[event.index] += event.text
                    if event.finish_reason:
                        finish[event.index], stop_reasons[event.index] = (
                            event.finish_reason,
                            event.stop_reason,
                        )
                elif isinstance(event, Failed):
                    raise event.error
                elif isinstance(event, Done):
                    return JSONResponse(
                        shape.whole(
                            texts, finish, stop_reasons, usage(event.prompt_tokens, event.completion_tokens)
                        )
                    )
        finally:
            job.cancelled.set()  # a client that went away stops the generation

    async def _stream(
        self, job: GenerationJob, events: Any, shape: _Shape, prefixes: list[str], include_usage: bool
    ) -> AsyncIterator[str]:
        try:
            for index in range(shape.choices):
                yield sse(shape.chunk(index, prefixes[index], first=True))
            while True:
                event = await events.get()
                if isinstance(event, Delta):
                    yield sse(shape.chunk(event.index, event.text, event.finish_reason, event.stop_reason))
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


class _Shape:
    """OpenAI response and chunk bodies for chat (``chat.completion``) or text (``text_completion``)."""

    def __init__(self, ident: str, model: str, chat: bool, choices: int) -> None:
        self.ident, self.model, self.chat, self.choices = ident, model, chat, choices
        self.created = int(time.time())

    def _envelope(self, kind: str, choices: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "id": self.ident,
            "object": kind,
            "created": self.created,
            "model": self.model,
            "choices": choices,
        }

    def whole(
        self, texts: list[str], finish: list[str | None], stops: list[str | None], used: dict[str, int]
    ) -> dict[str, Any]:
        choices = []
        for i, text in enumerate(texts):
            choice: dict[str, Any] = {"index": i}
            if self.chat:
                choice["message"] = {"role": "assistant", "content": text, "tool_calls": []}
            else:
                choice["text"] = text
            choice.update(logprobs=None, finish_reason=finish[i] or "length", stop_reason=stops[i])
            choices.append(choice)
        body = self._envelope("chat.completion" if self.chat else "text_completion", choices)
        body["usage"] = used
        return body

    def chunk(
        self,
        index: int,
        text: str,
        finish: str | None = None,
        stop_reason: str | None = None,
        *,
        first: bool = False,
    ) -> dict[str, Any]:
        choice: dict[str, Any] = {"index": index}
        if self.chat:
            delta: dict[str, Any] = {"role": "assistant", "content": text} if first else {}
            if text and not first:
                delta["content"] = text
            choice["delta"] = delta
        else:
            choice["text"] = text
        choice.update(logprobs=None, finish_reason=finish)
        if finish:
            choice["stop_reason"] = stop_reason
        return self._envelope("chat.completion.chunk" if self.chat else "text_completion", [choice])

    def usage_chunk(self, used: dict[str, int]) -> dict[str, Any]:
        body = self._envelope("chat.completion.chunk" if self.chat else "text_completion", [])
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


def build_app(settings: ModelServerSettings | None = None, engine: Engine | None = None) -> Starlette:
    """The ASGI app; its lifespan starts loading the base model in the background."""
    settings = settings if settings is not None else ModelServerSettings()
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
        Route("/v1/load_lora_adapter", h.load_lora_adapter, methods=["POST"]),
        Route("/v1/unload_lora_adapter", h.unload_lora_adapter, methods=["POST"]),
    ]
    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={APIError: api_error, HTTPException: http_error, Exception: internal_error},
    )
    app.state.engine = engine
    return app
