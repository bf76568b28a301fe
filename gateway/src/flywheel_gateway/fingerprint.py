"""The log-prob fingerprint of a served adapter: how adapter sync checks a replica that reports no digest.

vLLM's ``/v1/models`` says nothing about the weights behind a LoRA name, so for such replicas
adapter sync asks the adapter itself. Definition (``flywheel-logprob-fingerprint/v1``):

* the request: ``POST /v1/completions`` on the replica (not through the gateway, which may pick
  another replica) with ``model`` = the served name, ``prompt`` = :data:`PROMPT`,
  ``max_tokens`` = :data:`TOKENS` (8), ``temperature`` 0 (greedy), ``logprobs`` = :data:`TOP` (5);
* the fingerprint: for each generated token, the token, its log-prob and the top-5 log-probs
  (``choices[0].logprobs``: ``tokens``, ``token_logprobs``, ``top_logprobs``).

Comparison with a reference (:func:`compare`), position by position, within a tolerance ``tol``
(nats): every token in both top-5 lists must have its log-prob within ``tol`` of the reference's,
and the chosen token must be the reference's. A position where the reference's two best tokens are
within ``2·tol`` of each other is a near tie: greedy decoding may legitimately pick either, so
the choice there is not compared and the comparison stops after it (the prefixes may part). The
first position's log-probs are always compared.

What it can and cannot tell: weights that move the first tokens' log-probs of this prompt by
more than ``tol`` — another adapter, another version, no adapter, a stale cache — are told apart;
a change too small to move them (one flipped low bit) is not. That is why adapter sync also
checks the digest of the folder it gives the replica; the fingerprint proves that the replica
serves what it loaded from there under that name.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

ALGORITHM = "flywheel-logprob-fingerprint/v1"
#: A fixed, ordinary prompt for a coding agent (plain text: no chat template is involved).
PROMPT = "You are a coding agent. The test in test_calc.py fails. First,"
TOKENS = 8
TOP = 5


@dataclass(frozen=True)
class Fingerprint:
    tokens: list[str]
    logprobs: list[float]
    top: list[dict[str, float]]

    def to_json(self) -> dict[str, Any]:
        return {"algorithm": ALGORITHM, "tokens": self.tokens, "logprobs": self.logprobs, "top": self.top}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Fingerprint:
        return cls(list(data["tokens"]), [float(x) for x in data["logprobs"]], [dict(t) for t in data["top"]])


def request_body(model: str) -> dict[str, Any]:
    return {"model": model, "prompt": PROMPT, "max_tokens": TOKENS, "temperature": 0, "logprobs": TOP}


def from_completion(answer: Any) -> Fingerprint | None:
    """The fingerprint in a ``/v1/completions`` answer; None when it carries no usable log-probs."""
    try:
        logprobs = answer["choices"][0]["logprobs"]
        tokens = [str(t) for t in logprobs["tokens"]]
        values = [float(v) for v in logprobs["token_logprobs"]]
        top = [{str(k): float(v) for k, v in (entry or {}).items()} for entry in logprobs["top_logprobs"]]
    except (KeyError, IndexError, TypeError, ValueError):
        return None
    if not tokens or not len(tokens) == len(values) == len(top):
        return None
    if not all(math.isfinite(v) for v in values):
        return None
    return Fingerprint(tokens, values, top)


def _margin(top: dict[str, float]) -> float:
    best = sorted(top.values(), reverse=True)
    return best[0] - best[1] if len(best) > 1 else math.inf


def compare(reference: Fingerprint, served: Fingerprint, tol: float) -> str | None:
    """None when ``served`` matches ``reference`` within ``tol``; else what differs, for a message.

    At each position the prefix so far is the same on both sides, so every log-prob there must
    agree, whichever token greedy decoding then picks; only the pick itself may differ, and only
    at a near tie (after which the prefixes part and the comparison ends).
    """
    for i, ref_token in enumerate(reference.tokens):
        if i >= len(served.tokens):
            return f"the replica stopped after {len(served.tokens)} tokens, the reference after {len(reference.tokens)}"
        token, ref_top, top = served.tokens[i], reference.top[i], served.top[i]
        common = sorted(ref_top.keys() & top.keys())
        if not common and ref_top and top:
            return f"token {i}: no token in common between the top log-probs ({list(top)} vs {list(ref_top)})"
        for alt in common:
            if abs(top[alt] - ref_top[alt]) > tol:
                return (
                    f"token {i}: log-prob of {alt!r} is {top[alt]:.4f}, reference {ref_top[alt]:.4f} "
                    f"(tolerance {tol:g})"
                )
        if token == ref_token and abs(served.logprobs[i] - reference.logprobs[i]) > tol:
            return (
                f"token {i} ({token!r}): log-prob {served.logprobs[i]:.4f}, reference "
                f"{reference.logprobs[i]:.4f} (tolerance {tol:g})"
            )
        near_tie = _margin(ref_top) <= 2 * tol
        if token != ref_token and not near_tie:
            return f"token {i}: the replica chose {token!r}, the reference {ref_token!r}"
        if near_tie:
            return None
    if len(served.tokens) > len(reference.tokens):
        return f"the replica went on after the reference's {len(reference.tokens)} tokens"
    return None
