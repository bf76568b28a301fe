"""Policies: where an episode's assistant turns come from.

:class:`GatewayPolicy` calls a model through the gateway with the official OpenAI client, which
already retries connection errors, 408/409/429 and 5xx answers with exponential back-off (we set
the count and the timeout); a semaphore bounds the calls in flight across all episodes.
:class:`ReferencePolicy` lives in ``reference.py``.

Adapter identity: every turn of a model that is a LoRA adapter carries its id, version and
content digest (:class:`AdapterIdentity` in the trajectory's step). The id and version come from
the model name (``ft/<name>-v<N>``) and the gateway's ``GET /v1/models`` entry (which says whether
the name is an adapter). The digest comes from the answer itself when it carries one: our model
server sets OpenAI's ``system_fingerprint`` to the content digest (``sha256:<hex>``) of the
adapter whose weights generated that very answer, so it is the authority and cannot race with a
reload. When the answer carries none (vLLM, hosted APIs; their fingerprints are not digests) the
digest is the listing's, which our model server fills with the digest of the files it loaded
(vLLM lists none: the digest stays empty). The listing is asked at most once per
``identity_ttl_s`` (2 s) per model and shared by every episode; a version's digest can change
only by a forced reload, which adapter sync verifies and announces.

Adapter pinning: a run on an adapter pins the identity it saw when it started (``Run.adapter``)
and gives it to its :class:`GatewayPolicy`. After each call the policy compares the turn's digest
(the answer's, else the listing's) with the pinned one; when both are known and differ, the turn
raises :class:`ModelError` naming both digests, so the episode ends as MODEL_ERROR and its reward
is masked: a run never mixes adapter versions. With our model server the check is exact: a stale
listing neither lets a turn from new weights through nor rejects one from the pinned weights.
(Without a digest in the answer the listing is all there is: an empty digest — vLLM, or a listing
that failed — cannot be compared and is let through, and as the listing is cached
``identity_ttl_s``, a turn may still be answered in the few seconds after a reload, before the
listing shows it.)

Token records: a run with ``record_tokens`` asks every call for vLLM's ``return_token_ids`` and
OpenAI's ``logprobs`` and keeps what comes back (:class:`TurnTokens` in the step) — the ids the
server sampled, not a re-tokenisation of the text, which in general differs (RL on re-tokenised
text is silently off-policy). A server that returns no ids (hosted APIs) leaves the step without
tokens; one that returns ids whose count disagrees with its log-probs is a model error, since
such a record would mislead a trainer.
"""

from __future__ import annotations

import asyncio
import re
import time
from dataclasses import dataclass, field
from typing import Any, Protocol, cast

import openai
from openai.types.chat import ChatCompletionMessageParam

from flywheel.common.v1 import common_pb2
from flywheel.trajectory.v1 import trajectory_pb2 as tpb

#: The gateway's name of an adapter version: ``<prefix><name>-v<version>`` (``ft/coder-v3``).
ADAPTER_MODEL = re.compile(r"^(?:[^/]+/)?(?P<name>[a-z0-9][a-z0-9._-]*)-v(?P<version>[1-9][0-9]*)$")
#: How long the gateway's listing of a model is reused for the identity of its turns (seconds).
IDENTITY_TTL_S = 2.0
#: A ``system_fingerprint`` that is a content digest (our model server's); OpenAI's own
#: fingerprints (``fp_…``) and vLLM's absent one are not, and leave the listing's digest in place.
DIGEST_FINGERPRINT = re.compile(r"^sha256:[0-9a-f]{64}$")


@dataclass
class ModelTurn:
    """One assistant message as the policy produced it."""

    content: str
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str = ""
    latency_s: float = 0.0
    adapter: tpb.AdapterIdentity | None = None  #: the LoRA adapter that answered, when the model is one
    tokens: tpb.TurnTokens | None = None  #: sampled ids and log-probs, when the run records them

    def step_fields(self) -> dict[str, Any]:
        """Fields of the trajectory step that records this turn, beyond what the agent sets itself."""
        out: dict[str, Any] = {}
        if self.adapter is not None:
            out["adapter"] = self.adapter
        if self.tokens is not None:
            out["tokens"] = self.tokens
        return out


class ModelError(Exception):
    """The model could not be called (after retries); the episode ends as MODEL_ERROR."""


class Policy(Protocol):
    model: str

    async def turn(
        self,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]] | None,
        sampling: common_pb2.SamplingParams,
        timeout_s: float,
    ) -> ModelTurn: ...


def sampling_kwargs(sampling: common_pb2.SamplingParams) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if sampling.HasField("temperature"):
        out["temperature"] = sampling.temperature
    if sampling.HasField("top_p"):
        out["top_p"] = sampling.top_p
    if sampling.HasField("max_tokens"):
        out["max_tokens"] = sampling.max_tokens
    if sampling.HasField("seed"):
        out["seed"] = sampling.seed
    if sampling.stop:
        out["stop"] = list(sampling.stop)
    return out


class ModelClient:
    """One OpenAI client for the gateway, shared by every episode of the service."""

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        max_retries: int,
        timeout_s: float,
        concurrency: int,
        identity_ttl_s: float = IDENTITY_TTL_S,
    ) -> None:
        self.base_url = base_url
        self.timeout_s = timeout_s
        self.identity_ttl_s = identity_ttl_s
        # model -> (monotonic time it was asked, identity or None when the model is not an adapter)
        self._identities: dict[str, tuple[float, tpb.AdapterIdentity | None]] = {}
        self._identity_locks: dict[str, asyncio.Lock] = {}
        #: alias -> the adapters its arms serve (target, canary candidate), from the last listing
        self._alias_arms: dict[str, list[tpb.AdapterIdentity]] = {}
        self._api_key = api_key or "none"
        self._max_retries = max_retries
        self._client: openai.AsyncOpenAI | None = None
        self._concurrency = concurrency
        self._limit: asyncio.Semaphore | None = None

    @property
    def client(self) -> openai.AsyncOpenAI:
        # Made on first use, inside the running event loop its connections belong to.
        if self._client is None:
            self._client = openai.AsyncOpenAI(
                base_url=self.base_url,
                api_key=self._api_key,
                max_retries=self._max_retries,
                timeout=self.timeout_s,
            )
        return self._client

    @property
    def limit(self) -> asyncio.Semaphore:
        if self._limit is None:
            self._limit = asyncio.Semaphore(self._concurrency)
        return self._limit

    def policy(
        self, model: str, *, record_tokens: bool = False, pinned: tpb.AdapterIdentity | None = None
    ) -> GatewayPolicy:
        return GatewayPolicy(self, model, record_tokens=record_tokens, pinned=pinned)

    async def describe(self, model: str) -> dict[str, Any]:
        """What the gateway says about a model name (``root``/``parent`` when it is an adapter);
        empty when it does not list it. Best-effort: used for lineage, never blocks a run."""
        return await self._entry(model) or {}

    async def answers(self, model: str) -> bool:
        """Whether the gateway routes ``model`` to a replica that serves it: a one-token completion
        that is not answered "does not exist" (404). A listing can name an adapter a replica no
        longer holds; this asks the route itself. Other errors (busy, timeouts) say nothing about
        existence and count as answering: the episodes will meet them and mask them."""
        try:
            await self.client.chat.completions.create(
                model=model, messages=[{"role": "user", "content": "ping"}], max_tokens=1, timeout=120.0
            )
        except openai.NotFoundError:
            return False
        except openai.OpenAIError:
            pass
        return True

    async def _entry(self, model: str) -> dict[str, Any] | None:
        """The gateway's listing entry of ``model``: empty when not listed, None when listing failed."""
        try:
            listing = await self.client.models.list(timeout=10.0)
        except Exception:
            return None
        for entry in listing.data:
            if entry.id == model:
                return entry.model_dump()
        return {}

    async def identity(self, model: str) -> tpb.AdapterIdentity | None:
        """The adapter behind ``model`` as the gateway lists it now (cached ``identity_ttl_s``);
        None for a model that is not an adapter. Best-effort: a listing that fails gives an
        identity from the name alone (no digest), never an error."""
        match = ADAPTER_MODEL.match(model)
        if match is None and "/" not in model:
            return None  # a base model or a hosted one; an alias has a "/" (`agent/<name>`)
        cached = self._identities.get(model)
        if cached is not None and time.monotonic() - cached[0] < self.identity_ttl_s:
            return cached[1]
        lock = self._identity_locks.setdefault(model, asyncio.Lock())
        async with lock:  # one listing at a time per model, shared by every episode waiting on it
            cached = self._identities.get(model)
            if cached is not None and time.monotonic() - cached[0] < self.identity_ttl_s:
                return cached[1]
            asked = time.monotonic()
            entry = await self._entry(model)
            identity: tpb.AdapterIdentity | None = None
            alias = (entry or {}).get("flywheel_alias")
            if isinstance(alias, dict):
                identity = await self._alias_identity(model, alias)
                self._identities[model] = (asked, identity)
                return identity
            if match is None:
                if entry is not None:
                    self._identities[model] = (asked, None)
                return None
            # The gateway lists adapters with their base model as parent; without a listing, an
            # adapter route's name (``ft/…``) still says which adapter version was asked for.
            if (entry or {}).get("parent") or (not entry and model.startswith("ft/")):
                name, version = match["name"], int(match["version"])
                digest = (entry or {}).get("digest")
                identity = tpb.AdapterIdentity(
                    adapter_id=f"{name}/v{version}",
                    name=name,
                    version=version,
                    digest=digest if isinstance(digest, str) else "",
                )
            if entry is not None:  # a failed listing is asked again at the next turn
                self._identities[model] = (asked, identity)
            return identity

    async def _alias_identity(self, alias: str, listed: dict[str, Any]) -> tpb.AdapterIdentity | None:
        """The adapter an alias's target serves (None for a base model); the arms of a running
        canary are kept for :meth:`arms`, so a turn is credited to the arm that answered it."""
        arms: list[tpb.AdapterIdentity] = []
        target: tpb.AdapterIdentity | None = None
        adapter = listed.get("adapter")
        if isinstance(adapter, dict) and adapter.get("name") and adapter.get("version"):
            name, version = str(adapter["name"]), int(adapter["version"])
            digest = adapter.get("digest")
            target = tpb.AdapterIdentity(
                adapter_id=f"{name}/v{version}",
                name=name,
                version=version,
                digest=digest if isinstance(digest, str) else "",
            )
            arms.append(target)
        canary = listed.get("canary")
        if isinstance(canary, dict) and isinstance(canary.get("model"), str) and canary["model"] != alias:
            other = await self.identity(canary["model"])
            if other is not None:
                arms.append(other)
        self._alias_arms[alias] = arms
        return target

    def arms(self, model: str) -> list[tpb.AdapterIdentity]:
        """The adapters an alias may answer with (from its last listing); empty for other models."""
        return self._alias_arms.get(model, [])

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()


@dataclass
class GatewayPolicy:
    client: ModelClient
    model: str
    record_tokens: bool = False  #: ask for and keep the turn's token ids and log-probs
    #: The adapter identity the run started with; a turn from another digest is a ModelError.
    pinned: tpb.AdapterIdentity | None = None

    async def turn(
        self,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]] | None,
        sampling: common_pb2.SamplingParams,
        timeout_s: float,
    ) -> ModelTurn:
        kwargs = sampling_kwargs(sampling)
        if tools:
            kwargs["tools"] = tools
        if self.record_tokens:
            kwargs["logprobs"] = True
            kwargs["extra_body"] = {"return_token_ids": True}
        listed = await self.client.identity(self.model)
        async with self.client.limit:
            started = time.perf_counter()
            try:
                reply = await self.client.client.chat.completions.create(
                    model=self.model,
                    # The episode keeps plain dicts in the OpenAI wire shape; the SDK's TypedDicts
                    # describe exactly that shape, so this is a boundary cast, not a conversion.
                    messages=cast(list[ChatCompletionMessageParam], messages),
                    timeout=timeout_s,
                    **kwargs,
                )
            except openai.APITimeoutError as err:
                raise TimeoutError(f"model call timed out after {timeout_s:.1f} s") from err
            except openai.APIStatusError as err:
                raise ModelError(f"gateway answered HTTP {err.status_code}: {_message(err)}") from err
            except openai.APIError as err:
                raise ModelError(f"model call failed: {err}") from err
            latency = time.perf_counter() - started
        adapter = answered_by(self.model, listed, reply, self.client.arms(self.model))
        check_pinned(self.model, self.pinned, adapter)
        if not reply.choices:
            raise ModelError("the gateway answered with no choices")
        choice = reply.choices[0]
        msg = choice.message
        calls: list[dict[str, Any]] = []
        for c in msg.tool_calls or []:
            function = getattr(c, "function", None)  # custom (free-text) tool calls have none
            if function is not None:
                calls.append(
                    {
                        "id": c.id,
                        "type": "function",
                        "function": {"name": function.name, "arguments": function.arguments},
                    }
                )
        usage = reply.usage
        tokens = turn_tokens(reply) if self.record_tokens else None
        return ModelTurn(
            content=msg.content or "",
            tool_calls=calls,
            prompt_tokens=usage.prompt_tokens if usage else 0,
            completion_tokens=usage.completion_tokens if usage else 0,
            finish_reason=choice.finish_reason or "",
            latency_s=latency,
            adapter=adapter,
            tokens=tokens,
        )


def answered_by(
    model: str,
    listed: tpb.AdapterIdentity | None,
    reply: Any,
    arms: list[tpb.AdapterIdentity] | None = None,
) -> tpb.AdapterIdentity | None:
    """The identity of the adapter that generated ``reply``: the listing's (``listed``), with the
    digest the answer carries in ``system_fingerprint`` when it carries one (it names the weights
    that answered; the listing may be up to ``identity_ttl_s`` old). For an alias during a canary,
    ``arms`` are the adapters it may answer with: the one whose digest answered is credited."""
    fingerprint = getattr(reply, "system_fingerprint", None)
    if not isinstance(fingerprint, str) or not DIGEST_FINGERPRINT.match(fingerprint):
        return listed
    for arm in arms or []:
        if arm.digest == fingerprint:
            return arm
    if listed is None:
        # Only an adapter answers with a digest; a name the listing did not show as one (listed
        # since, or a failed listing of a name outside ``ft/``) still names its version.
        match = ADAPTER_MODEL.match(model)
        if match is None:
            return None
        name, version = match["name"], int(match["version"])
        return tpb.AdapterIdentity(
            adapter_id=f"{name}/v{version}", name=name, version=version, digest=fingerprint
        )
    identity = tpb.AdapterIdentity()
    identity.CopyFrom(listed)
    identity.digest = fingerprint
    return identity


def check_pinned(model: str, pinned: tpb.AdapterIdentity | None, now: tpb.AdapterIdentity | None) -> None:
    """Raise ModelError when ``model`` now serves another digest than the pinned one (both known)."""
    if pinned is None or now is None or not pinned.digest or not now.digest:
        return
    if now.digest != pinned.digest:
        raise ModelError(
            f"adapter {model} changed during the run: pinned {pinned.digest} now {now.digest}; "
            "the episode is masked so the run never mixes adapter versions"
        )


def turn_tokens(reply: Any) -> tpb.TurnTokens | None:
    """The token record of a chat completion (vLLM's field names: ``prompt_token_ids`` on the
    response, ``token_ids`` on the choice; log-probs from OpenAI's ``logprobs.content``); None
    when the server sent no completion ids."""
    choice = reply.choices[0]
    ids = _extra(choice, "token_ids")
    if not ids:
        return None
    prompt = _extra(reply, "prompt_token_ids") or _extra(choice, "prompt_token_ids") or []
    content = choice.logprobs.content if choice.logprobs is not None else None
    logprobs = [float(t.logprob) for t in content or []]
    if logprobs and len(logprobs) != len(ids):
        raise ModelError(
            f"the model returned {len(ids)} completion token ids but {len(logprobs)} log-probs; "
            "refusing to record tokens that do not line up"
        )
    return tpb.TurnTokens(
        prompt_token_ids=[int(i) for i in prompt],
        completion_token_ids=[int(i) for i in ids],
        completion_logprobs=logprobs,
    )


def _extra(obj: Any, name: str) -> Any:
    """A field the OpenAI SDK's models do not declare (kept in ``model_extra``)."""
    value = getattr(obj, name, None)
    if value is None and getattr(obj, "model_extra", None):
        value = obj.model_extra.get(name)
    return value


def _message(err: openai.APIStatusError) -> str:
    body = err.body
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and inner.get("message"):
            return str(inner["message"])
    return str(err.message)
