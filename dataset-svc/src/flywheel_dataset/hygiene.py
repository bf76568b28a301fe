"""Split by task, exact and near-duplicate removal, decontamination.

Near duplicates are found with MinHash + locality-sensitive hashing over word 5-grams. The
usual library (datasketch) hashes every shingle once per permutation in Python; here all
permutations of all shingles of an example are one numpy expression, which is what keeps a
million-example build affordable, and only the band keys (not the signatures) are kept, so
memory grows by a few dozen bytes per example.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Sequence

import numpy as np
import xxhash

from flywheel.common.v1 import common_pb2
from flywheel.dataset.v1 import dataset_pb2 as dpb
from flywheel_dataset.messages import Message, words

SHINGLE_WORDS = 5
NUM_PERMUTATIONS = 128


def split_of(seed: str, suite: str, task_id: str, train: float, validation: float) -> dpb.DatasetSplit:
    """The split of a task: a stable hash of (seed, suite, task id) mapped to [0, 1)."""
    digest = hashlib.sha256(f"{seed}\x00{suite}\x00{task_id}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2**64
    if u < train:
        return dpb.DATASET_SPLIT_TRAIN
    if u < train + validation:
        return dpb.DATASET_SPLIT_VALIDATION
    return dpb.DATASET_SPLIT_TEST


def _bands_for(threshold: float) -> tuple[int, int]:
    """(bands, rows) with bands*rows = NUM_PERMUTATIONS whose S-curve knee (1/b)^(1/r) is closest
    to ``threshold`` from below. A pair of Jaccard similarity s is flagged with probability
    1 - (1 - s^r)^b: for the default 0.9 (r=16, b=8) that is 0.81 at s=0.9, 0.99 at 0.95, 0.2 at
    0.8 and 0.03 at 0.7."""
    best = (NUM_PERMUTATIONS, 1)
    best_gap = 2.0
    for rows in (1, 2, 4, 8, 16, 32, 64):
        bands = NUM_PERMUTATIONS // rows
        knee = (1 / bands) ** (1 / rows)
        gap = threshold - knee
        if 0 <= gap < best_gap:
            best, best_gap = (bands, rows), gap
    return best


class Deduplicator:
    """Keeps the first of every group of exact or near-duplicate examples (in build order)."""

    def __init__(self, keep_exact: bool, threshold: float) -> None:
        self.keep_exact = keep_exact
        self.threshold = threshold
        self.near_enabled = threshold < 1.0
        self._exact: set[bytes] = set()
        self._bands: set[int] = set()
        self.bands, self.rows = _bands_for(threshold)
        rng = np.random.default_rng(0x5EED)
        # Odd multipliers make (a*x + b) mod 2^64 a permutation of 64-bit values.
        self._a = rng.integers(1, 2**63, NUM_PERMUTATIONS, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
        self._b = rng.integers(0, 2**63, NUM_PERMUTATIONS, dtype=np.uint64)
        self.exact_removed = 0
        self.near_removed = 0

    def check(self, exact_key: bytes, similarity_text: str) -> str | None:
        """None if the example is new (and remember it), else ``exact`` or ``near``."""
        if not self.keep_exact:
            if exact_key in self._exact:
                self.exact_removed += 1
                return "exact"
            self._exact.add(exact_key)
        if self.near_enabled:
            keys = self._band_keys(similarity_text)
            if keys and any(k in self._bands for k in keys):
                self.near_removed += 1
                return "near"
            self._bands.update(keys)
        return None

    def _band_keys(self, text: str) -> list[int]:
        tokens = words(text)
        if len(tokens) < SHINGLE_WORDS:
            shingles = {" ".join(tokens)} if tokens else set()
        else:
            shingles = {
                " ".join(tokens[i : i + SHINGLE_WORDS]) for i in range(len(tokens) - SHINGLE_WORDS + 1)
            }
        if not shingles:
            return []
        hashes = np.fromiter(
            (xxhash.xxh64_intdigest(s.encode()) for s in shingles), dtype=np.uint64, count=len(shingles)
        )
        with np.errstate(over="ignore"):
            signature = (hashes[:, None] * self._a[None, :] + self._b[None, :]).min(axis=0)
        rows = signature.reshape(self.bands, self.rows)
        return [
            (band << 56) ^ (xxhash.xxh64_intdigest(rows[band].tobytes()) & ((1 << 56) - 1))
            for band in range(self.bands)
        ]


def ngrams(text: str, n: int) -> set[int]:
    """Hashed word n-grams of a text (texts shorter than n words give their whole word list)."""
    tokens = words(text)
    if len(tokens) < n:
        return {xxhash.xxh64_intdigest(" ".join(tokens).encode())} if tokens else set()
    return {xxhash.xxh64_intdigest(" ".join(tokens[i : i + n]).encode()) for i in range(len(tokens) - n + 1)}


class Decontaminator:
    """Evaluation tasks that must not leak into a dataset: their ids and their problem n-grams."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.task_keys: set[tuple[str, str]] = set()
        self.suites: set[str] = set()
        self._grams: set[int] = set()
        self.by_task_id = 0
        self.by_content = 0
        # Verdicts per message object of the current trajectory: step-level examples share
        # their context messages, so each message is scanned once. The message is kept with its
        # verdict so that its id() cannot be reused while the entry lives.
        self._memo: dict[int, tuple[object, bool]] = {}

    def add_task(self, suite: str, task_id: str, problem: str) -> None:
        self.task_keys.add((suite, task_id))
        if len(words(problem)) >= self.n:
            self._grams |= ngrams(problem, self.n)

    @property
    def active(self) -> bool:
        return bool(self.task_keys or self.suites)

    def is_test_task(self, suite: str, task_id: str, split: common_pb2.TaskSplit) -> bool:
        return (suite, task_id) in self.task_keys or (
            suite in self.suites and split == common_pb2.TASK_SPLIT_TEST
        )

    def new_trajectory(self) -> None:
        self._memo.clear()

    def overlaps(self, messages: Sequence[Message]) -> bool:
        """Whether any message's text shares an n-gram with an evaluation problem."""
        if not self._grams:
            return False
        for message in messages:
            entry = self._memo.get(id(message))
            if entry is None:
                verdict = not self._grams.isdisjoint(ngrams(message.get("content") or "", self.n))
                self._memo[id(message)] = (message, verdict)
            else:
                verdict = entry[1]
            if verdict:
                return True
        return False


def exact_key(line: bytes) -> bytes:
    return hashlib.blake2b(line, digest_size=16).digest()


def pack_ids(ids: list[str]) -> bytes:
    return b"".join(struct.pack(">I", len(i)) + i.encode() for i in ids)
