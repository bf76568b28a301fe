"""Adapter pinning when answers name their weights: the ``system_fingerprint`` digest wins over the listing.

The run test goes through the real orchestrator, sandbox runner and trajectory store; the model
is the scripted OpenAI-compatible server (a model server with real adapters is too slow for a run
here; ``services/model-server/tests/test_adapter_digest.py`` checks that it sets the field), whose
answers carry the digest our model server would put there and whose ``/v1/models`` listing is
made to disagree with them.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from flywheel.orchestrator.v1 import orchestrator_pb2 as opb
from flywheel.orchestrator.v1 import run_pb2
from flywheel.trajectory.v1 import trajectory_pb2 as tpb
from flywheel_orchestrator.model import answered_by
from flywheel_testing.scripted_model import json_call

from .conftest import Backends, orchestrator
from .test_rewards import DIGEST_A, DIGEST_B, FINAL, TRAIN, watch
from .test_runs import stored

MODEL = "ft/coder-v1"


def assistant_digests(t: tpb.Trajectory) -> list[str]:
    return [s.adapter.digest for s in t.steps if s.role == tpb.ROLE_ASSISTANT]


async def test_the_answers_digest_wins_over_the_listing(
    backends: Backends, service_env: dict[str, str]
) -> None:
    listing = {MODEL: {"parent": "base-model", "digest": DIGEST_A}}
    # Per call, in order (concurrency 1): the digest the answer carries. Run 1: episode 1 on A;
    # episode 2's first turn on A, then the adapter is reloaded as B, which the listing does not
    # show (it still says A). Run 2 (pinned A): the listing turns to B at its first call while
    # the answers still come from A.
    answers = [DIGEST_A, DIGEST_A, DIGEST_A, DIGEST_B, DIGEST_A, DIGEST_A]
    calls = [0]

    def respond(m: str, messages: list[dict[str, Any]], tools: Any) -> Any:
        calls[0] += 1
        if calls[0] == 5:
            listing[MODEL]["digest"] = DIGEST_B
        n = sum(x["role"] == "assistant" for x in messages)
        reply = json_call("read_file", {"rel_path": "calc.py"}) if n == 0 else FINAL
        return {**reply, "system_fingerprint": answers[calls[0] - 1]}

    # The listing is asked at every turn (TTL 0): even a fresh listing is not what decides.
    async with orchestrator(backends, service_env, respond, models=(MODEL,), model_identity_ttl_s=0.0) as h:
        h.model.listing = listing
        spec = {"suite": "mini", "model": MODEL, "split": TRAIN, "task_ids": ["add-bug"], "concurrency": 1}
        run, episodes = await watch(h, run_pb2.Run(rollouts_per_task=2, **spec))
        again, again_episodes = await watch(h, run_pb2.Run(**spec))
        pinned = (await h.stub.GetRun(opb.GetRunRequest(run_id=again.id))).run.adapter
    assert calls[0] == len(answers)
    first, second = await stored(backends, run.id)
    assert first.outcome.failure_category == tpb.FAILURE_CATEGORY_NO_CHANGE
    assert assistant_digests(first) == [DIGEST_A, DIGEST_A]
    # a turn from B under a listing that says A: the episode is masked, naming both digests
    assert second.outcome.failure_category == tpb.FAILURE_CATEGORY_MODEL_ERROR
    assert second.outcome.failure_detail.startswith(
        f"adapter {MODEL} changed during the run: pinned {DIGEST_A} now {DIGEST_B}"
    )
    assert second.outcome.reward_detail.masked
    assert assistant_digests(second) == [DIGEST_A]  # the turn from B is not recorded
    assert [e.reward_masked for e in episodes] == [False, True]
    # answers from the pinned weights while the listing says B: a normal episode, recorded as A
    assert pinned.digest == DIGEST_A
    [third] = await stored(backends, again.id)
    assert third.outcome.failure_category == tpb.FAILURE_CATEGORY_NO_CHANGE
    assert assistant_digests(third) == [DIGEST_A, DIGEST_A]
    assert not again_episodes[0].reward_masked


def test_only_a_digest_fingerprint_overrides_the_listing() -> None:
    listed = tpb.AdapterIdentity(adapter_id="coder/v2", name="coder", version=2, digest=DIGEST_A)

    def reply(fingerprint: str | None) -> Any:
        return SimpleNamespace(system_fingerprint=fingerprint)

    # OpenAI's own fingerprints and a missing one leave the listing's identity as it is
    assert answered_by("ft/coder-v2", listed, reply("fp_44709d6fcb")) is listed
    assert answered_by("ft/coder-v2", listed, reply(None)) is listed
    assert answered_by("ft/coder-v2", listed, reply("sha256:short")) is listed
    got = answered_by("ft/coder-v2", listed, reply(DIGEST_B))
    assert got == tpb.AdapterIdentity(adapter_id="coder/v2", name="coder", version=2, digest=DIGEST_B)
    assert listed.digest == DIGEST_A  # the cached listing identity is not changed
    # a digest for a name the listing did not show as an adapter: the name says which version
    assert answered_by("ft/coder-v2", None, reply(DIGEST_B)) == got
    assert answered_by("scripted", None, reply(DIGEST_B)) is None
