"""A tiny OpenAI-compatible upstream that answers at once, speaking vLLM's HTTP dialect.

A model named ``fail-…`` always answers 503 (to test retries and fallbacks).

Used by the gateway tests (until/besides the embedded model server) and by the benchmark, where
it is the "upstream that answers at once". It is deliberately small, but its status codes and
bodies follow vLLM's: an unknown model is 404, loading a LoRA name twice is 400 (unless
``load_inplace``), unloading an unknown one is 404, and ``/v1/models`` lists adapters with ``root``
(their path) and ``parent`` — and, like vLLM, no digest. ``/v1/completions`` answers greedy text
with ``logprobs`` that depend on the bytes of the adapter's weights as they were when it was loaded
(a seeded random walk), so adapter sync's log-prob fingerprint tells weights apart here as on vLLM.

Run alone: ``python -m flywheel_testing.gateway_upstream --port 8000 --base-model gemma-3-270m``.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import random
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web


@dataclass
class UpstreamState:
    """What the upstream serves and what it has been asked (tests read ``calls``)."""

    base_model: str = "gemma-3-270m"
    adapters: dict[str, str] = field(default_factory=dict)  #: lora_name -> lora_path
    weights: dict[str, str] = field(default_factory=dict)  #: lora_name -> sha256 of its weights at load
    calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)  #: (path, body), bounded
    record: bool = True
    failures: int = 0  #: answers to `fail-*` models, which always fail with 503

    def note(self, path: str, body: dict[str, Any]) -> None:
        if self.record:
            self.calls.append((path, body))
            del self.calls[:-1000]


def _error(status: int, message: str, kind: str) -> web.Response:
    # vLLM's error body (flat, with "object": "error"), not OpenAI's nested one.
    body = {"object": "error", "message": message, "type": kind, "param": None, "code": status}
    return web.json_response(body, status=status)


def build_upstream(state: UpstreamState) -> web.Application:
    async def models(request: web.Request) -> web.Response:
        created = int(time.time())
        data = [
            {
                "id": state.base_model,
                "object": "model",
                "created": created,
                "owned_by": "vllm",
                "root": state.base_model,
                "parent": None,
            }
        ]
        data += [
            {
                "id": name,
                "object": "model",
                "created": created,
                "owned_by": "vllm",
                "root": path,
                "parent": state.base_model,
            }
            for name, path in state.adapters.items()
        ]
        return web.json_response({"object": "list", "data": data})

    async def chat(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        state.note(request.path, body)
        model = body.get("model")
        if isinstance(model, str) and model.startswith("fail-"):  # for retry / fallback tests
            state.failures += 1
            return _error(503, f"model `{model}` is failing on purpose", "ServiceUnavailableError")
        if model != state.base_model and model not in state.adapters:
            return _error(404, f"The model `{model}` does not exist.", "NotFoundError")
        text = f"hello from {model}"
        rid = f"chatcmpl-{uuid.uuid4().hex}"
        created = int(time.time())
        usage = {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}
        if not body.get("stream"):
            return web.json_response(
                {
                    "id": rid,
                    "object": "chat.completion",
                    "created": created,
                    "model": model,
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": text},
                            "finish_reason": "stop",
                        }
                    ],
                    "usage": usage,
                }
            )
        reply = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await reply.prepare(request)
        pieces = [{"role": "assistant", "content": ""}] + [{"content": w} for w in text.split(" ") if w]
        for i, delta in enumerate(pieces):
            chunk = {
                "id": rid,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": None}],
            }
            if i > 1:
                delta["content"] = " " + delta["content"]
            await reply.write(f"data: {json.dumps(chunk)}\n\n".encode())
        last = {
            "id": rid,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
        }
        if (body.get("stream_options") or {}).get("include_usage"):
            last["usage"] = usage
        await reply.write(f"data: {json.dumps(last)}\n\ndata: [DONE]\n\n".encode())
        await reply.write_eof()
        return reply

    async def completions(request: web.Request) -> web.Response:
        body = await request.json()
        state.note(request.path, body)
        model = body.get("model")
        if model != state.base_model and model not in state.adapters:
            return _error(404, f"The model `{model}` does not exist.", "NotFoundError")
        seed = f"{state.weights.get(model, state.base_model)}|{body.get('prompt')}"
        rng = random.Random(hashlib.sha256(seed.encode()).digest())
        words = "alpha beta gamma delta epsilon zeta eta theta".split()
        tokens, values, tops = [], [], []
        for _ in range(int(body.get("max_tokens") or 16)):
            scores = {w: -rng.uniform(0.05, 6.0) for w in words}
            best = max(scores, key=lambda w: scores[w])
            tokens.append(" " + best)
            values.append(scores[best])
            top = sorted(scores, key=lambda w: -scores[w])[: int(body.get("logprobs") or 0)]
            tops.append({" " + w: scores[w] for w in top})
        logprobs = None
        if body.get("logprobs") is not None:
            offsets = [sum(len(t) for t in tokens[:i]) for i in range(len(tokens))]
            logprobs = {
                "tokens": tokens,
                "token_logprobs": values,
                "top_logprobs": tops,
                "text_offset": offsets,
            }
        choice = {"index": 0, "text": "".join(tokens), "logprobs": logprobs, "finish_reason": "length"}
        usage = {"prompt_tokens": 5, "completion_tokens": len(tokens), "total_tokens": 5 + len(tokens)}
        answer = {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time())}
        return web.json_response({**answer, "model": model, "choices": [choice], "usage": usage})

    async def load(request: web.Request) -> web.Response:
        body = await request.json()
        state.note(request.path, body)
        name, path = body.get("lora_name"), body.get("lora_path")
        if not name or not path:
            return _error(400, "Both 'lora_name' and 'lora_path' must be provided.", "BadRequestError")
        if name in state.adapters and not body.get("load_inplace"):
            return _error(400, f"The lora adapter '{name}' has already been loaded.", "InvalidUserInput")
        if not (Path(path) / "adapter_config.json").is_file():
            return _error(404, f"No adapter found for {path}", "NotFoundError")
        weights = Path(path) / "adapter_model.safetensors"
        state.adapters[name] = path
        state.weights[name] = hashlib.sha256(weights.read_bytes() if weights.is_file() else b"").hexdigest()
        return web.Response(text=f"Success: LoRA adapter '{name}' added successfully.")

    async def unload(request: web.Request) -> web.Response:
        body = await request.json()
        state.note(request.path, body)
        name = body.get("lora_name")
        if name not in state.adapters:
            return _error(404, f"The lora adapter '{name}' cannot be found.", "NotFoundError")
        del state.adapters[name]
        state.weights.pop(name, None)
        return web.Response(text=f"Success: LoRA adapter '{name}' removed successfully.")

    async def health(request: web.Request) -> web.Response:
        return web.Response(text="")

    app = web.Application()
    app.router.add_get("/v1/models", models)
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_post("/v1/completions", completions)
    app.router.add_post("/v1/load_lora_adapter", load)
    app.router.add_post("/v1/unload_lora_adapter", unload)
    app.router.add_get("/health", health)
    return app


async def start_upstream(
    state: UpstreamState, host: str = "127.0.0.1", port: int = 0
) -> tuple[web.AppRunner, int]:
    """Start it on the running loop; returns the runner (``await runner.cleanup()``) and the port."""
    runner = web.AppRunner(build_upstream(state), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=1024)
    await site.start()
    port = runner.addresses[0][1]  # (host, port, …) of the socket it listens on
    return runner, port


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--base-model", default="gemma-3-270m")
    parser.add_argument("--port-file", type=Path, help="write the bound port here once listening")
    args = parser.parse_args()

    async def run() -> None:
        runner, port = await start_upstream(
            UpstreamState(args.base_model, record=False), args.host, args.port
        )
        if args.port_file:
            args.port_file.write_text(str(port))
        try:
            await asyncio.Event().wait()
        finally:
            await runner.cleanup()

    try:
        import uvloop

        uvloop.run(run())
    except ImportError:
        asyncio.run(run())


if __name__ == "__main__":
    main()
