"""The HTTP surface of the model server: the subset of vLLM's OpenAI server that Flywheel uses.

Errors use the OpenAI error body (``{"error": {"message", "type", "param", "code"}}``) with
the status code as ``code``, as vLLM does. Endpoints that the model work (issue #8) has not
filled in yet answer 501 with that body and say so; nothing here pretends to serve a model.
"""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

PLANNED_IN = "issue #8"

#: vLLM's OpenAI-compatible endpoints that Flywheel relies on, and their methods.
OPENAI_ROUTES = (
    ("/v1/models", "GET"),
    ("/v1/chat/completions", "POST"),
    ("/v1/completions", "POST"),
    ("/v1/load_lora_adapter", "POST"),
    ("/v1/unload_lora_adapter", "POST"),
)


def error_response(status: int, message: str, kind: str) -> JSONResponse:
    """An OpenAI-style error body with ``status`` as the HTTP status and as ``code``."""
    return JSONResponse({"error": {"message": message, "type": kind, "param": None, "code": status}}, status)


async def health(request: Request) -> JSONResponse:
    """Liveness and readiness probe, like vLLM's ``/health``."""
    return JSONResponse({"status": "ok"})


async def not_implemented(request: Request) -> JSONResponse:
    return error_response(
        501,
        f"{request.method} {request.url.path} is not implemented yet (planned in {PLANNED_IN})",
        "NotImplemented",
    )


async def http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        return error_response(404, f"no such endpoint: {request.method} {request.url.path}", "NotFoundError")
    if exc.status_code == 405:
        return error_response(
            405, f"{request.method} is not allowed on {request.url.path}", "MethodNotAllowed"
        )
    return error_response(exc.status_code, str(exc.detail), "HTTPError")


def build_app() -> Starlette:
    routes = [Route("/health", health, methods=["GET"])]
    routes += [Route(path, not_implemented, methods=[method]) for path, method in OPENAI_ROUTES]
    return Starlette(routes=routes, exception_handlers={HTTPException: http_error})
