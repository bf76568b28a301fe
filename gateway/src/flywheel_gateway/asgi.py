"""The ASGI types of our layer and the two ways it answers: a whole body, and OpenAI's error body."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import orjson

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def openai_error(
    status: int, message: str, kind: str, code: str | None = None, param: str | None = None
) -> bytes:
    return orjson.dumps({"error": {"message": message, "type": kind, "param": param, "code": code}})


async def respond(send: Send, status: int, body: bytes, content_type: bytes = b"application/json") -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", content_type), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def read_body(receive: Receive, send: Send, limit: int, what: str) -> bytes | None:
    """The whole request body; None when the client left or the body passed ``limit`` bytes (then
    a 413 naming ``what`` has been sent)."""
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            await respond(
                send, 413, openai_error(413, f"{what} larger than {limit} bytes", "invalid_request_error")
            )
            return None
        chunks.append(chunk)
        if not message.get("more_body"):
            return b"".join(chunks)
