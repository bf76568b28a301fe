"""Traffic capture: a LiteLLM ``CustomLogger`` that stores each call as a trajectory.

Off by default; ``FLYWHEEL_GATEWAY_CAPTURE=true`` adds ``flywheel_gateway.capture.capture_logger``
to ``litellm_settings.callbacks`` in the generated config, so LiteLLM calls it for the requests it
serves, and our fast path calls the same instance for the requests it serves.

Each successful call becomes one :class:`Trajectory` (``teacher_kind = CAPTURED``, id
``cap-<call id>`` so a retried callback stores it once) sent to the trajectory store's
``PutTrajectory`` at ``FLYWHEEL_TRAJECTORY_ADDRESS``: the request's messages and tools, the answer
with its tool calls, finish reason, token usage and latency, the model name as called at the
gateway, and the caller's key alias as the label ``gateway_key_alias`` (never the key itself).

Every call also carries the answer's id as the label ``completion_id`` (how feedback is joined) and,
when the answer's ``system_fingerprint`` is an adapter content digest (``sha256:…``), the label
``adapter_digest``. A call to a served alias has ``Policy.model`` = the alias and the labels
``gateway_alias``, ``alias_revision``, ``alias_arm`` (``target`` or ``canary``) and ``served_model``;
shadow copies (``alias_arm`` ``shadow``) are never stored.

Secrets are redacted from every text stored: the gateway's master key and provider keys by
value, and anything that looks like a bearer token, an ``sk-…`` key, an AWS access key id, a
private-key block or a ``password=…`` / ``api_key: …`` assignment, replaced by ``[REDACTED]``.
"""

from __future__ import annotations

import json
import logging
import os
import re
from datetime import datetime
from typing import Any

import grpc
from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp
from litellm.integrations.custom_logger import CustomLogger

from flywheel.common.v1.common_pb2 import SamplingParams, TokenUsage
from flywheel.trajectory.v1 import trajectory_pb2 as tpb
from flywheel.trajectory.v1.trajectory_pb2_grpc import TrajectoryServiceStub
from flywheel_common import auth

log = logging.getLogger("flywheel.gateway.capture")

REDACTED = "[REDACTED]"
_PATTERNS = [
    re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?-----END [A-Z ]*PRIVATE KEY-----", re.S),
    re.compile(r"(?i)\bbearer\s+[A-Za-z0-9._~+/=-]{8,}"),
    re.compile(r"\b(?:sk|pk|rk)-[A-Za-z0-9_-]{8,}"),
    re.compile(r"\bsk-ant-[A-Za-z0-9_-]{8,}"),
    re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"),
    re.compile(r"\bgh[pousr]_[A-Za-z0-9]{20,}\b"),
    re.compile(
        r"(?i)\b(password|passwd|secret|api[_-]?key|access[_-]?token|auth[_-]?token)(\s*[=:]\s*)(\S+)"
    ),
]
_SECRET_ENV = ("FLYWHEEL_GATEWAY_MASTER_KEY", "OPENAI_API_KEY", "ANTHROPIC_API_KEY", "DATABASE_URL")
_ROLES = {
    "system": tpb.ROLE_SYSTEM,
    "developer": tpb.ROLE_SYSTEM,
    "user": tpb.ROLE_USER,
    "assistant": tpb.ROLE_ASSISTANT,
    "tool": tpb.ROLE_TOOL,
    "function": tpb.ROLE_TOOL,
}
_LABEL_RE = re.compile(r"[^a-z0-9_.-]")


def redact(text: str, secrets: list[str] | None = None) -> str:
    """``text`` with known secret values and secret-looking strings replaced by ``[REDACTED]``."""
    for value in secrets if secrets is not None else known_secrets():
        if value:
            text = text.replace(value, REDACTED)
    for pattern in _PATTERNS:
        if pattern.groups == 3:
            text = pattern.sub(lambda m: f"{m.group(1)}{m.group(2)}{REDACTED}", text)
        else:
            text = pattern.sub(REDACTED, text)
    return text


def known_secrets() -> list[str]:
    return [v for v in (os.environ.get(name, "") for name in _SECRET_ENV) if len(v) >= 6]


def _get(obj: Any, name: str, default: Any = None) -> Any:
    """Read a field from a dict or an object (LiteLLM passes pydantic objects; our fast path dicts)."""
    if obj is None:
        return default
    if isinstance(obj, dict):
        return obj.get(name, default)
    return getattr(obj, name, default)


def _text(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # OpenAI content parts
        return "".join(
            str(_get(part, "text", "")) if _get(part, "type") == "text" else "" for part in content
        )
    return str(content)


def _timestamp(moment: datetime | float | None) -> Timestamp | None:
    if moment is None:
        return None
    stamp = Timestamp()
    if isinstance(moment, datetime):
        stamp.FromDatetime(moment.astimezone() if moment.tzinfo is None else moment)
    else:
        stamp.FromNanoseconds(int(moment * 1e9))
    return stamp


def _seconds(start: Any, end: Any) -> float:
    try:
        return max(0.0, (end - start).total_seconds())
    except (TypeError, AttributeError):
        return 0.0


def build_trajectory(kwargs: dict[str, Any], response: Any, start: Any, end: Any) -> tpb.Trajectory:
    """The trajectory of one gateway call, secrets redacted."""
    secrets = known_secrets()
    metadata = _get(kwargs.get("litellm_params"), "metadata") or {}
    logging_object = kwargs.get("standard_logging_object") or {}
    model = str(
        metadata.get("flywheel_alias")
        or metadata.get("model_group")
        or _get(logging_object, "model_group")
        or kwargs.get("model")
        or ""
    )
    call_id = str(kwargs.get("litellm_call_id") or _get(logging_object, "id") or "")
    safe_id = re.sub(r"[^A-Za-z0-9._-]", "-", call_id)[:120] or "unknown"
    alias = metadata.get("user_api_key_alias") or metadata.get("user_api_key_hash") or ""

    steps: list[tpb.Step] = []
    for message in kwargs.get("messages") or []:
        role = _ROLES.get(str(_get(message, "role", "user")), tpb.ROLE_USER)
        step = tpb.Step(
            index=len(steps),
            role=role,
            content=redact(_text(_get(message, "content")), secrets),
            name=str(_get(message, "name") or ""),
            tool_call_id=str(_get(message, "tool_call_id") or ""),
        )
        for call in _get(message, "tool_calls") or []:
            fn = _get(call, "function") or {}
            step.tool_calls.add(
                id=str(_get(call, "id") or ""),
                name=str(_get(fn, "name") or ""),
                arguments_json=redact(str(_get(fn, "arguments") or ""), secrets),
            )
        steps.append(step)

    choices = _get(response, "choices") or []
    choice = choices[0] if choices else None
    answer = _get(choice, "message") or {}
    usage = _get(response, "usage") or {}
    reply = tpb.Step(
        index=len(steps),
        role=tpb.ROLE_ASSISTANT,
        content=redact(_text(_get(answer, "content")), secrets),
        finish_reason=str(_get(choice, "finish_reason") or ""),
        usage=TokenUsage(
            prompt_tokens=int(_get(usage, "prompt_tokens") or 0),
            completion_tokens=int(_get(usage, "completion_tokens") or 0),
        ),
    )
    for call in _get(answer, "tool_calls") or []:
        fn = _get(call, "function") or {}
        reply.tool_calls.add(
            id=str(_get(call, "id") or ""),
            name=str(_get(fn, "name") or ""),
            arguments_json=redact(str(_get(fn, "arguments") or ""), secrets),
        )
    started = _timestamp(start)
    if started is not None:
        reply.start_time.CopyFrom(started)
    took = Duration()
    took.FromNanoseconds(int(_seconds(start, end) * 1e9))
    reply.duration.CopyFrom(took)
    steps.append(reply)

    params = kwargs.get("optional_params") or {}
    sampling = SamplingParams()
    if isinstance(params.get("temperature"), int | float):
        sampling.temperature = float(params["temperature"])
    if isinstance(params.get("top_p"), int | float):
        sampling.top_p = float(params["top_p"])
    if isinstance(params.get("max_tokens"), int):
        sampling.max_tokens = params["max_tokens"]
    if isinstance(params.get("seed"), int):
        sampling.seed = params["seed"]
    stop = params.get("stop")
    sampling.stop.extend([stop] if isinstance(stop, str) else [str(s) for s in stop or []])

    tools = []
    for tool in params.get("tools") or []:
        fn = _get(tool, "function") or {}
        if not _get(fn, "name"):
            continue  # the store requires a name; a nameless tool is not worth a rejected trajectory
        tools.append(
            tpb.ToolDefinition(
                name=str(_get(fn, "name") or ""),
                description=str(_get(fn, "description") or ""),
                parameters_json_schema=json.dumps(_get(fn, "parameters") or {}),
            )
        )

    trajectory = tpb.Trajectory(
        id=f"cap-{safe_id}",
        task=tpb.TaskRef(suite="gateway-traffic", task_id=safe_id),
        policy=tpb.Policy(model=model, sampling=sampling),
        teacher_kind=tpb.TEACHER_KIND_CAPTURED,
        tools=tools,
        steps=steps,
        labels={
            "source": "gateway-capture",
            "gateway_key_alias": _LABEL_RE.sub("-", str(alias).lower())[:256],
        },
    )
    trajectory.labels.update(_lineage_labels(metadata, response))
    if started is not None:
        trajectory.start_time.CopyFrom(started)
    ended = _timestamp(end)
    if ended is not None:
        trajectory.end_time.CopyFrom(ended)
    return trajectory


def _lineage_labels(metadata: dict[str, Any], response: Any) -> dict[str, str]:
    """Labels that say which answer this was and what answered it (alias, arm, adapter digest)."""
    labels: dict[str, str] = {}
    completion_id = _get(response, "id")
    if isinstance(completion_id, str) and completion_id:
        labels["completion_id"] = completion_id[:256]
    fingerprint = _get(response, "system_fingerprint")
    if isinstance(fingerprint, str) and fingerprint.startswith("sha256:"):
        labels["adapter_digest"] = fingerprint[:256]
    alias = metadata.get("flywheel_alias")
    if alias:
        labels["gateway_alias"] = str(alias)[:256]
        labels["alias_revision"] = str(metadata.get("flywheel_alias_revision") or "")[:256]
        labels["alias_arm"] = str(metadata.get("flywheel_alias_arm") or "")[:256]
        served = metadata.get("served_model") or metadata.get("flywheel_served_model") or ""
        labels["served_model"] = str(served)[:256]
    return labels


def is_shadow_copy(kwargs: dict[str, Any]) -> bool:
    metadata = _get(kwargs.get("litellm_params"), "metadata") or {}
    return isinstance(metadata, dict) and metadata.get("flywheel_alias_arm") == "shadow"


class TrajectoryCapture(CustomLogger):
    """Sends each successful call to the trajectory store; failures are logged, never raised."""

    def __init__(self, address: str | None = None) -> None:
        super().__init__()
        self._address = address
        self._channel: grpc.aio.Channel | None = None
        self._stub: TrajectoryServiceStub | None = None
        self.stored = 0

    @property
    def address(self) -> str:
        return self._address or os.environ.get("FLYWHEEL_TRAJECTORY_ADDRESS", "127.0.0.1:50053")

    def stub(self) -> TrajectoryServiceStub:
        if self._stub is None:
            self._channel = auth.channel(self.address)
            self._stub = TrajectoryServiceStub(self._channel)
        return self._stub

    async def async_log_success_event(
        self, kwargs: Any, response_obj: Any, start_time: Any, end_time: Any
    ) -> None:
        if is_shadow_copy(kwargs):
            return  # not what any caller got
        try:
            trajectory = build_trajectory(kwargs, response_obj, start_time, end_time)
            await self.stub().PutTrajectory(tpb.PutTrajectoryRequest(trajectory=trajectory), timeout=10)
            self.stored += 1
        except Exception as err:  # capture must never break serving
            log.warning("traffic capture: could not store the call in %s: %s", self.address, err)


#: The instance the config names (``flywheel_gateway.capture.capture_logger``).
capture_logger = TrajectoryCapture()
