"""Served aliases: the writer of the alias table, and the canary controller.

The table's format is ``flywheel_common.aliases`` (one immutable object per revision, created
only if absent). This module is its only writer: ``SetAlias`` / ``RollbackAlias`` /
``DeleteAlias``, the PROMOTION stage of loops, and the canary controller. Every write is
read-newest → build the next revision → conditional create; a writer that loses a race (another
orchestrator, or this one's controller against an RPC) reads again and rebuilds, so a change is
never lost and revision N is never written twice. What a revision says is decided from the
revision it follows, so the controller's decision on a canary the user has meanwhile rolled back
is simply not made.

The canary controller runs in every orchestrator (``alias_canary_check_s``): for every alias whose
newest revision runs a canary it sums the gateway replicas' live signals of that canary and,
when :func:`judge_canary` decides, writes CANARY_PROMOTED or CANARY_ROLLED_BACK with the reason
and both arms' signals. A crash (even SIGKILL) at any point leaves the table at one revision or
the next, never between: the next sweep, in this process or another, picks the canary up again.

Skill and adapter pairs. A target may name a skill besides its model (``AliasTarget.skill_id``):
a skill on a base model, an adapter alone, or the pair a joint loop (``joint.py``) promotes. The
orchestrator applies it: a run or evaluation whose model is the alias and that names no skill of
its own plays with the target's skill (``served_skill``; during a canary too, as the arm is drawn
per request at the gateway). The gateway does not inject it into other callers' requests. Why: a
skill is an addition to the *agent's* system prompt, which the orchestrator builds per protocol
(``protocol.py``), and the gateway cannot tell an agent's prompt from any other caller's, nor
where in a foreign prompt the playbook belongs; rewriting callers' prompts behind their backs
would also break what traffic capture records as the prompt. External callers read the pair from
the alias (``GetAlias``, ``flywheel alias show``) and send the skill themselves.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Callable
from datetime import UTC, datetime

from google.protobuf.timestamp_pb2 import Timestamp

from flywheel.events.v1 import events_pb2
from flywheel.orchestrator.v1 import alias_pb2 as apb
from flywheel.trajectory.v1 import trajectory_pb2 as tpb
from flywheel_common import aliases as table
from flywheel_common.errors import Aborted, FailedPrecondition, InvalidArgument, NotFound, Unavailable, shown
from flywheel_common.events import EventBus
from flywheel_common.objectstore import ObjectExistsError, ObjectStore
from flywheel_orchestrator import skills as skill_docs
from flywheel_orchestrator.model import ADAPTER_MODEL, ModelClient
from flywheel_orchestrator.runs import PRODUCER

log = logging.getLogger("flywheel.orchestrator.aliases")

# Defaults of a CanaryPolicy's unset fields (documented in alias.proto).
FRACTION = 0.1
MIN_REQUESTS = 20
MAX_DURATION_S = 600.0
MAX_ERROR_RATE_INCREASE = 0.05
MAX_LATENCY_RATIO = 3.0
MAX_SUCCESS_DROP = 0.1
MIN_FEEDBACK = 10
#: Revisions that end a canary started before them.
ENDS_CANARY = (
    apb.ALIAS_CHANGE_SET,
    apb.ALIAS_CHANGE_CANARY_PROMOTED,
    apb.ALIAS_CHANGE_CANARY_ROLLED_BACK,
    apb.ALIAS_CHANGE_ROLLBACK,
    apb.ALIAS_CHANGE_DELETED,
)
WRITE_ATTEMPTS = 8


def stamp(when: datetime | None = None) -> Timestamp:
    ts = Timestamp()
    ts.FromDatetime(when or datetime.now(UTC))
    return ts


def default_alias(adapter_name: str) -> str:
    """The alias a loop promotes into when it names none."""
    return f"agent/{adapter_name}"


def validate_policy(policy: apb.CanaryPolicy, field: str) -> None:
    """INVALID_ARGUMENT naming the field of a canary policy that is out of range."""
    if not (0 <= policy.fraction < 1) or math.isnan(policy.fraction):
        raise InvalidArgument(f"{field}.fraction", "must be in [0, 1) (0 means 0.1)")
    if policy.min_requests < 0:
        raise InvalidArgument(f"{field}.min_requests", "must be >= 0 (0 means 20)")
    if policy.HasField("max_duration") and (
        policy.max_duration.seconds < 0 or policy.max_duration.ToTimedelta().total_seconds() <= 0
    ):
        raise InvalidArgument(f"{field}.max_duration", "must be positive when set")
    if policy.HasField("max_error_rate_increase") and not 0 <= policy.max_error_rate_increase <= 1:
        raise InvalidArgument(f"{field}.max_error_rate_increase", "must be in [0, 1]")
    if policy.max_latency_ratio and not (
        policy.max_latency_ratio >= 1 and math.isfinite(policy.max_latency_ratio)
    ):
        raise InvalidArgument(f"{field}.max_latency_ratio", "must be >= 1 (0 means 3.0)")
    if policy.HasField("max_success_drop") and not 0 <= policy.max_success_drop <= 1:
        raise InvalidArgument(f"{field}.max_success_drop", "must be in [0, 1]")
    if policy.min_feedback < 0:
        raise InvalidArgument(f"{field}.min_feedback", "must be >= 0 (0 means 10)")


def judge_canary(
    policy: apb.CanaryPolicy,
    elapsed_s: float,
    incumbent: table.ArmCounters,
    candidate: table.ArmCounters,
) -> tuple[bool, str] | None:
    """(promote?, reason) once the canary can be decided; None while it must go on.

    Decided when the candidate has answered ``min_requests`` requests (every check below), or
    when ``max_duration`` has passed without that many (rolled back: not enough evidence)."""
    min_requests = policy.min_requests or MIN_REQUESTS
    max_s = (
        policy.max_duration.ToTimedelta().total_seconds()
        if policy.HasField("max_duration")
        else MAX_DURATION_S
    )
    if candidate.requests < min_requests:
        if elapsed_s >= max_s:
            return False, (
                f"the candidate answered {candidate.requests} of the {min_requests} requests needed "
                f"within {max_s:g} s: not enough evidence to promote"
            )
        return None
    inc, cand = incumbent.to_proto("incumbent"), candidate.to_proto("candidate")
    allowed_err = (
        policy.max_error_rate_increase
        if policy.HasField("max_error_rate_increase")
        else MAX_ERROR_RATE_INCREASE
    )
    lines = []
    err_delta = cand.error_rate - inc.error_rate
    if err_delta > allowed_err + 1e-12:
        return False, (
            f"error rate {cand.error_rate:.3f} (candidate, {cand.errors}/{cand.requests}) vs "
            f"{inc.error_rate:.3f} (incumbent, {inc.errors}/{inc.requests}): +{err_delta:.3f} > allowed "
            f"{allowed_err:.3f}"
        )
    lines.append(f"error rate {cand.error_rate:.3f} vs {inc.error_rate:.3f}")
    ratio_allowed = policy.max_latency_ratio or MAX_LATENCY_RATIO
    if inc.latency_p50_ms > 0 and cand.latency_p50_ms > 0:
        ratio = cand.latency_p50_ms / inc.latency_p50_ms
        if ratio > ratio_allowed:
            return False, (
                f"median latency {cand.latency_p50_ms:.0f} ms (candidate) vs {inc.latency_p50_ms:.0f} ms "
                f"(incumbent): {ratio:.2f}x > allowed {ratio_allowed:.2f}x"
            )
        lines.append(f"median latency {ratio:.2f}x")
    min_feedback = policy.min_feedback or MIN_FEEDBACK
    if (
        (inc.feedback or cand.feedback)
        and min(inc.feedback, cand.feedback) < min_feedback
        and elapsed_s < max_s
    ):
        return None  # callers are reporting outcomes: wait until both arms have enough to compare
    if inc.feedback >= min_feedback and cand.feedback >= min_feedback:
        drop = inc.success_rate - cand.success_rate
        allowed_drop = policy.max_success_drop if policy.HasField("max_success_drop") else MAX_SUCCESS_DROP
        if drop > allowed_drop + 1e-12:
            return False, (
                f"success rate from feedback {cand.success_rate:.3f} (candidate, {cand.feedback} reports) "
                f"vs {inc.success_rate:.3f} (incumbent, {inc.feedback}): -{drop:.3f} > allowed {allowed_drop:.3f}"
            )
        lines.append(f"success rate {cand.success_rate:.3f} vs {inc.success_rate:.3f}")
    else:
        lines.append(
            f"feedback not compared ({inc.feedback} / {cand.feedback} reports, {min_feedback} needed)"
        )
    return True, f"the candidate held up over {cand.requests} requests: " + "; ".join(lines)


class AliasManager:
    """Reads and writes the alias table; runs the canary controller."""

    def __init__(
        self,
        store: Callable[[], ObjectStore],
        bus: Callable[[], EventBus | None],
        models: ModelClient,
        *,
        canary_check_s: float = 2.0,
    ) -> None:
        self._store = store
        self._bus = bus
        self.models = models
        self.canary_check_s = canary_check_s
        self._lock = asyncio.Lock()
        self._controller: asyncio.Task[None] | None = None
        #: called with (alias name, revision) after each write (loops waiting on a canary)
        self.listeners: list[Callable[[str, apb.AliasRevision], None]] = []

    @property
    def store(self) -> ObjectStore:
        return self._store()

    async def start(self) -> None:
        self._controller = asyncio.create_task(self._run_controller(), name="canary controller")

    async def stop(self) -> None:
        if self._controller is not None:
            self._controller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._controller
            self._controller = None

    # ------------------------------------------------------------------------------ reading

    async def history(self, name: str) -> list[apb.AliasRevision]:
        return await asyncio.to_thread(table.history, self.store, name)

    async def current(self, name: str) -> apb.AliasRevision | None:
        revs = await self.history(name)
        return revs[0] if revs else None

    async def served_skill(self, model: str) -> str:
        """The skill an alias serves with its model; "" for none, or when ``model`` is no alias."""
        try:
            table.validate_name(model)
        except ValueError:
            return ""
        cur = await self.current(model)
        if cur is None or cur.change == apb.ALIAS_CHANGE_DELETED:
            return ""
        return str(cur.target.skill_id)

    async def get(self, name: str) -> apb.Alias:
        self._name(name)
        revs = await self.history(name)
        if not revs:
            raise NotFound(f"alias {shown(name)} does not exist")
        alias = apb.Alias(name=name, current=revs[0], history=revs)
        if revs[0].HasField("canary"):
            alias.canary_stats.extend(await self.canary_stats(name, revs[0]))
        return alias

    async def listing(self, show_deleted: bool = False) -> list[apb.Alias]:
        def read() -> list[apb.Alias]:
            out = []
            for name, (_rev, key) in sorted(table.newest_keys(self.store).items()):
                rev = table.decode_revision(self.store.get_bytes(key))
                if rev.change == apb.ALIAS_CHANGE_DELETED and not show_deleted:
                    continue
                out.append(apb.Alias(name=name, current=rev))
            return out

        return await asyncio.to_thread(read)

    async def canary_stats(self, name: str, rev: apb.AliasRevision) -> list[apb.ArmStats]:
        """Live signals of the canary started at ``rev``: (incumbent, candidate)."""
        counters = await asyncio.to_thread(table.read_stats, self.store, name, rev.revision)
        inc, cand = rev.target.model, rev.canary.candidate.model
        return [
            counters.get(inc, table.ArmCounters()).to_proto(inc),
            counters.get(cand, table.ArmCounters()).to_proto(cand),
        ]

    # ------------------------------------------------------------------------------ writing

    @staticmethod
    def _name(name: str) -> str:
        try:
            return table.validate_name(name)
        except ValueError as err:
            raise InvalidArgument("name", str(err)) from None

    async def resolve_target(self, model: str, field: str = "target.model") -> apb.AliasTarget:
        """The target for a gateway model name, with the adapter identity the gateway lists."""
        if not model:
            raise InvalidArgument(field, "is required (a gateway model name, e.g. ft/coder-v3)")
        entry = await self.models._entry(model)
        if entry is None:
            raise Unavailable(f"the gateway's model list could not be read to check {shown(model)}")
        if not entry:
            raise FailedPrecondition(f"{field}: the gateway does not serve {shown(model)}")
        if entry.get("flywheel_alias"):
            raise InvalidArgument(field, f"{shown(model)} is an alias; an alias must point at a model")
        target = apb.AliasTarget(model=model)
        match = ADAPTER_MODEL.match(model)
        if match is not None and (entry.get("parent") or model.startswith("ft/")):
            digest = entry.get("digest")
            target.adapter.CopyFrom(
                tpb.AdapterIdentity(
                    adapter_id=f"{match['name']}/v{match['version']}",
                    name=match["name"],
                    version=int(match["version"]),
                    digest=digest if isinstance(digest, str) else "",
                )
            )
        return target

    async def check_free(self, name: str) -> None:
        """A name the gateway serves as a model of its own cannot become an alias."""
        entry = await self.models._entry(name)
        if entry and not entry.get("flywheel_alias"):
            raise InvalidArgument(
                "name", f"{shown(name)} is a model the gateway serves; pick another alias name"
            )

    async def write(
        self, name: str, build: Callable[[apb.AliasRevision | None], apb.AliasRevision | None]
    ) -> apb.AliasRevision | None:
        """Write the revision ``build(newest)`` returns (None: nothing to write) as newest + 1."""
        async with self._lock:
            for _ in range(WRITE_ATTEMPTS):
                cur = await self.current(name)
                rev = build(cur)
                if rev is None:
                    return None
                rev.revision = (cur.revision if cur else 0) + 1
                rev.create_time.CopyFrom(stamp())
                try:
                    await asyncio.to_thread(table.write_revision, self.store, name, rev)
                except ObjectExistsError:
                    continue  # another writer made that revision: read again, decide again
                log.info(
                    "alias %s → revision %d: %s %s (%s)",
                    name,
                    rev.revision,
                    apb.AliasChange.Name(rev.change),
                    rev.target.model,
                    rev.reason,
                )
                await self._announce(name, rev)
                for listener in list(self.listeners):
                    with contextlib.suppress(Exception):
                        listener(name, rev)
                return rev
        raise Aborted(
            f"alias {shown(name)} kept changing under {WRITE_ATTEMPTS} attempts to write it; try again"
        )

    async def _announce(self, name: str, rev: apb.AliasRevision) -> None:
        bus = self._bus()
        if bus is None:
            return
        event_id = f"alias-changed:{name}:{rev.revision}"
        msg = events_pb2.AliasChanged(
            meta=events_pb2.EventMeta(event_id=event_id, occurred_at=rev.create_time, producer=PRODUCER),
            name=name,
            revision=rev,
        )
        try:
            await asyncio.wait_for(bus.publish("flywheel.alias.changed", msg, msg_id=event_id), timeout=5)
        except Exception as err:  # the gateways poll the table too: a lost event only delays them
            log.warning(
                "alias %s: flywheel.alias.changed not published (%s); gateways see it at their next poll",
                name,
                err,
            )

    async def set(self, request: apb.SetAliasRequest, *, loop_id: str = "") -> apb.Alias:
        name = self._name(request.name)
        if request.HasField("canary"):
            validate_policy(request.canary, "canary")
        await self.check_free(name)
        target = await self.resolve_target(request.target.model)
        if request.target.skill_id:
            try:
                skill = await asyncio.to_thread(skill_docs.SkillStore(self.store).get, request.target.skill_id)
            except NotFound as err:
                raise InvalidArgument("target.skill_id", str(err)) from None
            target.skill_id, target.skill_sha256 = skill.id, skill.sha256
        actor = request.actor or "api"

        def build(cur: apb.AliasRevision | None) -> apb.AliasRevision:
            if request.expected_revision and (cur.revision if cur else 0) != request.expected_revision:
                raise Aborted(
                    f"alias {shown(name)} is at revision {cur.revision if cur else 0}, "
                    f"not the expected {request.expected_revision}"
                )
            rev = apb.AliasRevision(
                actor=actor, reason=request.reason, evaluation_id=request.evaluation_id, loop_id=loop_id
            )
            if request.HasField("canary"):
                if cur is None or cur.change == apb.ALIAS_CHANGE_DELETED:
                    raise FailedPrecondition(
                        f"alias {shown(name)} serves nothing yet: set it before starting a canary on it"
                    )
                if (cur.target.model, cur.target.skill_id) == (target.model, target.skill_id):
                    raise InvalidArgument("target.model", f"the alias already serves {shown(target.model)}")
                rev.target.CopyFrom(cur.target)
                rev.change = apb.ALIAS_CHANGE_CANARY_STARTED
                rev.canary.CopyFrom(apb.Canary(candidate=target, policy=request.canary, start_time=stamp()))
            else:
                rev.target.CopyFrom(target)
                rev.change = apb.ALIAS_CHANGE_SET
            return rev

        await self.write(name, build)
        return await self.get(name)

    async def rollback(self, request: apb.RollbackAliasRequest) -> apb.Alias:
        name = self._name(request.name)
        revs = await self.history(name)
        if not revs:
            raise NotFound(f"alias {shown(name)} does not exist")

        def build(cur: apb.AliasRevision | None) -> apb.AliasRevision:
            assert cur is not None
            earlier = [r for r in revs if r.revision < cur.revision]
            if request.to_revision:
                chosen = next((r for r in revs if r.revision == request.to_revision), None)
                if chosen is None:
                    raise NotFound(f"alias {shown(name)} has no revision {request.to_revision}")
            else:
                # The target served before the current one: the newest earlier revision with another
                # target (a canary's start or end leaves the target as it was).
                chosen = next(
                    (
                        r
                        for r in earlier
                        if r.target.model != cur.target.model and r.change != apb.ALIAS_CHANGE_DELETED
                    ),
                    None,
                )
                if chosen is None:
                    raise FailedPrecondition(f"alias {shown(name)} has served nothing else to go back to")
            if chosen.change == apb.ALIAS_CHANGE_DELETED or not chosen.target.model:
                raise FailedPrecondition(f"revision {chosen.revision} of {shown(name)} is a deletion")
            return apb.AliasRevision(
                target=chosen.target,
                change=apb.ALIAS_CHANGE_ROLLBACK,
                actor=request.actor or "api",
                reason=request.reason or f"back to revision {chosen.revision}",
            )

        await self.write(name, build)
        return await self.get(name)

    async def delete(self, request: apb.DeleteAliasRequest) -> apb.Alias:
        name = self._name(request.name)

        def build(cur: apb.AliasRevision | None) -> apb.AliasRevision | None:
            if cur is None:
                raise NotFound(f"alias {shown(name)} does not exist")
            if cur.change == apb.ALIAS_CHANGE_DELETED:
                return None  # deleting twice changes nothing
            return apb.AliasRevision(
                change=apb.ALIAS_CHANGE_DELETED, actor=request.actor or "api", reason=request.reason
            )

        await self.write(name, build)
        return await self.get(name)

    # ------------------------------------------------------------------------------ canaries

    async def _run_controller(self) -> None:
        while True:
            try:
                await self.sweep()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("canary sweep failed; tried again in %.0f s", self.canary_check_s)
            await asyncio.sleep(self.canary_check_s)

    async def sweep(self) -> None:
        """Decide every canary that can be decided now."""
        for name in await asyncio.to_thread(lambda: list(table.newest_keys(self.store))):
            cur = await self.current(name)
            if cur is not None and cur.HasField("canary"):
                await self.judge(name, cur)

    async def judge(self, name: str, started: apb.AliasRevision) -> apb.AliasRevision | None:
        counters = await asyncio.to_thread(table.read_stats, self.store, name, started.revision)
        inc = counters.get(started.target.model, table.ArmCounters())
        cand = counters.get(started.canary.candidate.model, table.ArmCounters())
        elapsed = (datetime.now(UTC) - started.canary.start_time.ToDatetime(UTC)).total_seconds()
        verdict = judge_canary(started.canary.policy, elapsed, inc, cand)
        if verdict is None:
            return None
        promote, reason = verdict
        stats = [inc.to_proto(started.target.model), cand.to_proto(started.canary.candidate.model)]

        def build(cur: apb.AliasRevision | None) -> apb.AliasRevision | None:
            if cur is None or cur.revision != started.revision:
                return None  # changed meanwhile (a rollback, another controller's decision)
            rev = apb.AliasRevision(
                actor="canary",
                reason=reason,
                loop_id=started.loop_id,
                evaluation_id=started.evaluation_id,
                canary_stats=stats,
            )
            if promote:
                rev.target.CopyFrom(started.canary.candidate)
                rev.change = apb.ALIAS_CHANGE_CANARY_PROMOTED
            else:
                rev.target.CopyFrom(started.target)
                rev.change = apb.ALIAS_CHANGE_CANARY_ROLLED_BACK
            return rev

        return await self.write(name, build)
