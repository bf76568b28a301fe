"""A scripted OpenAI-compatible chat server, for tests, benchmarks and dry runs.

Hosted models cannot run in CI, and a real small model is too slow and too random to test the
driver's edge cases; this server answers ``/v1/chat/completions`` from a Python function of the
request, instantly, with OpenAI's response shape (usage included). It can also fail on purpose
(HTTP errors, delays) to exercise retries, timeouts and cancellation.

Token records: a request with ``return_token_ids`` gets vLLM's fields (``prompt_token_ids`` on
the response, ``token_ids`` on the choice) and one with ``logprobs`` gets OpenAI's
``logprobs.content``. The scripted "tokeniser" is the UTF-8 bytes of the text (ids 0 to 255), and
each token's log-prob is ``-(id % 7 + 1) / 10``, so a test can check a record exactly. A reply
may carry its own ``token_ids``/``logprobs`` (e.g. mismatched, to test the orchestrator's check).

Adapter identity: a reply may carry ``system_fingerprint``, which the response then has, as our
model server sets it to the digest of the adapter that answered (absent: the field is null, as
vLLM's). With ``listing`` (below) a test can make the listing and the answers disagree.

Run alone (the benchmark does): ``flywheel-scripted-model --port 0 --ready-file F`` serves the
``explore`` script: list the files, read the first source file, then give a final answer (or,
for I/O problems, run a trivial program and submit it).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

Reply = dict[str, Any]


@dataclass
class Fail:
    """Answer with an HTTP error instead of a completion."""

    status: int
    message: str = "scripted failure"


@dataclass
class Delay:
    """Wait before answering (to trigger timeouts or to cancel mid-call)."""

    seconds: float
    then: Reply | Fail | None = None


#: What a responder answers: a completion, an HTTP error, or a delay before one of those.
Answer = Reply | Fail | Delay
Responder = Callable[[str, list[dict[str, Any]], list[dict[str, Any]] | None], Answer | Awaitable[Answer]]


def text(content: str) -> Reply:
    return {"content": content}


def tool_call(name: str, args: dict[str, Any], call_id: str = "call-1") -> Reply:
    """A native tool-calling answer."""
    return {
        "content": "",
        "tool_calls": [
            {"id": call_id, "type": "function", "function": {"name": name, "arguments": json.dumps(args)}}
        ],
    }


def json_call(name: str, args: dict[str, Any]) -> Reply:
    """A JSON-protocol tool call as the assistant's text."""
    return text(json.dumps({"type": "tool_call", "name": name, "args": args}))


def token_ids(s: str) -> list[int]:
    """The scripted server's tokenisation: one id per UTF-8 byte."""
    return list(s.encode())


def token_logprob(token_id: int) -> float:
    """The scripted server's log-prob of sampling ``token_id``."""
    return -((token_id % 7) + 1) / 10


def _tokens(s: str) -> int:
    return max(1, len(s) // 4)


@dataclass
class ScriptedModelServer:
    """``responder(model, messages, tools)`` returns a reply dict (``content``, optional
    ``tool_calls``, ``finish_reason``, ``system_fingerprint``), a :class:`Fail` or a :class:`Delay`.

    ``listing`` adds fields to a model's ``/v1/models`` entry, e.g. ``{"ft/coder-v1": {"parent":
    "base", "digest": "sha256:…"}}`` to list it as an adapter the way our gateway does; it is read
    at every request, so a test can change a digest mid-run (a forced reload)."""

    responder: Responder
    models: tuple[str, ...] = ("scripted",)
    host: str = "127.0.0.1"
    port: int = 0
    requests: list[dict[str, Any]] = field(default_factory=list)
    record: bool = True
    listing: dict[str, dict[str, Any]] = field(default_factory=dict)

    async def start(self) -> str:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_get("/v1/models", self._models)
        app.router.add_post("/v1/chat/completions", self._chat)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        self.port = self._runner.addresses[0][1]  # (host, port, …) of the socket it listens on
        return self.base_url

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    async def stop(self) -> None:
        await self._runner.cleanup()

    async def __aenter__(self) -> ScriptedModelServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _models(self, request: web.Request) -> web.Response:
        data = [
            {
                "id": m,
                "object": "model",
                "created": 0,
                "owned_by": "scripted",
                "root": m,
                **self.listing.get(m, {}),
            }
            for m in self.models
        ]
        return web.json_response({"object": "list", "data": data})

    async def _chat(self, request: web.Request) -> web.Response:
        body = await request.json()
        if self.record:
            self.requests.append(body)
        model = body.get("model", "")
        if model not in self.models:
            return _error(404, f"The model `{model}` does not exist.", "model_not_found")
        reply = self.responder(model, body.get("messages", []), body.get("tools"))
        if asyncio.iscoroutine(reply) or isinstance(reply, Awaitable):
            reply = await reply
        while isinstance(reply, Delay):
            await asyncio.sleep(reply.seconds)
            reply = reply.then if reply.then is not None else text("")
        if isinstance(reply, Fail):
            return _error(reply.status, reply.message, "scripted")
        content = reply.get("content", "")
        calls = reply.get("tool_calls") or None
        prompt = sum(_tokens(str(m.get("content") or "")) for m in body.get("messages", []))
        completion = _tokens(content + json.dumps(calls or ""))
        message: dict[str, Any] = {"role": "assistant", "content": content}
        if calls:
            message["tool_calls"] = calls
        choice: dict[str, Any] = {
            "index": 0,
            "message": message,
            "finish_reason": reply.get("finish_reason") or ("tool_calls" if calls else "stop"),
        }
        out: dict[str, Any] = {
            "id": f"chatcmpl-{time.monotonic_ns()}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "system_fingerprint": reply.get("system_fingerprint"),
            "choices": [choice],
            "usage": {
                "prompt_tokens": prompt,
                "completion_tokens": completion,
                "total_tokens": prompt + completion,
            },
        }
        sampled = reply.get("token_ids", token_ids(content + json.dumps(calls) if calls else content))
        if body.get("return_token_ids"):
            out["prompt_token_ids"] = token_ids(
                "".join(str(m.get("content") or "") for m in body.get("messages", []))
            )
            choice["token_ids"] = sampled
        if body.get("logprobs"):
            lps = reply.get("logprobs", [token_logprob(i) for i in sampled])
            names = [f"<{i}>" for i in sampled] + ["<?>"] * max(0, len(lps) - len(sampled))
            choice["logprobs"] = {
                "content": [
                    {"token": name, "logprob": lp, "bytes": None, "top_logprobs": []}
                    for name, lp in zip(names, lps, strict=False)
                ]
            }
        return web.json_response(out)


def _error(status: int, message: str, code: str) -> web.Response:
    return web.json_response(
        {"error": {"message": message, "type": "invalid_request_error", "code": code}}, status=status
    )


# ---------------------------------------------------------------------------------- scripts

_SOURCE = re.compile(r"^(?!tests/)(?!.*test_)[\w./-]+\.py$", re.M)


def explore(model: str, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None) -> Reply:
    """A cheap, valid agent: list files, read the first source file, stop (JSON protocol)."""
    del model, tools
    turns = sum(m["role"] == "assistant" for m in messages)
    system = str(messages[0].get("content", "")) if messages else ""
    if "run_code" in system:
        if turns == 0:
            return json_call("run_code", {"code": "print(input())", "test_case_index": 0})
        return text(json.dumps({"type": "final", "code": "print(input())"}))
    if turns == 0:
        return json_call("list_files", {"rel_dir": "."})
    if turns == 1:
        listing = str(messages[-1].get("content", ""))
        found = _SOURCE.findall(listing)
        return json_call("read_file", {"rel_path": found[0] if found else "README.md"})
    return text(json.dumps({"type": "final", "answer": "done"}))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--model", action="append", default=None, help="model name to serve (repeatable)")
    parser.add_argument("--ready-file", default="", help="write the port here once listening")
    args = parser.parse_args(argv)

    async def serve() -> None:
        server = ScriptedModelServer(
            explore, models=tuple(args.model or ["scripted"]), host=args.host, port=args.port, record=False
        )
        await server.start()
        if args.ready_file:
            Path(args.ready_file).write_text(str(server.port))  # noqa: ASYNC240 - once, at start
        print(f"scripted model server on {server.base_url}", flush=True)
        await asyncio.Event().wait()

    try:
        asyncio.run(serve())
    except KeyboardInterrupt:
        pass
    return 0
