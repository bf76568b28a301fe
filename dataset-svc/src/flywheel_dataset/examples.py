"""The plain domain objects of a build: an example and the counters of why things were dropped."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from flywheel_dataset.messages import Message


@dataclass(slots=True)
class Example:
    """One training example, before it is split, de-duplicated and written in some format.

    SFT examples have ``messages`` (the conversation, ending with the assistant turn to learn)
    and, for instruction-style recipes, ``instruction`` / ``input`` (used as-is by the Alpaca
    format). Preference examples have ``messages`` as the prompt and one assistant message in
    each of ``chosen`` and ``rejected``.
    """

    trajectory_id: str
    suite: str
    task_id: str
    messages: list[Message]
    tools: list[dict[str, Any]] | None = None
    chosen: Message | None = None
    rejected: Message | None = None
    instruction: str | None = None
    input: str | None = None
    #: What the example is, e.g. ``step``, ``positive``, ``reflection``, ``draft``; for stats.
    pair_type: str = ""
    #: Text for near-duplicate detection (bounded size; see the recipe); None = whole example.
    similarity_text: str | None = None
    #: RL recipes: the record as written (token ids, advantages), and its length in tokens.
    record: dict[str, Any] | None = None
    token_count: int = 0

    @property
    def task_key(self) -> tuple[str, str]:
        return (self.suite, self.task_id)

    @property
    def is_preference(self) -> bool:
        return self.chosen is not None


@dataclass
class Counts:
    """Why trajectories or examples were dropped, and what was read, keyed by reason name."""

    filter_reasons: Counter[str] = field(default_factory=Counter)
    failure_categories: Counter[str] = field(default_factory=Counter)
    pair_types: Counter[str] = field(default_factory=Counter)
    #: RL recipes: what they read and kept (``rl.RlTally``), for the manifest's ``rl_stats``.
    rl: Any = None

    def drop(self, reason: str, n: int = 1) -> None:
        self.filter_reasons[reason] += n
