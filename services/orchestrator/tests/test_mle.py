"""The ML-engineering agent end to end: a scripted model drives the search through every operator.

Real components: the orchestrator in-process (gRPC on port 0), the sandbox runner (bubblewrap,
cgroups, Debian's scikit-learn) and the trajectory store as processes. The stand-in is the model
(``flywheel_testing.scripted_model``): a hosted model cannot run here and a real small model could
not be made to write a bug, then its fix, then an improvement on cue. It answers each prompt by
the operator the prompt asks for, so the tree the search builds is known in advance and the
stored one is compared with it exactly.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from flywheel.common.v1 import common_pb2
from flywheel.orchestrator.v1 import evaluation_pb2 as epb
from flywheel.orchestrator.v1 import mle_pb2, run_pb2
from flywheel.orchestrator.v1 import orchestrator_pb2 as opb
from flywheel.trajectory.v1 import trajectory_pb2 as tpb
from flywheel_orchestrator import mltasks
from flywheel_orchestrator.mle import MleSettings, export_journal, journal_of
from flywheel_orchestrator.suites import BUNDLED_DIR, load_folder
from flywheel_testing.scripted_model import text

from .conftest import Backends, orchestrator
from .test_runs import stored

TASK_ID = "flower-species"  # on the TRAIN side of ml-tasks
TASK = load_folder(BUNDLED_DIR / "ml-tasks", bundled=True).tasks[TASK_ID]
assert isinstance(TASK, mltasks.MlTask)

BUGGY = """\
import pandas as pd
train = pd.read_csv("data/train.csv")
print("rows", len(trian))
"""
#: Predicts the train majority everywhere: its held-out score is the task's baseline, exactly.
MAJORITY = """\
import os
import pandas as pd
train = pd.read_csv("data/train.csv")
test = pd.read_csv("data/test.csv")
fit, valid = train.iloc[:-80], train.iloc[-80:]
guess = fit["species"].value_counts().idxmax()
print(f"validation metric: {(valid['species'] == guess).mean():.4f}")
os.makedirs("submission", exist_ok=True)
majority = train["species"].value_counts().idxmax()
pd.DataFrame({"id": test["id"], "species": majority}).to_csv("submission/submission.csv", index=False)
"""
#: The task's reference: its held-out score is the documented reference score, exactly.
REFERENCE = TASK.reference_solution


def _majority_validation() -> float:
    rows = mltasks.read_csv(TASK.data["data/train.csv"].decode())
    fit, valid = rows[:-80], rows[-80:]
    guess = Counter(r["species"] for r in fit).most_common(1)[0][0]
    return round(sum(r["species"] == guess for r in valid) / len(valid), 4)


def answer(plan: str, code: str) -> dict[str, Any]:
    return text(f"{plan}\n\n```python\n{code}```\n")


def operator_of(prompt: str) -> str:
    if "has a bug shown by its output" in prompt:
        return "debug"
    if "Improve the best solution so far" in prompt:
        return "improve"
    if "You are reviewing a machine learning script" in prompt:
        return "critique"
    if "addresses every point of the review" in prompt:
        return "edit"
    assert "Write a first, relatively simple solution" in prompt, prompt[:300]
    return "draft"


class Script:
    """Answers by operator; records every prompt it was sent."""

    def __init__(self, answers: dict[str, list[dict[str, Any]]]) -> None:
        self.answers = {k: list(v) for k, v in answers.items()}
        self.prompts: list[tuple[str, str]] = []

    def __call__(self, model: str, messages: list[dict[str, Any]], tools: Any) -> dict[str, Any]:
        prompt = messages[-1]["content"]
        op = operator_of(prompt)
        self.prompts.append((op, prompt))
        return self.answers[op].pop(0)


async def _run(h: Any, progress: list[mle_pb2.MlNodeProgress] | None = None) -> run_pb2.Run:
    """Run the task and follow WatchRun; the ML node updates it streams go into ``progress``."""
    run = run_pb2.Run(
        suite="ml-tasks", split=common_pb2.TASK_SPLIT_TRAIN, task_ids=[TASK_ID], model="scripted"
    )
    created = await h.stub.CreateRun(opb.CreateRunRequest(run=run))
    last = None
    order = []
    async for update in h.stub.WatchRun(opb.WatchRunRequest(run_id=created.run.id), timeout=300):
        order.append(update.WhichOneof("update"))
        if update.WhichOneof("update") == "run":
            last = update.run
        elif update.WhichOneof("update") == "ml_node" and progress is not None:
            progress.append(update.ml_node)
    assert last is not None
    # Every node is streamed before the episode's result.
    if "episode" in order and "ml_node" in order:
        assert max(i for i, u in enumerate(order) if u == "ml_node") < order.index("episode")
    return last


def _nodes(traj: tpb.Trajectory) -> list[tuple[Any, ...]]:
    """(id, operator, stage, parent node, buggy, metric, heldout) of every node, in order."""
    journal = journal_of(traj)
    return [
        (
            n["id"],
            n["operator"],
            traj.steps[
                next(s.index for s in traj.steps if s.attributes.get("aide.node_id") == n["id"])
            ].attributes["aide.stage"],
            n["parent"],
            n["is_buggy"],
            n["metric"]["value"] if n["metric"] else None,
            n["heldout_metric"],
        )
        for n in journal["nodes"]
    ]


def _printed_metric(traj: tpb.Trajectory, node_id: str) -> float:
    node = next(
        s for s in traj.steps if s.role == tpb.ROLE_ASSISTANT and s.attributes["aide.node_id"] == node_id
    )
    output = next(s for s in traj.steps if s.role == tpb.ROLE_USER and s.parent_index == node.index)
    line = next(x for x in output.content.splitlines() if x.startswith("validation metric:"))
    return float(line.split(":")[1])


@pytest.mark.slow
async def test_draft_with_a_bug_then_debug_then_improve(
    backends: Backends, service_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLYWHEEL_ORCHESTRATOR_MLE_MAX_NODES", "3")
    monkeypatch.setenv("FLYWHEEL_ORCHESTRATOR_MLE_NUM_DRAFTS", "1")
    monkeypatch.setenv("FLYWHEEL_ORCHESTRATOR_MLE_DEBUG_PROB", "1.0")
    script = Script(
        {
            "draft": [answer("Count the rows first.", BUGGY)],
            "debug": [answer("The name `trian` is a typo; predict the majority class.", MAJORITY)],
            "improve": [answer("Use logistic regression on every feature.", REFERENCE)],
        }
    )
    progress: list[mle_pb2.MlNodeProgress] = []
    async with orchestrator(backends, service_env, script) as h:
        run = await _run(h, progress)
    assert run.state == common_pb2.JOB_STATE_SUCCEEDED, run.error
    assert run.counters.episodes_resolved == 1
    [traj] = await stored(backends, run.id)
    assert [op for op, _ in script.prompts] == ["draft", "debug", "improve"]
    # Each node's exact prompt is recorded on its step (what step_sft trains on).
    prompts = [json.loads(s.attributes["mle.prompt"]) for s in traj.steps if s.role == tpb.ROLE_ASSISTANT]
    assert [p[-1]["content"] for p in prompts] == [prompt for _, prompt in script.prompts]

    majority_valid = _majority_validation()
    reference_valid = _printed_metric(traj, "n2")
    assert _nodes(traj) == [
        ("n0", "draft", "draft", None, True, None, None),
        ("n1", "debug", "debug", "n0", False, majority_valid, TASK.baseline_score),
        ("n2", "improve", "improve", "n1", False, reference_valid, TASK.reference_score),
    ]
    assert reference_valid > majority_valid  # the improvement raised the metric
    # WatchRun streamed the tree growing: each node as it was added, with the best so far.
    assert [
        (
            p.model, p.task_id, p.trajectory_id, p.node_id, p.step, p.operator, p.parent_id, p.buggy,
            p.metric if p.HasField("metric") else None, p.nodes, p.max_nodes, p.best_node_id,
            p.best_metric if p.HasField("best_metric") else None,
            p.best_heldout if p.HasField("best_heldout") else None, p.metric_name, p.maximize,
        )
        for p in progress
    ] == [
        ("scripted", TASK_ID, traj.id, "n0", 0, mle_pb2.ML_OPERATOR_DRAFT, "", True, None, 1, 3, "", None, None, "accuracy", True),
        ("scripted", TASK_ID, traj.id, "n1", 1, mle_pb2.ML_OPERATOR_DEBUG, "n0", False, majority_valid, 2, 3, "n1",
         majority_valid, TASK.baseline_score, "accuracy", True),
        ("scripted", TASK_ID, traj.id, "n2", 2, mle_pb2.ML_OPERATOR_IMPROVE, "n1", False, reference_valid, 3, 3, "n2",
         reference_valid, TASK.reference_score, "accuracy", True),
    ]  # fmt: skip
    assert "NameError" in progress[0].analysis
    # The debug prompt carried the bug; nothing the model saw carries a held-out score.
    debug_prompt = script.prompts[1][1]
    assert "NameError" in debug_prompt and "trian" in debug_prompt
    for _, prompt in script.prompts:
        assert repr(TASK.reference_score) not in prompt and "heldout" not in prompt.lower()
    assert f"validation metric {majority_valid}" in script.prompts[2][1]
    # The trajectory: kind ML, tree links, outcome and labels.
    assert traj.task.kind == common_pb2.TASK_KIND_ML
    assert traj.outcome.resolved
    assert traj.outcome.reward == pytest.approx(1.0)  # the reference's score, normalised
    assert traj.labels["aide.best_node"] == "n2"
    assert traj.labels["mle.nodes"] == "3"
    assert float(traj.labels["mle.best_heldout"]) == TASK.reference_score
    roles = [s.role for s in traj.steps]
    assert roles == [tpb.ROLE_USER] + [tpb.ROLE_ASSISTANT, tpb.ROLE_USER] * 3
    assert traj.steps[3].parent_index == 2 and traj.steps[5].parent_index == 4
    assert traj.steps[2].tool_result.status == tpb.TOOL_RESULT_STATUS_ERROR
    assert b'"operator": "improve"' in export_journal(traj)


@pytest.mark.slow
async def test_two_step_reflection_critiques_then_edits(
    backends: Backends, service_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLYWHEEL_ORCHESTRATOR_MLE_MAX_NODES", "2")
    monkeypatch.setenv("FLYWHEEL_ORCHESTRATOR_MLE_NUM_DRAFTS", "1")
    monkeypatch.setenv("FLYWHEEL_ORCHESTRATOR_MLE_REFLECTION", "true")
    critique = "1. The majority class ignores every feature.\n2. A linear model on the four sizes would separate the species."
    script = Script(
        {
            "draft": [answer("Predict the majority class.", MAJORITY)],
            "critique": [text(critique)],
            "edit": [answer("Fit logistic regression as the review says.", REFERENCE)],
        }
    )
    async with orchestrator(backends, service_env, script) as h:
        run = await _run(h)
    assert run.state == common_pb2.JOB_STATE_SUCCEEDED, run.error
    [traj] = await stored(backends, run.id)
    assert [op for op, _ in script.prompts] == ["draft", "critique", "edit"]
    # Step one asks for a critique without code; step two gets the critique and the code.
    assert "Do NOT write or fix any code" in script.prompts[1][1]
    assert critique in script.prompts[2][1] and "value_counts" in script.prompts[2][1]
    assert _nodes(traj) == [
        ("n0", "draft", "draft", None, False, _majority_validation(), TASK.baseline_score),
        ("n1", "reflect", "improve", "n0", False, _printed_metric(traj, "n1"), TASK.reference_score),
    ]
    reflect = next(
        s for s in traj.steps if s.attributes.get("aide.node_id") == "n1" and s.role == tpb.ROLE_ASSISTANT
    )
    assert reflect.content.startswith(f"Critique:\n{critique}\n\nEdit:\nFit logistic regression")


def test_search_policy_follows_the_settings() -> None:
    """Drafts first, then debug of buggy leaves within the depth bound, then greedy improvement."""
    from flywheel_orchestrator.mle import MleEpisode, MleSpec, Node

    spec = MleSpec("t", "r", 0, "s", "v", TASK, common_pb2.SamplingParams(), 0, tpb.Policy(), 60, 60)
    ep = MleEpisode(
        spec, policy=None, sandbox=None, settings=MleSettings(num_drafts=2, debug_prob=1.0, max_debug_depth=1)
    )  # type: ignore[arg-type]
    assert ep.next_action() == ("draft", None)
    ep.nodes.append(Node("n0", 0, "draft", None, buggy=True))
    assert ep.next_action() == ("draft", None)
    ep.nodes.append(Node("n1", 1, "draft", None, buggy=False, metric=0.5))
    assert ep.next_action() == ("debug", ep.nodes[0])
    ep.nodes[0].children.append("n2")
    ep.nodes.append(Node("n2", 2, "debug", "n0", buggy=True, debug_depth=1))
    assert ep.next_action() == ("debug", ep.nodes[2])  # depth 1 <= max 1
    ep.nodes[2].children.append("n3")
    ep.nodes.append(Node("n3", 3, "debug", "n2", buggy=True, debug_depth=2))
    assert ep.next_action() == ("improve", ep.nodes[1])  # depth 2 is past the bound: greedy
    ep.nodes.append(Node("n4", 4, "improve", "n1", buggy=False, metric=0.7))
    assert ep.next_action() == ("improve", ep.nodes[4])


@pytest.mark.slow
async def test_evaluation_reports_ml_metrics(
    backends: Backends, service_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two models on two TEST tasks: one writes each task's reference, one a script that crashes."""
    monkeypatch.setenv("FLYWHEEL_ORCHESTRATOR_MLE_MAX_NODES", "1")
    monkeypatch.setenv("FLYWHEEL_ORCHESTRATOR_MLE_NUM_DRAFTS", "1")
    suite = load_folder(BUNDLED_DIR / "ml-tasks", bundled=True)
    chosen = {t: suite.tasks[t] for t in ("two-moons", "review-sentiment")}
    by_title = {f"# {t.title}\n": t for t in chosen.values() if isinstance(t, mltasks.MlTask)}

    def respond(model: str, messages: list[dict[str, Any]], tools: Any) -> dict[str, Any]:
        task = next(t for title, t in by_title.items() if title in messages[-1]["content"])
        return (
            answer("The reference.", task.reference_solution) if model == "good" else answer("Oops.", BUGGY)
        )

    async with orchestrator(backends, service_env, respond, models=("good", "bad")) as h:
        request = epb.Evaluation(
            suite="ml-tasks",
            split=common_pb2.TASK_SPLIT_TEST,
            task_ids=sorted(chosen),
            models=["good", "bad"],
            baseline_model="bad",
        )
        created = (await h.stub.CreateEvaluation(opb.CreateEvaluationRequest(evaluation=request))).evaluation
        final = None
        nodes = []
        async for update in h.stub.WatchEvaluation(
            opb.WatchEvaluationRequest(evaluation_id=created.id), timeout=300
        ):
            if update.WhichOneof("update") == "evaluation":
                final = update.evaluation
            elif update.WhichOneof("update") == "ml_node":
                nodes.append(update.ml_node)
    assert final is not None and final.state == common_pb2.JOB_STATE_SUCCEEDED, final.error
    good, bad = final.ml_metrics
    assert (good.model, good.episodes, good.valid_fraction, good.mean_nodes) == ("good", 2, 1.0, 1.0)
    # WatchEvaluation streamed each model's nodes as they were added, named by model.
    assert sorted((n.model, n.task_id, n.node_id, n.buggy, n.best_node_id) for n in nodes) == [
        ("bad", "review-sentiment", "n0", True, ""),
        ("bad", "two-moons", "n0", True, ""),
        ("good", "review-sentiment", "n0", False, "n0"),
        ("good", "two-moons", "n0", False, "n0"),
    ]
    assert good.mean_normalised == pytest.approx(1.0)
    assert [(t.task_id, t.best_heldout, t.valid_episodes) for t in good.tasks] == [
        (t.id, t.reference_score, 1) for t in sorted(chosen.values(), key=lambda t: t.id)
    ]
    assert (bad.model, bad.episodes, bad.valid_fraction, bad.mean_normalised) == ("bad", 2, 0.0, 0.0)
    assert not any(t.HasField("best_heldout") for t in bad.tasks)
    assert good.mean_wall_time.ToNanoseconds() > 0
    report = (Path(service_env["FLYWHEEL_OBJECT_STORE_ROOT"]) / final.report.markdown.key).read_text()
    assert "## ML-engineering tasks" in report and "| good | two-moons | accuracy (max) |" in report
    # The report draws each episode's search tree and its metric per step.
    two_moons = suite.tasks["two-moons"]
    assert isinstance(two_moons, mltasks.MlTask)
    head = f"#### good · two-moons #0 — 1 nodes, best n0: held-out {two_moons.reference_score:.4g} (normalised 1.00)"
    tree = report.split(head, 1)[1].split("#### ", 1)[0]
    assert re.search(r"```\nn0 draft: metric [0-9.]+ \(held-out [0-9.]+\)  ← best\n```", tree), tree
    assert re.search(r"Validation metric per step \(→ best so far\): `0:[0-9.]+→[0-9.]+`", tree), tree
    bad_tree = report.split("#### bad · review-sentiment #0 — 1 nodes, no valid submission", 1)[1]
    assert "n0 draft: bug: " in bad_tree and "per step (→ best so far): `0:bug`" in bad_tree
    # …and charts the held-out score per step, next to the report.
    assert "![normalised held-out score per step](ml_search.png)" in report
    [chart] = [c.key for c in final.report.charts if c.key.endswith("/ml_search.png")]
    assert (Path(service_env["FLYWHEEL_OBJECT_STORE_ROOT"]) / chart).read_bytes().startswith(b"\x89PNG")
