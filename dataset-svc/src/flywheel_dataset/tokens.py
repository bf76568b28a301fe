"""Counting tokens with the target model's tokenizer, or an announced approximation.

The tokenizer is the `tokenizer.json` of the base model's folder in the object store
(`base-models/<name>/tokenizer.json`, as the trainer keeps it), loaded with the `tokenizers`
library (the Rust tokenizer transformers itself uses, without importing transformers). When the
folder has none, tokens are approximated as ceil(UTF-8 bytes / 4) and the manifest says so.
"""

from __future__ import annotations

import logging
import math
from array import array
from pathlib import Path
from typing import TYPE_CHECKING

from flywheel_common.objectstore import ObjectStore

if TYPE_CHECKING:  # imported where a tokenizer is loaded, not at start-up
    from tokenizers import Tokenizer

log = logging.getLogger("flywheel.dataset.tokens")

APPROXIMATE_NAME = "approximate: ceil(UTF-8 bytes / 4)"


class TokenCounter:
    def __init__(self, tokenizer: Tokenizer | None, name: str) -> None:
        self._tokenizer = tokenizer
        #: What the manifest names as the tokenizer.
        self.name = name

    @property
    def exact(self) -> bool:
        return self._tokenizer is not None

    def count(self, text: str) -> int:
        if self._tokenizer is None:
            return math.ceil(len(text.encode("utf-8")) / 4)
        return len(self._tokenizer.encode(text, add_special_tokens=False).ids)


def load_counter(store: ObjectStore | None, base_model: str, workdir: Path) -> TokenCounter:
    """The base model's real tokenizer if the object store has it, else the approximation."""
    if store is not None and base_model:
        key = f"base-models/{base_model}/tokenizer.json"
        try:
            if store.exists(key):
                from tokenizers import Tokenizer

                path = workdir / "tokenizer.json"
                path.write_bytes(store.get_bytes(key))
                return TokenCounter(Tokenizer.from_file(str(path)), base_model)
        except Exception as err:  # a broken tokenizer must not fail the build; the manifest says it
            log.warning("cannot load the tokenizer of %s (%s); using the approximation", base_model, err)
    return TokenCounter(None, f"{APPROXIMATE_NAME} (no tokenizer.json for {base_model or 'no base model'})")


class LengthStats:
    """Token lengths of every example (4 bytes each), for mean / p95 / max."""

    def __init__(self) -> None:
        self.lengths = array("I")
        self.train_tokens = 0

    def add(self, tokens: int, train: bool) -> None:
        self.lengths.append(tokens)
        if train:
            self.train_tokens += tokens

    def summary(self, max_seq_length: int) -> dict[str, float | int]:
        if not self.lengths:
            return {"mean": 0.0, "p95": 0, "max": 0, "over_max_length": 0}
        ordered = sorted(self.lengths)
        p95 = ordered[min(len(ordered) - 1, math.ceil(0.95 * len(ordered)) - 1)]
        return {
            "mean": sum(ordered) / len(ordered),
            "p95": p95,
            "max": ordered[-1],
            "over_max_length": sum(1 for n in ordered if n > max_seq_length),
        }
