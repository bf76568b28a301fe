"""The web console: ``/console`` on the gateway, same keys, read-only for keys that are not the master.

Server-rendered pages (Starlette + Jinja2, both already in the gateway through LiteLLM's proxy),
one small script of ours for the live parts (server-sent events from the services' Watch RPCs)
and the charts (SVG drawn in the browser from the same figures the PNG reports are drawn from).
Nothing is fetched from the internet: the page's only assets are served from this package.

Authentication: the browser signs in once with a key (``/console/login``); the console answers
with a cookie holding a signed token (HMAC-SHA256 under the master key: stateless, so every
gateway replica accepts it) that says the role — ``admin`` for the master key, ``viewer`` for a
virtual key LiteLLM accepts — and when it expires. Scripts and tools may send the key as
``Authorization: Bearer`` instead. Changes (cancel) need ``admin`` and a same-origin request
(a custom header no cross-site form can send).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import difflib
import hashlib
import hmac
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import grpc
from jinja2 import ChainableUndefined, Environment, FileSystemLoader, UndefinedError, select_autoescape
from markupsafe import Markup
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from flywheel.orchestrator.v1 import orchestrator_pb2 as opb
from flywheel.trainer.v1 import trainer_pb2 as trpb
from flywheel_gateway.console.data import Backends, ServiceAddresses, Unreachable

log = logging.getLogger("flywheel.gateway.console")

HERE = Path(__file__).parent
COOKIE = "flywheel_console"
SESSION_S = 12 * 3600
#: Header every state-changing request from the console's own script carries (CSRF guard).
SAME_ORIGIN_HEADER = "x-flywheel-console"
#: Seconds between two keep-alive comments on an idle event stream.
KEEPALIVE_S = 15.0

KeyCheck = Callable[[str], Awaitable[str | None]]


class Sessions:
    """Signed, stateless console sessions: ``<payload b64>.<hmac b64>``."""

    def __init__(self, secret: bytes) -> None:
        self.secret = hashlib.sha256(b"flywheel-console|" + secret).digest()

    def issue(self, role: str, now: float | None = None) -> str:
        payload = json.dumps({"role": role, "exp": int((now or time.time()) + SESSION_S)}).encode()
        body = base64.urlsafe_b64encode(payload).decode().rstrip("=")
        return f"{body}.{self._sign(body)}"

    def role(self, token: str, now: float | None = None) -> str | None:
        body, _, sig = token.partition(".")
        if not body or not hmac.compare_digest(sig, self._sign(body)):
            return None
        try:
            data = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
        except ValueError:
            return None
        if not isinstance(data, dict) or data.get("exp", 0) < (now or time.time()):
            return None
        role = data.get("role")
        return role if role in ("admin", "viewer") else None

    def _sign(self, body: str) -> str:
        mac = hmac.new(self.secret, body.encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(mac).decode().rstrip("=")


# ---------------------------------------------------------------------- template helpers

STATE_CLASS = {
    "JOB_STATE_SUCCEEDED": "ok",
    "JOB_STATE_FAILED": "bad",
    "JOB_STATE_CANCELLED": "muted",
    "JOB_STATE_RUNNING": "live",
    "JOB_STATE_QUEUED": "muted",
}


def short_enum(value: Any) -> str:
    """``JOB_STATE_SUCCEEDED`` → ``succeeded``; ``LOOP_STAGE_FINE_TUNE`` → ``fine tune``."""
    text = str(value or "")
    if text.endswith("_UNSPECIFIED"):
        return ""
    for prefix in ("JOB_STATE_", "LOOP_STAGE_", "GATE_DECISION_", "GATE_METRIC_", "FINE_TUNE_METHOD_",
                   "DATASET_KIND_", "TEACHER_KIND_", "ROLE_", "FAILURE_CATEGORY_", "TOOL_RESULT_STATUS_",
                   "ALIAS_CHANGE_", "PROMOTION_OUTCOME_", "TASK_SPLIT_", "LOOP_KIND_", "RESOURCE_KIND_",
                   "TOOL_PROTOCOL_", "PARSE_ERROR_KIND_", "TEST_TRIGGER_", "SKILL_OPT_STAGE_",
                   "SKILL_GATE_DECISION_", "SKILL_EDIT_OP_"):  # fmt: skip
        if text.startswith(prefix):
            text = text[len(prefix) :]
            break
    return text.lower().replace("_", " ")


def when(stamp: Any) -> str:
    """An RFC 3339 timestamp as ``2026-12-05 14:03:09`` (UTC), or ``—``."""
    if not stamp:
        return "—"
    text = str(stamp).replace("T", " ")
    return text[:19]


def duration(start: Any, end: Any) -> str:
    from datetime import datetime

    if not start:
        return "—"
    try:
        t0 = datetime.fromisoformat(str(start).replace("Z", "+00:00"))
        t1 = datetime.fromisoformat(str(end).replace("Z", "+00:00")) if end else None
    except ValueError:
        return "—"
    if t1 is None:
        return "running"
    seconds = (t1 - t0).total_seconds()
    return f"{seconds:.1f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def pct(value: Any) -> str:
    try:
        return f"{100 * float(value):.1f}%"
    except (TypeError, ValueError, UndefinedError):
        return "—"


def num(value: Any, digits: int = 3) -> str:
    try:
        f = float(value)
    except (TypeError, ValueError, UndefinedError):
        return "—"
    return f"{f:.{digits}g}" if abs(f) < 1e4 else f"{f:,.0f}"


def to_json(value: Any) -> Markup:
    """Data for a page's script, safe inside ``<script type="application/json">``."""
    text = (
        json.dumps(value, default=str).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    )
    return Markup(text)


def pretty(value: Any) -> str:
    return json.dumps(value, indent=2, default=str, ensure_ascii=False)


def arguments(text: str) -> str:
    """A tool call's JSON arguments, indented when they parse."""
    try:
        return json.dumps(json.loads(text), indent=2, ensure_ascii=False)
    except (TypeError, ValueError):
        return text


def templates() -> Environment:
    env = Environment(
        loader=FileSystemLoader(HERE / "templates"),
        autoescape=select_autoescape(["html"]),
        undefined=ChainableUndefined,  # a field a message leaves out reads as empty, at any depth
        trim_blocks=True,
        lstrip_blocks=True,
        enable_async=True,
    )
    env.filters.update(
        short=short_enum, when=when, pct=pct, num=num, tojson_safe=to_json, pretty=pretty, args=arguments
    )
    env.globals.update(duration=duration, state_class=lambda s: STATE_CLASS.get(str(s), ""), quote=quote)
    return env


# ---------------------------------------------------------------------- the app


class ConsoleApp:
    """The ASGI app behind ``/console`` (mounted by the gateway's layer, before its key check)."""

    def __init__(
        self,
        master_key: str,
        key_check: KeyCheck,
        backends: Backends | None = None,
    ) -> None:
        self.master_key = master_key
        self.key_check = key_check
        self.backends = backends or Backends(ServiceAddresses())
        self.sessions = Sessions(master_key.encode())
        self.env = templates()
        self.app = Starlette(
            routes=[
                Route("/console", self.index),
                Route("/console/", self.index),
                Route("/console/login", self.login, methods=["GET", "POST"]),
                Route("/console/logout", self.logout, methods=["POST"]),
                Route("/console/runs", self.page("runs")),
                Route("/console/runs/{id}", self.page("run")),
                Route("/console/trajectories/{id}", self.page("trajectory")),
                Route("/console/evaluations", self.page("evaluations")),
                Route("/console/evaluations/{id}", self.page("evaluation")),
                Route("/console/loops", self.page("loops")),
                Route("/console/loops/{id}", self.page("loop")),
                Route("/console/datasets", self.page("datasets")),
                Route("/console/datasets/{id}", self.page("dataset")),
                Route("/console/jobs", self.page("jobs")),
                Route("/console/jobs/{id}", self.page("job")),
                Route("/console/adapters", self.page("adapters")),
                Route("/console/aliases", self.page("aliases")),
                Route("/console/skills", self.page("skillopts")),
                Route("/console/skills/{id}", self.page("skillopt")),
                Route("/console/aliases/{name:path}", self.page("alias")),
                Route("/console/api/stream/{kind}/{id}", self.stream),
                Route("/console/api/{kind}/{id}/cancel", self.cancel, methods=["POST"]),
                Mount("/console/static", StaticFiles(directory=HERE / "static"), name="static"),
            ]
        )

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await self.app(scope, receive, send)

    async def close(self) -> None:
        await self.backends.close()

    # ------------------------------------------------------------------ auth

    async def role_of(self, request: Request) -> str | None:
        """``admin``, ``viewer`` or None: from the Authorization header, else the session cookie."""
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return await self.key_role(token.strip())
        cookie = request.cookies.get(COOKIE)
        return self.sessions.role(cookie) if cookie else None

    async def key_role(self, key: str) -> str | None:
        if hmac.compare_digest(key.encode(), self.master_key.encode()):
            return "admin"
        return await self.key_check(key)

    def unauthorized(self, request: Request) -> Response:
        if request.url.path.startswith("/console/api/"):
            return JSONResponse(
                {"error": {"message": "Sign in to the console first, or send 'Authorization: Bearer <key>'.",
                           "type": "invalid_request_error", "param": None, "code": "missing_api_key"}},
                status_code=401,
            )  # fmt: skip
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse(f"/console/login?next={quote(target)}", status_code=303)

    async def login(self, request: Request) -> Response:
        nxt = request.query_params.get("next", "/console/")
        if not nxt.startswith("/console"):  # never an open redirect
            nxt = "/console/"
        if request.method == "GET":
            return await self.render(request, "login.html", {"next": nxt, "error": None}, role=None)
        form = await request.form()
        key = str(form.get("key") or "").strip()
        role = await self.key_role(key) if key else None
        if role is None:
            ctx = {
                "next": nxt,
                "error": "That key is not accepted by this gateway." if key else "Enter a key.",
            }
            return await self.render(request, "login.html", ctx, role=None, status=401)
        response = RedirectResponse(nxt, status_code=303)
        response.set_cookie(
            COOKIE,
            self.sessions.issue(role),
            max_age=SESSION_S,
            path="/console",
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )
        return response

    async def logout(self, request: Request) -> Response:
        response = RedirectResponse("/console/login", status_code=303)
        response.delete_cookie(COOKIE, path="/console")
        return response

    # ------------------------------------------------------------------ pages

    async def render(
        self, request: Request, name: str, ctx: dict[str, Any], *, role: str | None, status: int = 200
    ) -> HTMLResponse:
        template = self.env.get_template(name)
        html = await template.render_async(**ctx, role=role, path=request.url.path)
        return HTMLResponse(
            html,
            status_code=status,
            headers={
                "cache-control": "no-store",
                "content-security-policy": "default-src 'self'; style-src 'self' 'unsafe-inline'; "
                "img-src 'self' data:; frame-ancestors 'none'",
                "x-content-type-options": "nosniff",
            },
        )

    async def index(self, request: Request) -> Response:
        role = await self.role_of(request)
        if role is None:
            return self.unauthorized(request)
        sections: dict[str, Any] = {}
        errors: list[str] = []
        for name in ("runs", "evaluations", "loops", "jobs", "datasets"):
            try:
                sections[name] = (await getattr(self.backends, name)())[:5]
            except Unreachable as err:
                sections[name] = []
                errors.append(str(err))
        return await self.render(request, "index.html", {"sections": sections, "errors": errors}, role=role)

    def page(self, name: str) -> Callable[[Request], Awaitable[Response]]:
        loader = getattr(self, f"load_{name}")

        async def handler(request: Request) -> Response:
            role = await self.role_of(request)
            if role is None:
                return self.unauthorized(request)
            key = request.path_params.get("id") or request.path_params.get("name")
            try:
                ctx = await (loader(key) if key is not None else loader())
            except Unreachable as err:
                status = 404 if err.not_found else 502
                ctx = {"error": str(err), "title": name}
                return await self.render(request, "error.html", ctx, role=role, status=status)
            return await self.render(request, f"{name}.html", ctx, role=role)

        return handler

    async def load_runs(self) -> dict[str, Any]:
        return {"runs": await self.backends.runs()}

    async def load_run(self, run_id: str) -> dict[str, Any]:
        run = await self.backends.run(run_id)
        return {"run": run, "episodes": await self.backends.episodes(run_id)}

    async def load_trajectory(self, trajectory_id: str) -> dict[str, Any]:
        return {"t": await self.backends.trajectory_of(trajectory_id)}

    async def load_evaluations(self) -> dict[str, Any]:
        return {"evaluations": await self.backends.evaluations()}

    async def load_evaluation(self, evaluation_id: str) -> dict[str, Any]:
        return {"e": await self.backends.evaluation(evaluation_id)}

    async def load_loops(self) -> dict[str, Any]:
        return {"loops": await self.backends.loops()}

    async def load_loop(self, loop_id: str) -> dict[str, Any]:
        loop = await self.backends.loop(loop_id)
        alias_name = (loop.get("promotion") or {}).get("alias") or loop.get("alias") or ""
        alias = None
        if alias_name:
            with contextlib.suppress(Unreachable):
                alias = await self.backends.alias(alias_name)
        return {"loop": loop, "alias": alias}

    async def load_datasets(self) -> dict[str, Any]:
        return {"datasets": await self.backends.datasets()}

    async def load_dataset(self, dataset_id: str) -> dict[str, Any]:
        dataset = await self.backends.dataset_of(dataset_id)
        try:
            examples, total = await self.backends.preview(dataset_id)
            preview_error = None
        except Unreachable as err:  # e.g. a dataset with no TRAIN split: the manifest still shows
            examples, total, preview_error = [], 0, str(err)
        return {"d": dataset, "examples": examples, "total": total, "preview_error": preview_error}

    async def load_jobs(self) -> dict[str, Any]:
        return {"jobs": await self.backends.jobs()}

    async def load_job(self, job_id: str) -> dict[str, Any]:
        job = await self.backends.job(job_id)
        return {"job": job, "history": await self.backends.history(job)}

    async def load_adapters(self) -> dict[str, Any]:
        return {"adapters": await self.backends.adapters()}

    async def load_aliases(self) -> dict[str, Any]:
        return {"aliases": await self.backends.aliases()}

    async def load_skillopts(self) -> dict[str, Any]:
        return {"optimizations": await self.backends.skill_optimizations()}

    async def load_skillopt(self, optimization_id: str) -> dict[str, Any]:
        """The optimisation, and per step the skill diff its candidate made (the newest 20 steps)."""
        opt = await self.backends.skill_optimization(optimization_id)
        texts: dict[str, str] = {}

        async def text(skill_id: str) -> str:
            if skill_id and skill_id not in texts:
                try:
                    texts[skill_id] = (await self.backends.skill(skill_id)).get("text", "")
                except Unreachable as err:
                    texts[skill_id] = f"(skill {skill_id} unavailable: {err})"
            return texts.get(skill_id, "")

        diffs: dict[int, str] = {}
        for step in (opt.get("steps") or [])[-20:]:
            before, after = step.get("skill_before_id", ""), step.get("candidate_skill_id", "")
            if before and after and before != after:
                lines = difflib.unified_diff(
                    (await text(before)).splitlines(), (await text(after)).splitlines(),
                    before, after, lineterm="", n=2,
                )  # fmt: skip
                diffs[int(step.get("index", 0))] = "\n".join(lines)
        current = await text(opt.get("current_skill_id", ""))
        return {"o": opt, "diffs": diffs, "current_text": current}

    async def load_alias(self, name: str) -> dict[str, Any]:
        return {"alias": await self.backends.alias(name)}

    # ------------------------------------------------------------------ live and actions

    async def stream(self, request: Request) -> Response:
        """Server-sent events from a Watch RPC: ``event: run|evaluation|loop|job`` (snapshots),
        ``episode``, ``log``, then ``end`` (or ``failed`` with the gRPC code); JSON data."""
        role = await self.role_of(request)
        if role is None:
            return self.unauthorized(request)
        kind, resource_id = request.path_params["kind"], request.path_params["id"]
        if kind not in ("run", "evaluation", "loop", "job", "skill"):
            return JSONResponse(
                {"error": {"message": f"nothing to watch of kind '{kind}'", "type": "invalid_request_error",
                           "param": "kind", "code": None}},
                status_code=404,
            )  # fmt: skip
        return StreamingResponse(
            self._events(request, kind, resource_id),
            media_type="text/event-stream",
            headers={"cache-control": "no-store", "x-accel-buffering": "no"},
        )

    async def _events(self, request: Request, kind: str, resource_id: str) -> AsyncIterator[bytes]:
        queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()

        async def pump() -> None:
            try:
                async for item in self.backends.watch(kind, resource_id):
                    await queue.put(item)
                await queue.put({"type": "end", "data": {}})
            except grpc.RpcError as err:
                code = err.code().name if isinstance(err, grpc.aio.AioRpcError) else "UNAVAILABLE"
                await queue.put({"type": "failed", "data": {"code": code, "message": str(err)[:500]}})
            finally:
                await queue.put(None)

        task = asyncio.create_task(pump())
        try:
            yield b"retry: 3000\n\n"
            while True:
                try:
                    item = await asyncio.wait_for(queue.get(), KEEPALIVE_S)
                except TimeoutError:
                    if await request.is_disconnected():
                        return
                    yield b": keep-alive\n\n"
                    continue
                if item is None:
                    return
                yield f"event: {item['type']}\ndata: {json.dumps(item['data'], default=str)}\n\n".encode()
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def cancel(self, request: Request) -> Response:
        role = await self.role_of(request)
        if role is None:
            return self.unauthorized(request)
        if role != "admin":
            return _error(
                403, "This key may only look: cancelling needs the gateway's master key.", "forbidden"
            )
        if request.headers.get(SAME_ORIGIN_HEADER) != "1":
            return _error(403, f"Changes need the '{SAME_ORIGIN_HEADER}: 1' header.", "forbidden")
        kind, rid = request.path_params["kind"], request.path_params["id"]
        calls = {
            "run": ("orchestrator", "CancelRun", opb.CancelRunRequest(run_id=rid)),
            "evaluation": (
                "orchestrator",
                "CancelEvaluation",
                opb.CancelEvaluationRequest(evaluation_id=rid),
            ),
            "loop": ("orchestrator", "CancelLoop", opb.CancelLoopRequest(loop_id=rid)),
            "job": ("trainer", "CancelFineTuneJob", trpb.CancelFineTuneJobRequest(job_id=rid)),
            "skill": (
                "orchestrator",
                "CancelSkillOptimization",
                opb.CancelSkillOptimizationRequest(optimization_id=rid),
            ),
        }
        if kind not in calls:
            return _error(404, f"nothing to cancel of kind '{kind}'", "not_found")
        try:
            await self.backends.call(*calls[kind])
        except Unreachable as err:
            status = {"NOT_FOUND": 404, "FAILED_PRECONDITION": 409, "INVALID_ARGUMENT": 400}.get(
                err.code, 502
            )
            return _error(status, str(err), err.code.lower())
        return JSONResponse({"id": rid, "cancelled": True})


def _error(status: int, message: str, code: str) -> JSONResponse:
    body = {"error": {"message": message, "type": "invalid_request_error", "param": None, "code": code}}
    return JSONResponse(body, status_code=status)
