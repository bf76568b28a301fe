"""Captured gateway traffic as a dataset source: validation, resolution, feedback and lineage.

A build's source is the union of its ``run_ids`` or ``filter`` (the base query, when set) and
every ``captured_traffic`` entry, each trajectory read once (by id, first source wins).

An entry is resolved in two steps. The trajectory store does what its filter can: teacher kind
CAPTURED, label ``gateway_alias`` equal to the alias and the store's ``create_time`` (when the
gateway stored the call) in the entry's range. The builder then checks what the store cannot:
the caller's key alias (label ``gateway_key_alias``), the alias revision that answered (label
``alias_revision``, a decimal; a call without a readable one fails a ``min_alias_revision``) and
the caller's feedback, found by the answer's id (label ``completion_id``) under
``gateway/feedback/`` in the object store. No label or no record means no feedback.

Every CAPTURED trajectory the build reads, whichever source matched it, is then normalised in
the builder's own copy (the stored one never changes), so that recipes can use it:

- its feedback verdict goes into the label ``feedback`` (``success``, ``failure`` or ``none``);
- a call without an outcome of its own takes its feedback as the outcome: success is resolved,
  failure is unresolved with detail ``caller_reported_failure``, none is unresolved with detail
  ``no_feedback`` (these names show in the manifest's ``failure_categories``);
- an unset tool protocol becomes NATIVE: a gateway call is an OpenAI chat request, so its tool
  calls are native ones.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from google.protobuf import json_format

from flywheel.common.v1 import common_pb2
from flywheel.dataset.v1 import dataset_pb2 as dpb
from flywheel.trajectory.v1 import trajectory_pb2 as tpb
from flywheel_common.aliases import read_feedback, validate_name
from flywheel_common.errors import InvalidArgument, check_enum, check_timestamp
from flywheel_common.objectstore import ObjectStore

#: Labels the gateway puts on a captured call.
ALIAS_LABEL = "gateway_alias"
KEY_ALIAS_LABEL = "gateway_key_alias"
REVISION_LABEL = "alias_revision"
COMPLETION_LABEL = "completion_id"
#: Label the builder sets on its copy of a captured call: the feedback verdict.
FEEDBACK_LABEL = "feedback"

SUCCESS, FAILURE, NONE = "success", "failure", "none"
FAILURE_DETAIL = {FAILURE: "caller_reported_failure", NONE: "no_feedback"}

#: Key aliases as the gateway stores them in labels: lower case, ``[a-z0-9_.-]``, at most 256.
_KEY_ALIAS = re.compile(r"^[a-z0-9_.-]{1,256}$")

Export = Callable[[tpb.TrajectoryFilter], Iterator[tpb.Trajectory]]


# ------------------------------------------------------------------------------------ validation


def validate_source(source: dpb.DatasetSource, where: str = "build.source") -> None:
    """InvalidArgument naming the field unless the source says what to read and says it once."""
    has_filter = source.HasField("filter")
    if not source.run_ids and not has_filter and not source.captured_traffic:
        raise InvalidArgument(
            where, "empty: set run_ids or filter, and/or captured_traffic, to say which trajectories to read"
        )
    if source.run_ids and has_filter:
        raise InvalidArgument(where, "set run_ids or filter, not both (captured_traffic may go with either)")
    for i, entry in enumerate(source.captured_traffic):
        validate_entry(entry, f"{where}.captured_traffic[{i}]")


def validate_entry(entry: dpb.CapturedTraffic, where: str) -> None:
    try:
        validate_name(entry.alias)
    except ValueError as err:
        raise InvalidArgument(f"{where}.alias", str(err)) from None
    rng = entry.time_range
    for name in ("start_time", "end_time"):
        if rng.HasField(name):
            check_timestamp(f"{where}.time_range.{name}", getattr(rng, name))
    if (
        rng.HasField("start_time")
        and rng.HasField("end_time")
        and rng.start_time.ToNanoseconds() >= rng.end_time.ToNanoseconds()
    ):
        raise InvalidArgument(
            f"{where}.time_range",
            f"start_time {rng.start_time.ToJsonString()} must be before end_time {rng.end_time.ToJsonString()}",
        )
    for i, key_alias in enumerate(entry.key_aliases):
        if not _KEY_ALIAS.match(key_alias):
            raise InvalidArgument(
                f"{where}.key_aliases[{i}]",
                f"{key_alias[:64]!r} is not a key alias as captured: 1-256 characters of [a-z0-9_.-]",
            )
    check_enum(f"{where}.feedback", entry.feedback, dpb.FeedbackFilter)
    if entry.min_alias_revision < 0:
        raise InvalidArgument(f"{where}.min_alias_revision", f"must be >= 0, got {entry.min_alias_revision}")


# ------------------------------------------------------------------------------------ resolution


def base_query(source: dpb.DatasetSource) -> tpb.TrajectoryFilter | None:
    """The store query of ``run_ids`` or ``filter``; None when the source has neither."""
    if source.run_ids:
        return tpb.TrajectoryFilter(run_ids=list(source.run_ids))
    if source.HasField("filter"):
        return source.filter
    return None


def captured_query(entry: dpb.CapturedTraffic) -> tpb.TrajectoryFilter:
    """What the store can filter of one entry; :func:`skip_reason` checks the rest."""
    query = tpb.TrajectoryFilter(teacher_kinds=[tpb.TEACHER_KIND_CAPTURED], labels={ALIAS_LABEL: entry.alias})
    if entry.HasField("time_range"):
        query.create_time_range.CopyFrom(entry.time_range)
    return query


class FeedbackReader:
    """A captured call's feedback verdict, read once per completion id from the object store."""

    def __init__(self, store: ObjectStore) -> None:
        self._store = store
        self._cache: dict[str, str] = {}

    def verdict(self, trajectory: tpb.Trajectory) -> str:
        completion_id = trajectory.labels.get(COMPLETION_LABEL, "")
        if not completion_id:
            return NONE
        known = self._cache.get(completion_id)
        if known is None:
            body = read_feedback(self._store, completion_id)
            success = body.get("success") if body else None
            known = NONE if not isinstance(success, bool) else SUCCESS if success else FAILURE
            self._cache[completion_id] = known
        return known


def feedback_passes(wanted: int, verdict: str) -> bool:
    if wanted == dpb.FEEDBACK_FILTER_SUCCESS:
        return verdict == SUCCESS
    if wanted == dpb.FEEDBACK_FILTER_FAILURE:
        return verdict == FAILURE
    if wanted == dpb.FEEDBACK_FILTER_ANY_FEEDBACK:
        return verdict != NONE
    if wanted == dpb.FEEDBACK_FILTER_NOT_FAILED:
        return verdict != FAILURE
    return True


def skip_reason(entry: dpb.CapturedTraffic, trajectory: tpb.Trajectory, verdict: str) -> str | None:
    """Why a trajectory the store returned for ``entry`` is not selected; None when it is."""
    labels = trajectory.labels
    if entry.key_aliases and labels.get(KEY_ALIAS_LABEL, "") not in entry.key_aliases:
        return "key_alias"
    if entry.min_alias_revision > 0:
        try:
            revision = int(labels.get(REVISION_LABEL, ""))
        except ValueError:
            return "alias_revision"
        if revision < entry.min_alias_revision:
            return "alias_revision"
    if not feedback_passes(entry.feedback, verdict):
        return "feedback"
    return None


def normalise(trajectory: tpb.Trajectory, verdict: str) -> None:
    """Make the builder's copy of a captured call usable by recipes (see the module docstring)."""
    trajectory.labels[FEEDBACK_LABEL] = verdict
    outcome = trajectory.outcome
    if not (outcome.resolved or outcome.failure_category or outcome.failure_detail or outcome.tests_total):
        outcome.resolved = verdict == SUCCESS
        outcome.failure_detail = FAILURE_DETAIL.get(verdict, "")
    if trajectory.tool_protocol == common_pb2.TOOL_PROTOCOL_UNSPECIFIED:
        trajectory.tool_protocol = common_pb2.TOOL_PROTOCOL_NATIVE


def is_captured(trajectory: tpb.Trajectory) -> bool:
    return trajectory.teacher_kind == tpb.TEACHER_KIND_CAPTURED


def feedback_of(trajectory: tpb.Trajectory) -> str:
    """The verdict :func:`normalise` recorded; ``none`` for a trajectory it never saw."""
    return trajectory.labels.get(FEEDBACK_LABEL, NONE)


@dataclass
class EntryTally:
    """What one captured_traffic entry matched."""

    matched: int = 0  #: selected by the entry (also those another source had already read)
    contributed: int = 0  #: selected and not read from an earlier source
    skipped: Counter[str] = field(default_factory=Counter)  #: returned by the store, then filtered out


class SourceReader:
    """The union of a source's queries, each trajectory once, captured calls normalised.

    Iterate it once; afterwards ``lineage()`` says what each source contributed and ``verdicts``
    holds the feedback verdict of every captured call read (part of the dataset's identity,
    since feedback can arrive after the call was stored).
    """

    def __init__(self, source: dpb.DatasetSource, export: Export, feedback: FeedbackReader) -> None:
        self.source = source
        self._export = export
        self._feedback = feedback
        self._seen: set[str] = set()
        self.base_count: int | None = None
        self.entries = [EntryTally() for _ in source.captured_traffic]
        self.verdicts: dict[str, str] = {}

    def __iter__(self) -> Iterator[tpb.Trajectory]:
        query = base_query(self.source)
        if query is not None:
            self.base_count = 0
            for trajectory in self._export(query):
                if trajectory.id in self._seen:
                    continue
                self.base_count += 1
                yield self._admit(trajectory, None)
        for entry, tally in zip(self.source.captured_traffic, self.entries, strict=True):
            for trajectory in self._export(captured_query(entry)):
                verdict = self._feedback.verdict(trajectory)
                reason = skip_reason(entry, trajectory, verdict)
                if reason is not None:
                    tally.skipped[reason] += 1
                    continue
                tally.matched += 1
                if trajectory.id in self._seen:
                    continue
                tally.contributed += 1
                yield self._admit(trajectory, verdict)

    def _admit(self, trajectory: tpb.Trajectory, verdict: str | None) -> tpb.Trajectory:
        self._seen.add(trajectory.id)
        if is_captured(trajectory):
            if verdict is None:
                verdict = self._feedback.verdict(trajectory)
            self.verdicts[trajectory.id] = verdict
            normalise(trajectory, verdict)
        return trajectory

    def lineage(self) -> dict[str, Any]:
        """The manifest's ``source_lineage``: trajectories per source and captured feedback."""
        out: dict[str, Any] = {"trajectories": len(self._seen)}
        if self.base_count is not None:
            key = "run_ids" if self.source.run_ids else "filter"
            out[key] = {"trajectories": self.base_count}
        if self.entries:
            rows = []
            for entry, tally in zip(self.source.captured_traffic, self.entries, strict=True):
                row = json_format.MessageToDict(
                    entry, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
                )
                row.update(
                    matched=tally.matched,
                    contributed=tally.contributed,
                    skipped=dict(sorted(tally.skipped.items())),
                )
                rows.append(row)
            out["captured_traffic"] = rows
        if self.verdicts:
            out["captured_feedback"] = dict(sorted(Counter(self.verdicts.values()).items()))
        return out
