"""Following the rows of one ``generate()`` call token by token: stops, streaming, ids, log-probs.

One row is one choice of one request; a call may hold the rows of several requests (static
batching, see ``engine.py``), each with its own ``max_tokens``, stop strings and log-prob wishes.

Written here rather than using transformers' ``stop_strings`` because the same text-level check
has to (1) cut the stop string out of the answer, (2) hold back streamed text that might be the
start of a stop string, and (3) end each row on its own; it also ends a row whose client went away.

Token ids are the sampled ids exactly as ``generate`` chose them, including an end-of-sequence
token and the tokens of a stop string that ended the answer (as vLLM reports them), so
``decode(token_ids)`` equals the text unless a stop string or a special token was cut from it.
Log-probs are vLLM's default ``raw_logprobs``: the log-softmax of the model's own logits for the
position, before temperature, top-k/top-p or repetition penalty — what a forward pass over
prompt + completion gives, so a trainer can re-score them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass
class TokenLogprob:
    token: str  #: the token's text (tokenizer.decode of the one id)
    logprob: float
    top: list[tuple[str, float]] = field(default_factory=list)  #: the most likely tokens, best first


@dataclass
class RowSpec:
    """What one row needs besides its prompt."""

    emit: Callable[[int, str, str | None, str | None, list[int], list[TokenLogprob] | None], None]
    index: int  #: choice index within its request
    max_tokens: int
    stops: list[str]
    implicit: list[str]  #: stop strings the request did not ask for (stop_reason stays null)
    logprobs: int | None  #: None: no log-probs; k: the chosen token's and the k best
    want_ids: bool
    cancelled: Callable[[], bool]


class Rows:
    """The rows of one generate() call."""

    def __init__(self, tokenizer: Any, specs: list[RowSpec], eos_ids: set[int]) -> None:
        self.tokenizer = tokenizer
        self.specs = specs
        self.eos_ids = eos_ids
        n = len(specs)
        self.stops = [s.stops + [x for x in s.implicit if x not in s.stops] for s in specs]
        self.implicit = [set(s.implicit) - set(s.stops) for s in specs]
        self.tokens: list[list[int]] = [[] for _ in range(n)]
        self.emitted = [0] * n
        self.finished: list[str | None] = [None] * n
        self.pending_ids: list[list[int]] = [[] for _ in range(n)]
        self.pending_lp: list[list[TokenLogprob]] = [[] for _ in range(n)]
        self.logprobs_wanted = any(s.logprobs is not None for s in specs)
        self.last_logprobs: Any = None  #: [rows, vocab] log-softmax of the last step, set by the hook

    # ------------------------------------------------------------------------------------ per step

    def step(self, last_tokens: list[int], closing: bool) -> list[bool]:
        for i, token in enumerate(last_tokens):
            if self.finished[i] is not None:
                continue
            if self.specs[i].cancelled():
                self.finished[i] = "abort"
                continue
            self.tokens[i].append(token)
            self.pending_ids[i].append(token)
            if self.specs[i].logprobs is not None:
                self.pending_lp[i].append(self._logprob(i, token))
            self._advance(i, eos=token in self.eos_ids)
        if closing:
            return [True] * len(self.finished)
        return [reason is not None for reason in self.finished]

    def _logprob(self, i: int, token: int) -> TokenLogprob:
        import torch

        row = self.last_logprobs[i]
        k = self.specs[i].logprobs or 0
        top: list[tuple[str, float]] = []
        if k:
            values, ids = torch.topk(row, k)
            top = [(self._text(int(t)), float(v)) for v, t in zip(values.tolist(), ids.tolist(), strict=True)]
        return TokenLogprob(self._text(token), float(row[token]), top)

    def _text(self, token: int) -> str:
        return str(self.tokenizer.decode([token]))

    def _advance(self, i: int, eos: bool = False, force: str | None = None) -> None:
        ids = self.tokens[i][:-1] if eos else self.tokens[i]
        text = self.tokenizer.decode(ids, skip_special_tokens=True)
        finish = stop_reason = None
        if eos:
            finish = "stop"
        else:
            cut, hit = len(text) + 1, None
            for stop in self.stops[i]:
                at = text.find(stop)
                if at != -1 and at < cut:
                    cut, hit = at, stop
            if hit is not None:
                text, finish = text[:cut], "stop"
                stop_reason = None if hit in self.implicit[i] else hit
            elif len(self.tokens[i]) >= self.specs[i].max_tokens or force:
                finish = force or "length"
        safe = len(text) if finish else len(text) - self._hold_back(i, text)
        delta = text[self.emitted[i] : safe] if safe > self.emitted[i] else ""
        self.emitted[i] = max(self.emitted[i], safe)
        if finish:
            self.finished[i] = finish
        spec = self.specs[i]
        # Ordinary requests get an event only when there is text to send; a request that wants ids or
        # log-probs also gets one per token, so that streamed ids arrive as they are sampled.
        if delta or finish or (self.pending_ids[i] and (spec.want_ids or spec.logprobs is not None)):
            ids_out, self.pending_ids[i] = self.pending_ids[i], []
            lps = self.pending_lp[i] if spec.logprobs is not None else None
            self.pending_lp[i] = []
            spec.emit(spec.index, delta, finish, stop_reason, ids_out, lps)

    def _hold_back(self, i: int, text: str) -> int:
        """Characters at the end that must wait: an unfinished UTF-8 character or a stop's prefix."""
        held = len(text) - len(text.rstrip("\ufffd"))
        for stop in self.stops[i]:
            for size in range(min(len(stop) - 1, len(text)), 0, -1):
                if text.endswith(stop[:size]):
                    held = max(held, size)
                    break
        return held

    def finish_all(self, closing: bool) -> None:
        """Rows that generate() left unfinished end as ``length`` (their budget ran out)."""
        if closing:
            return
        for i, reason in enumerate(self.finished):
            if reason is None and not self.specs[i].cancelled():
                self._advance(i, force="length")

    def done(self, i: int) -> bool:
        return self.finished[i] is not None


class RowsCriteria:
    """Adapts :class:`Rows` to transformers' StoppingCriteria protocol (one bool per row)."""

    def __init__(self, rows: Rows, closing: Callable[[], bool]) -> None:
        self.rows = rows
        self.closing = closing

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        import torch

        done = self.rows.step(input_ids[:, -1].tolist(), self.closing())
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


class LogitsCapture:
    """A forward hook on the model that keeps the last position's log-softmax for :class:`Rows`.

    generate() calls the model (prefill, then one step per token) before choosing each token and
    then calls the stopping criteria; the hook runs in between, on the raw logits.
    """

    def __init__(self, rows: Rows) -> None:
        self.rows = rows

    def __call__(self, module: Any, args: Any, kwargs: Any, output: Any) -> None:
        import torch

        logits = output.logits[:, -1, :]
        self.rows.last_logprobs = torch.log_softmax(logits.float(), dim=-1)
