"""The alias table in the object store: one format for the orchestrator (the writer), every gateway
replica (the readers, and the writers of live signals) and the dataset builder (feedback).

Layout
------
``aliases/<name>/<revision:010d>.json``
    One immutable revision of an alias (``AliasRevision`` as protobuf JSON). Written only with
    ``overwrite=False`` (a conditional create on both backends), so revision N exists at most once
    and a racing writer gets :class:`ObjectExistsError`; the newest revision is the alias's state.
    History is the list of revisions; nothing is ever rewritten.
``alias-stats/<name>/<revision:010d>/<replica>.json``
    A gateway replica's cumulative live signals for the canary started at that revision, one
    counter set per arm (keyed by the arm's gateway model name), overwritten by that replica only.
    Readers sum every replica's file.
``gateway/feedback/<completion id>.json``
    A caller's feedback on one answer (``POST /v1/feedback``): success, an optional score and
    comment, and the alias / revision / arm that answered when the replica knew them.

Alias names are 1 to 3 segments of ``[a-z0-9][a-z0-9._-]*`` joined by ``/``, at most 128 characters.
A name's segments never contain ``/`` or end in ``.json``, so a revision key parses back without
ambiguity (the last segment of a revision key is always ten digits and ``.json``).
"""

from __future__ import annotations

import bisect
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from google.protobuf import json_format

from flywheel.orchestrator.v1 import alias_pb2 as apb
from flywheel_common.objectstore import ObjectNotFoundError, ObjectStore

ALIAS_PREFIX = "aliases/"
STATS_PREFIX = "alias-stats/"
FEEDBACK_PREFIX = "gateway/feedback/"
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}(/[a-z0-9][a-z0-9._-]{0,62}){0,2}$")
MAX_NAME = 128
#: Prefixes no alias may start with: they are gateway routes of their own.
RESERVED_PREFIXES = ("ft/", "openai/", "anthropic/", "hosted_vllm/")
_REV_KEY = re.compile(r"^aliases/(?P<name>.+)/(?P<rev>\d{10})\.json$")
_FEEDBACK_ID = re.compile(r"^[A-Za-z0-9._:-]{1,200}$")

#: Upper bounds (ms) of the latency histogram's buckets; the last bucket is open.
LATENCY_BOUNDS_MS = (5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000, 60000)


def validate_name(name: str, reserved: Iterable[str] = ()) -> str:
    """``name`` if it is a valid alias name, else ``ValueError`` saying what is wrong."""
    if not name:
        raise ValueError("an alias name is required")
    if len(name) > MAX_NAME:
        raise ValueError(f"alias name is {len(name)} characters; at most {MAX_NAME}")
    if not NAME_RE.match(name) or name.endswith(".json"):
        raise ValueError(f"alias name {name!r} is not 1-3 segments of [a-z0-9][a-z0-9._-]* joined by '/'")
    for prefix in (*RESERVED_PREFIXES, *reserved):
        if name.startswith(prefix):
            raise ValueError(f"alias name {name!r} starts with {prefix!r}, which is a gateway route")
    return name


def revision_key(name: str, revision: int) -> str:
    return f"{ALIAS_PREFIX}{name}/{revision:010d}.json"


def parse_revision_key(key: str) -> tuple[str, int] | None:
    """(name, revision) of a revision key; None for any other key."""
    m = _REV_KEY.match(key)
    if not m or not NAME_RE.match(m["name"]):
        return None
    return m["name"], int(m["rev"])


def encode_revision(revision: apb.AliasRevision) -> bytes:
    return json_format.MessageToJson(revision, indent=1, sort_keys=True).encode()


def decode_revision(data: bytes) -> apb.AliasRevision:
    return json_format.Parse(data.decode(), apb.AliasRevision(), ignore_unknown_fields=True)


def write_revision(store: ObjectStore, name: str, revision: apb.AliasRevision) -> None:
    """Create revision ``revision.revision`` of ``name``; :class:`ObjectExistsError` if another
    writer made it first (nothing is overwritten)."""
    store.put(
        revision_key(name, revision.revision),
        encode_revision(revision),
        content_type="application/json",
        overwrite=False,
    )


def newest_keys(store: ObjectStore) -> dict[str, tuple[int, str]]:
    """name → (newest revision, its key), from one listing of ``aliases/``."""
    out: dict[str, tuple[int, str]] = {}
    for info in store.list(ALIAS_PREFIX):
        parsed = parse_revision_key(info.key)
        if parsed is None:
            continue
        name, rev = parsed
        if rev > out.get(name, (0, ""))[0]:
            out[name] = (rev, info.key)
    return out


def history(store: ObjectStore, name: str) -> list[apb.AliasRevision]:
    """Every revision of ``name``, newest first; empty when it was never set."""
    revs = []
    for info in store.list(f"{ALIAS_PREFIX}{name}/"):
        parsed = parse_revision_key(info.key)
        if parsed is None or parsed[0] != name:
            continue  # a longer alias name under this one (`a/b` under `a`)
        try:
            revs.append(decode_revision(store.get_bytes(info.key)))
        except ObjectNotFoundError:
            continue
    return sorted(revs, key=lambda r: r.revision, reverse=True)


class AliasCache:
    """The newest revision of every alias, re-read cheaply: one listing per :meth:`refresh`, and a
    revision object is read only when it is new. Used by each gateway replica."""

    def __init__(self) -> None:
        self.current: dict[str, apb.AliasRevision] = {}

    def refresh(self, store: ObjectStore) -> bool:
        """Read what changed; True when anything did."""
        keys = newest_keys(store)
        changed = False
        fresh: dict[str, apb.AliasRevision] = {}
        for name, (rev, key) in keys.items():
            known = self.current.get(name)
            if known is not None and known.revision == rev:
                fresh[name] = known
                continue
            try:
                fresh[name] = decode_revision(store.get_bytes(key))
            except (ObjectNotFoundError, ValueError, json_format.ParseError):
                if known is not None:
                    fresh[name] = known
                continue
            changed = True
        if set(fresh) != set(self.current):
            changed = True
        self.current = fresh
        return changed

    def served(self) -> dict[str, apb.AliasRevision]:
        """Aliases the gateway serves (not deleted)."""
        return {n: r for n, r in self.current.items() if r.change != apb.ALIAS_CHANGE_DELETED}


# ---------------------------------------------------------------------------------------- live signals


@dataclass
class ArmCounters:
    """One arm's cumulative counters in one gateway replica."""

    requests: int = 0
    errors: int = 0
    #: successful requests per latency bucket (``LATENCY_BOUNDS_MS`` plus one open bucket)
    latency: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BOUNDS_MS) + 1))
    feedback: int = 0
    feedback_success: int = 0

    def record(self, latency_ms: float, error: bool) -> None:
        self.requests += 1
        if error:
            self.errors += 1
        else:
            self.latency[bisect.bisect_left(LATENCY_BOUNDS_MS, latency_ms)] += 1

    def add(self, other: ArmCounters) -> None:
        self.requests += other.requests
        self.errors += other.errors
        self.latency = [a + b for a, b in zip(self.latency, other.latency, strict=True)]
        self.feedback += other.feedback
        self.feedback_success += other.feedback_success

    def p50_ms(self) -> float:
        """Median latency of the successful requests, interpolated inside its bucket."""
        total = sum(self.latency)
        if not total:
            return 0.0
        half, seen = total / 2, 0
        for i, count in enumerate(self.latency):
            if count and seen + count >= half:
                lo = LATENCY_BOUNDS_MS[i - 1] if i > 0 else 0
                hi = LATENCY_BOUNDS_MS[i] if i < len(LATENCY_BOUNDS_MS) else LATENCY_BOUNDS_MS[-1] * 2
                return lo + (hi - lo) * (half - seen) / count
            seen += count
        return float(LATENCY_BOUNDS_MS[-1])

    def to_json(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "errors": self.errors,
            "latency": self.latency,
            "feedback": self.feedback,
            "feedback_success": self.feedback_success,
        }

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> ArmCounters:
        latency = [int(x) for x in body.get("latency", [])]
        if len(latency) != len(LATENCY_BOUNDS_MS) + 1:
            latency = [0] * (len(LATENCY_BOUNDS_MS) + 1)
        return cls(
            requests=int(body.get("requests", 0)),
            errors=int(body.get("errors", 0)),
            latency=latency,
            feedback=int(body.get("feedback", 0)),
            feedback_success=int(body.get("feedback_success", 0)),
        )

    def to_proto(self, model: str) -> apb.ArmStats:
        return apb.ArmStats(
            model=model,
            requests=self.requests,
            errors=self.errors,
            error_rate=self.errors / self.requests if self.requests else 0.0,
            latency_p50_ms=self.p50_ms(),
            feedback=self.feedback,
            feedback_success=self.feedback_success,
            success_rate=self.feedback_success / self.feedback if self.feedback else 0.0,
        )


def stats_prefix(name: str, revision: int) -> str:
    return f"{STATS_PREFIX}{name}/{revision:010d}/"


def write_stats(
    store: ObjectStore, name: str, revision: int, replica: str, arms: dict[str, ArmCounters]
) -> None:
    """Overwrite this replica's counters for the canary of ``name`` started at ``revision``."""
    body = {"replica": replica, "arms": {model: c.to_json() for model, c in arms.items()}}
    store.put(
        f"{stats_prefix(name, revision)}{replica}.json",
        json.dumps(body, sort_keys=True).encode(),
        content_type="application/json",
        overwrite=True,
    )


def read_stats(store: ObjectStore, name: str, revision: int) -> dict[str, ArmCounters]:
    """Every replica's counters for that canary, summed per arm model."""
    total: dict[str, ArmCounters] = {}
    for info in store.list(stats_prefix(name, revision)):
        try:
            body = json.loads(store.get_bytes(info.key))
        except (ObjectNotFoundError, ValueError):
            continue
        for model, counters in (body.get("arms") or {}).items():
            total.setdefault(model, ArmCounters()).add(ArmCounters.from_json(counters))
    return total


# ------------------------------------------------------------------------------------------- feedback


def feedback_key(completion_id: str) -> str:
    if not _FEEDBACK_ID.match(completion_id):
        raise ValueError(f"completion id {completion_id[:64]!r} is not 1-200 characters of [A-Za-z0-9._:-]")
    return f"{FEEDBACK_PREFIX}{completion_id}.json"


def write_feedback(store: ObjectStore, completion_id: str, body: dict[str, Any]) -> None:
    """Keep a caller's feedback on one answer (the last report wins)."""
    store.put(
        feedback_key(completion_id),
        json.dumps({**body, "id": completion_id}, sort_keys=True).encode(),
        content_type="application/json",
        overwrite=True,
    )


def read_feedback(store: ObjectStore, completion_id: str) -> dict[str, Any] | None:
    try:
        body: dict[str, Any] = json.loads(store.get_bytes(feedback_key(completion_id)))
    except (ObjectNotFoundError, ValueError):
        return None
    return body
