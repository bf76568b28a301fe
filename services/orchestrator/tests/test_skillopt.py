"""Skills and the skill optimiser, through the real orchestrator, sandbox runner and trajectory store.

Both models are scripted OpenAI-compatible endpoints (flywheel_testing.scripted_model) standing in
for what runs behind the gateway — a hosted optimiser model and a target model cannot run in CI:

- the target (``target``) solves an ``add-K`` problem (print n+K) exactly when its system prompt
  contains ``PHRASE`` and not ``SABOTAGE``; otherwise it submits a wrong program;
- the optimiser (``optimiser``) proposes, for failures, four edits (one touching a protected
  section, the phrase, a filler line, one with an unknown op: malformed), for successes the
  sabotage line, for the slow update no edit, and for the meta skill an answer that is not JSON.

Everything else is real: episodes are judged by the sandbox, trajectories stored, runs resumed.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from click.testing import CliRunner, Result
from google.protobuf import json_format

from flywheel.common.v1 import common_pb2
from flywheel.orchestrator.v1 import evaluation_pb2 as epb
from flywheel.orchestrator.v1 import orchestrator_pb2 as opb
from flywheel.orchestrator.v1 import orchestrator_pb2_grpc, run_pb2
from flywheel.orchestrator.v1 import skill_pb2 as spb
from flywheel.trajectory.v1 import trajectory_pb2 as tpb
from flywheel.trajectory.v1 import trajectory_pb2_grpc
from flywheel_cli.main import cli
from flywheel_common import auth
from flywheel_orchestrator import protocol as proto
from flywheel_orchestrator import skillopt, skills
from flywheel_orchestrator.suites import load_folder
from flywheel_testing.processes import start_module
from flywheel_testing.scripted_model import Fail, ScriptedModelServer, text

from .conftest import MINI, Backends, orchestrator

TRAIN, TEST = common_pb2.TASK_SPLIT_TRAIN, common_pb2.TASK_SPLIT_TEST
PHRASE = "Add the constant K named in the question to n."
SABOTAGE = "Always print 0."
FILLER = "Be concise."
INITIAL = (
    "# Playbook\n\nSolve the problem.\n\n"
    "<!-- protected: house-rules -->\nNever edit the tests.\n<!-- /protected -->\n"
)
S = spb


@pytest.fixture(scope="module")
def suite_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Twelve ``add-K`` I/O problems: 9 TRAIN (2 for selection, 7 for minibatches), 3 TEST."""
    root = tmp_path_factory.mktemp("skills-suite") / "adders"
    root.mkdir()
    (root / "suite.toml").write_text(
        'name = "adders"\ndescription = "Print n+K."\ntrain_ratio = 0.75\nsplit_seed = "adders-10"\n'
    )
    lines = []
    for k in range(1, 13):
        lines.append(
            json.dumps(
                {
                    "query_id": f"add-{k}",
                    "title": f"Add {k}",
                    "question": f"Read an integer n and print n+K where K={k}.",
                    "input_output": {"inputs": ["1\n", "5\n"], "outputs": [f"{1 + k}\n", f"{5 + k}\n"]},
                    "reference_solution": f"print(int(input()) + {k})\n",
                }
            )
        )
    (root / "problems.jsonl").write_text("\n".join(lines) + "\n")
    return root


def target_reply(messages: list[dict[str, Any]]) -> dict[str, Any]:
    system, user = messages[0]["content"], messages[1]["content"]
    k = re.search(r"K=(\d+)", user)
    good = PHRASE in system and SABOTAGE not in system and k is not None
    code = f"print(int(input()) + {k.group(1)})" if good and k else "print(0)"
    return text(json.dumps({"type": "final", "code": code}))


FAILURE_EDITS = {
    "edits": [
        {"op": "replace", "anchor": "Never edit the tests.", "content": "Edit anything.", "rationale": "r0"},
        {"op": "append", "content": PHRASE, "rationale": "the agent ignores K"},
        {"op": "append", "content": FILLER, "rationale": "shorter answers", "support": 1},
        {"op": "rewrite", "content": "x", "rationale": "unknown op"},
    ]
}
SUCCESS_EDITS = {"edits": [{"op": "append", "content": SABOTAGE, "rationale": "simpler programs"}]}


class Models:
    """Both scripted models; ``hold_reflection`` makes step 2's second reflection wait (to crash in it)."""

    def __init__(self) -> None:
        self.hold_reflection = False
        self.release = asyncio.Event()
        self.calls: list[str] = []
        self.meta_json = False  #: answer the meta skill with the JSON asked for
        self.hold_target = False  #: the target waits on the first prompt with the phrase
        self.release_target = asyncio.Event()
        self.target_held = 0
        self.reflect_prompts: list[str] = []

    async def held_target(self, answer: dict[str, Any]) -> dict[str, Any]:
        await asyncio.wait_for(self.release_target.wait(), timeout=60)
        return answer

    async def held(self, answer: dict[str, Any]) -> dict[str, Any]:
        await asyncio.wait_for(self.release.wait(), timeout=60)
        return answer

    def __call__(self, model: str, messages: list[dict[str, Any]], tools: Any) -> Any:
        if model == "target":
            if self.hold_target and PHRASE in messages[0]["content"]:
                self.target_held += 1
                return self.held_target(target_reply(messages))
            return target_reply(messages)
        system, user = messages[0]["content"], messages[1]["content"]
        if system == skillopt.REFLECT_SYSTEM:
            self.calls.append("reflect")
            self.reflect_prompts.append(user)
            if "successful episodes" in user:
                answer = text(json.dumps(SUCCESS_EDITS))
                # Step 2 reflects on 2 + 1 successes: the second call (1 episode) is held.
                held = self.hold_reflection and "## 1 successful episodes" in user
                return self.held(answer) if held else answer
            return text("```json\n" + json.dumps(FAILURE_EDITS) + "\n```")
        if system == skillopt.SLOW_SYSTEM:
            self.calls.append("slow")
            return text(json.dumps({"edits": []}))
        self.calls.append("meta")
        if self.meta_json:
            return text(json.dumps({"meta_skill": "LESSON: naming K helps; printing 0 hurts."}))
        return text("The lessons are: the phrase helps.")  # not JSON: malformed, recorded


def optimization(**over: Any) -> spb.SkillOptimization:
    fields: dict[str, Any] = dict(
        suite="adders",
        target_model="target",
        optimizer_model="optimiser",
        initial_skill=run_pb2.SkillSource(text=INITIAL),
        selection_size=2,
        minibatch_size=4,
        reflect_batch_size=2,
        epochs=1,
        budget=spb.EditBudget(initial=2, minimum=1, schedule=spb.EDIT_BUDGET_SCHEDULE_LINEAR),
        slow_update=True,
        meta_skill=True,
        seed=7,
    )
    fields.update(over)
    return spb.SkillOptimization(**fields)


EXPECTED_HISTORY = [
    (0, S.SKILL_OPT_STAGE_BASELINE),
    (1, S.SKILL_OPT_STAGE_ROLLOUT),
    (1, S.SKILL_OPT_STAGE_REFLECT),
    (1, S.SKILL_OPT_STAGE_AGGREGATE),
    (1, S.SKILL_OPT_STAGE_SELECT),
    (1, S.SKILL_OPT_STAGE_UPDATE),
    (1, S.SKILL_OPT_STAGE_EVALUATE),
    (2, S.SKILL_OPT_STAGE_ROLLOUT),
    (2, S.SKILL_OPT_STAGE_REFLECT),
    (2, S.SKILL_OPT_STAGE_AGGREGATE),
    (2, S.SKILL_OPT_STAGE_SELECT),
    (2, S.SKILL_OPT_STAGE_UPDATE),
    (2, S.SKILL_OPT_STAGE_EVALUATE),
    (3, S.SKILL_OPT_STAGE_SLOW_UPDATE),
    (3, S.SKILL_OPT_STAGE_SELECT),
    (3, S.SKILL_OPT_STAGE_UPDATE),
    (3, S.SKILL_OPT_STAGE_META_SKILL),
    (0, S.SKILL_OPT_STAGE_TEST),
]


async def wait_end(stub: orchestrator_pb2_grpc.OrchestratorServiceStub, opt_id: str) -> spb.SkillOptimization:
    last = None
    req = opb.WatchSkillOptimizationRequest(optimization_id=opt_id)
    async for update in stub.WatchSkillOptimization(req, timeout=90):
        last = update.optimization
    assert last is not None
    return last


def check_outcome(o: spb.SkillOptimization, suite: Path, objects: Path) -> None:
    """The scenario's exact result (shared by the plain and the crash test)."""
    assert o.state == common_pb2.JOB_STATE_SUCCEEDED, o.error
    assert [(h.step, h.stage) for h in o.history] == EXPECTED_HISTORY
    s1, s2, s3 = o.steps
    # Step 1: budget 2 of the schedule; the protected edit is skipped, the phrase kept, the
    # filler (less support) left out, the unknown op recorded as malformed.
    assert s1.budget == 2 and len(s1.selected) == 2
    assert [e.content for e in s1.selected] == ["Edit anything.", PHRASE]
    assert not s1.selected[0].applied and "protected" in s1.selected[0].skipped_reason
    assert s1.selected[1].applied and s1.selected[1].support == 4  # 2 batches of 2 episodes
    assert FILLER in [e.content for e in s1.proposed] and len(s1.proposed) == 3
    assert s1.malformed and all("rewrite" in m for m in s1.malformed)
    assert (s1.score_before, s1.candidate_score) == (0.0, 1.0)
    assert s1.decision == S.SKILL_GATE_DECISION_ACCEPTED
    # Step 2: budget 1; the sabotage lowers the selection score and is rejected.
    assert s2.budget == 1 and [e.content for e in s2.selected] == [SABOTAGE]
    assert (s2.score_before, s2.candidate_score) == (1.0, 0.0)
    assert s2.decision == S.SKILL_GATE_DECISION_REJECTED
    # Slow update: no edit; the meta skill's non-JSON answer is recorded and the memory stays empty.
    assert s3.slow_update and s3.decision == S.SKILL_GATE_DECISION_NO_CHANGE
    assert any("meta skill" in m for m in s3.malformed) and o.meta_skill_text == ""
    stored = json.loads((objects / "skills" / f"{find_sha(objects, o.current_skill_id)}.json").read_text())
    assert PHRASE in stored["text"] and SABOTAGE not in stored["text"] and FILLER not in stored["text"]
    assert "Never edit the tests." in stored["text"]
    assert o.best_skill_id == o.current_skill_id == s1.candidate_skill_id
    assert (o.baseline_score, o.best_score, o.current_score) == (0.0, 1.0, 1.0)
    n_test = len(load_folder(suite).select(TEST, []))
    assert (o.test.baseline, o.test.best, o.test.final, o.test.episodes) == (0.0, 1.0, 1.0, n_test)
    assert o.test.best_run_id == o.test.final_run_id != o.test.baseline_run_id
    stages = {u.stage: u for u in o.usage}
    assert stages[S.SKILL_OPT_STAGE_REFLECT].optimizer_calls == 4  # 2 failure + 2 success batches
    assert stages[S.SKILL_OPT_STAGE_ROLLOUT].target.prompt_tokens > 0
    assert stages[S.SKILL_OPT_STAGE_REFLECT].optimizer.prompt_tokens > 0
    for ref in (o.report.markdown, o.report.json, *o.report.charts):
        assert (objects / ref.key).stat().st_size > 0
    assert (objects / o.report.charts[0].key).read_bytes()[:4] == b"\x89PNG"


def find_sha(objects: Path, skill_id: str) -> str:
    prefix = skill_id.removeprefix("skill-")
    (hit,) = [p.stem for p in (objects / "skills").glob(f"{prefix}*.json")]
    return hit


# ---------------------------------------------------------------------------------- unit


def test_protected_sections_and_edits() -> None:
    doc = INITIAL
    assert [s.name for s in skills.sections(doc)] == ["house-rules"]
    append = spb.SkillEdit(op=spb.SKILL_EDIT_OP_APPEND, section="house-rules", content="Run the tests.")
    new, why = skills.apply_edit(doc, append)
    assert not why and "Never edit the tests.\nRun the tests.\n<!-- /protected -->" in new
    for op in (spb.SKILL_EDIT_OP_REPLACE, spb.SKILL_EDIT_OP_DELETE):
        same, why = skills.apply_edit(doc, spb.SkillEdit(op=op, anchor="tests.", content="x"))
        assert same == doc and "protected" in why
    same, why = skills.apply_edit(
        doc, spb.SkillEdit(op=spb.SKILL_EDIT_OP_REPLACE, anchor="nope", content="x")
    )
    assert same == doc and why == "anchor not found"
    new, why = skills.apply_edit(
        doc, spb.SkillEdit(op=spb.SKILL_EDIT_OP_REPLACE, anchor="Solve", content="Fix")
    )
    assert not why and "Fix the problem." in new
    for bad in (
        "<!-- protected: a -->x",
        "x<!-- /protected -->",
        "<!-- protected: A B -->x<!-- /protected -->",
    ):
        with pytest.raises(ValueError):
            skills.sections(bad)


def test_parse_aggregate_rank_budget_gate() -> None:
    edits, problems = skillopt.parse_edits("no json here", "failure", 2)
    assert edits == [] and problems == ["no JSON object in the answer"]
    edits, problems = skillopt.parse_edits('{"edits": "x"}', "failure", 2)
    assert edits == [] and problems
    edits, problems = skillopt.parse_edits(json.dumps(FAILURE_EDITS), "failure", 2)
    assert len(edits) == 3 and len(problems) == 1 and edits[2].support == 1 and edits[1].support == 2
    merged = skillopt.aggregate([edits, edits, edits[1:2]], fanout=2)
    assert [e.support for e in merged] == [4, 6, 2]
    assert [e.content for e in skillopt.rank(merged)] == [PHRASE, "Edit anything.", FILLER]
    lin = spb.EditBudget(initial=5, minimum=1, schedule=spb.EDIT_BUDGET_SCHEDULE_LINEAR)
    assert [skillopt.budget_at(lin, k, 5) for k in range(1, 6)] == [5, 4, 3, 2, 1]
    cos = spb.EditBudget(initial=5, minimum=1, schedule=spb.EDIT_BUDGET_SCHEDULE_COSINE)
    assert skillopt.budget_at(cos, 1, 5) == 5 and skillopt.budget_at(cos, 5, 5) == 1
    assert skillopt.budget_at(spb.EditBudget(), 4, 9) == 3
    assert skillopt.gate(0.5, 0.5, 0, False)[0] is False
    assert skillopt.gate(0.5, 0.5, 0, True)[0] is True
    assert skillopt.gate(0.6, 0.5, 0.1, False)[0] is False
    assert skillopt.gate(0.75, 0.5, 0.1, False)[0] is True


# ---------------------------------------------------------------------------------- service


async def test_skill_hash_in_every_trajectory_of_a_run(
    backends: Backends, service_env: dict[str, str], suite_dir: Path
) -> None:
    models = Models()
    async with orchestrator(
        backends, service_env, models, models=("target", "optimiser"), suite_dirs=[MINI, suite_dir]
    ) as h:
        created = (
            await h.stub.CreateSkill(opb.CreateSkillRequest(skill=spb.Skill(text=INITIAL, name="p")))
        ).skill
        assert created.id == skills.skill_id(INITIAL) and created.protected_sections == ["house-rules"]
        again = await h.stub.CreateSkill(opb.CreateSkillRequest(skill=spb.Skill(text=INITIAL)))
        assert not again.created and again.skill.id == created.id and again.skill.name == "p"
        got = (await h.stub.GetSkill(opb.GetSkillRequest(skill_id=created.sha256))).skill
        assert got.text == INITIAL
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await h.stub.CreateSkill(opb.CreateSkillRequest(skill=spb.Skill(text="<!-- protected: x -->")))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        with pytest.raises(grpc.aio.AioRpcError) as err:
            bad = run_pb2.Run(
                suite="adders",
                split=TRAIN,
                model="target",
                episode=run_pb2.EpisodeSettings(skill=run_pb2.SkillSource(skill_id="skill-0000000000000000")),
            )
            await h.stub.CreateRun(opb.CreateRunRequest(run=bad))
        assert (
            err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            and "run.episode.skill" in err.value.details()
        )

        text_skill = INITIAL + PHRASE + "\n"
        for source in (run_pb2.SkillSource(text=text_skill), run_pb2.SkillSource(skill_id=created.id)):
            run = run_pb2.Run(
                suite="adders", split=TRAIN, model="target", episode=run_pb2.EpisodeSettings(skill=source)
            )
            made = (await h.stub.CreateRun(opb.CreateRunRequest(run=run))).run
            doc = text_skill if source.WhichOneof("source") == "text" else INITIAL
            assert made.episode.skill.skill_id == skills.skill_id(doc)  # inline text stored, named by id
            assert made.skill_sha256 == skills.sha256(doc)
            last = None
            async for update in h.stub.WatchRun(opb.WatchRunRequest(run_id=made.id), timeout=60):
                if update.WhichOneof("update") == "run":
                    last = update.run
            assert last is not None and last.state == common_pb2.JOB_STATE_SUCCEEDED
            async with auth.channel(backends.trajectory) as ch:
                store = trajectory_pb2_grpc.TrajectoryServiceStub(ch)
                listed = await store.ListTrajectories(
                    tpb.ListTrajectoriesRequest(
                        filter=tpb.TrajectoryFilter(run_ids=[made.id]), view=tpb.TRAJECTORY_VIEW_FULL
                    )
                )
            trajs = listed.trajectories
            assert len(trajs) == last.counters.episodes_total == 9
            for t in trajs:
                assert t.labels["skill_sha256"] == skills.sha256(doc)
                assert t.labels["skill_id"] == skills.skill_id(doc)
                system = t.steps[0].content
                assert system.endswith(doc.strip() + "\n") and proto.SKILL_HEADING in system
                assert t.policy.prompt_sha256 == skills.sha256(system)  # the real prompt's hash
            # The phrase in the skill decides the scripted target's success.
            assert last.counters.episodes_resolved == (9 if doc == text_skill else 0)

        # Evaluations take a skill too: inline text is stored and named by id; an unknown id is refused.
        episode = run_pb2.EpisodeSettings(skill=run_pb2.SkillSource(text=text_skill))
        ev = epb.Evaluation(suite="adders", split=TEST, models=["target"], episode=episode)
        made_ev = (await h.stub.CreateEvaluation(opb.CreateEvaluationRequest(evaluation=ev))).evaluation
        assert made_ev.episode.skill.skill_id == skills.skill_id(text_skill)
        done = None
        watch = opb.WatchEvaluationRequest(evaluation_id=made_ev.id)
        async for item in h.stub.WatchEvaluation(watch, timeout=60):
            if item.WhichOneof("update") == "evaluation":
                done = item.evaluation
        assert done is not None and done.state == common_pb2.JOB_STATE_SUCCEEDED, done
        assert done.model_metrics[0].pass_rate == 1.0 and done.model_metrics[0].episodes == 3
        ev.episode.skill.skill_id = "skill-0000000000000000"
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await h.stub.CreateEvaluation(opb.CreateEvaluationRequest(evaluation=ev))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "evaluation.episode.skill.skill_id" in err.value.details()


async def check_cli(address: str, final: spb.SkillOptimization, tmp_path: Path) -> None:
    """``flywheel skill …`` against the finished optimisation (the CLI is synchronous: a thread)."""

    def flywheel(*args: str) -> Result:
        runner = CliRunner(env={"COLUMNS": "300"})
        return runner.invoke(cli, ["skill", "--address", address, *args], catch_exceptions=False)

    spec = tmp_path / "opt.json"
    spec.write_text(json_format.MessageToJson(optimization()))
    again = await asyncio.to_thread(flywheel, "create", "--from-json", str(spec), "--request-id", "opt-1")
    assert again.exit_code == 0 and final.id in again.stdout  # the same optimisation, already done
    assert "step 2 (epoch 0, 3 tasks) · budget 1" in again.output and "rejected" in again.output
    shown = await asyncio.to_thread(flywheel, "show", final.id)
    assert shown.exit_code == 0 and "malformed: reflection" in shown.stdout and "reflect" in shown.stdout
    diff = await asyncio.to_thread(flywheel, "diff", final.id)
    assert f"+{PHRASE}" in diff.stdout and "the agent ignores K" in diff.stdout
    assert "skipped: touches protected section 'house-rules'" in diff.stdout
    text = await asyncio.to_thread(flywheel, "show", final.current_skill_id)
    assert text.exit_code == 0 and PHRASE in text.stdout
    doc = tmp_path / "skill.md"
    doc.write_text(INITIAL)
    added = await asyncio.to_thread(flywheel, "add", str(doc))
    assert added.stdout.strip() == final.baseline_skill_id
    pair = await asyncio.to_thread(flywheel, "diff", final.baseline_skill_id, final.current_skill_id)
    assert f"+{PHRASE}" in pair.stdout


async def test_optimisation_finds_and_keeps_the_phrase(
    backends: Backends, service_env: dict[str, str], suite_dir: Path, tmp_path: Path
) -> None:
    models = Models()
    started = time.monotonic()
    async with orchestrator(
        backends, service_env, models, models=("target", "optimiser"), suite_dirs=[MINI, suite_dir]
    ) as h:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await h.stub.CreateSkillOptimization(
                opb.CreateSkillOptimizationRequest(optimization=optimization(selection_size=9))
            )
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        with pytest.raises(grpc.aio.AioRpcError) as err:  # add-5 is a TRAIN task
            await h.stub.CreateSkillOptimization(
                opb.CreateSkillOptimizationRequest(optimization=optimization(test_task_ids=["add-5"]))
            )
        assert "optimization.test_task_ids" in err.value.details()
        req = opb.CreateSkillOptimizationRequest(optimization=optimization(), request_id="opt-1")
        created = (await h.stub.CreateSkillOptimization(req)).optimization
        assert (await h.stub.CreateSkillOptimization(req)).optimization.id == created.id
        assert created.steps_total == 2 and len(created.resolved_selection_task_ids) == 2
        final = await wait_end(h.stub, created.id)
        check_outcome(final, suite_dir, h.objects)
        listed = await h.stub.ListSkills(opb.ListSkillsRequest(optimization_id=created.id))
        assert {s.id for s in listed.skills} == {
            final.steps[0].candidate_skill_id,
            final.steps[1].candidate_skill_id,
        }
        parents = {s.id: s.parent_id for s in listed.skills}
        assert parents[final.steps[0].candidate_skill_id] == final.baseline_skill_id
        assert parents[final.steps[1].candidate_skill_id] == final.steps[0].candidate_skill_id
        await check_cli(h.address, final, tmp_path)
    assert time.monotonic() - started < 90


async def test_optimisation_resumes_after_sigkill_mid_step(
    backends: Backends, service_env: dict[str, str], suite_dir: Path, tmp_path: Path
) -> None:
    """SIGKILL the orchestrator twice: while step 1's evaluation run has an episode in flight,
    and while step 2's reflection waits on the optimiser. The process started after each finishes
    with the exact history (no stage twice, none skipped), one run per stage (the interrupted run
    is resumed, not made again) and no kept optimiser answer asked for again."""
    models = Models()
    models.hold_target = True
    models.hold_reflection = True
    async with ScriptedModelServer(models, models=("target", "optimiser")) as server:
        env = {
            **service_env,
            "FLYWHEEL_SANDBOX_ADDRESS": backends.sandbox,
            "FLYWHEEL_TRAJECTORY_ADDRESS": backends.trajectory,
            "FLYWHEEL_ORCHESTRATOR_SUITE_DIRS": json.dumps([str(MINI), str(suite_dir)]),
            "FLYWHEEL_ORCHESTRATOR_GATEWAY_BASE_URL": server.base_url,
            "FLYWHEEL_ORCHESTRATOR_MODEL_MAX_RETRIES": "0",
        }

        def boot(name: str) -> tuple[subprocess.Popen, str]:
            folder = tmp_path / name
            folder.mkdir()
            proc, info, _ = start_module("flywheel_orchestrator", "FLYWHEEL_ORCHESTRATOR_", env, folder)
            return proc, f"127.0.0.1:{info['port']}"

        async def kill_when(
            address: str, opt_id: str, ready: Callable[[spb.SkillOptimization], bool], proc: subprocess.Popen
        ) -> None:
            try:
                async with auth.channel(address) as ch:
                    stub = orchestrator_pb2_grpc.OrchestratorServiceStub(ch)
                    deadline = time.monotonic() + 60
                    while True:
                        req = opb.GetSkillOptimizationRequest(optimization_id=opt_id)
                        got = (await stub.GetSkillOptimization(req)).optimization
                        assert got.state == common_pb2.JOB_STATE_RUNNING, got.error
                        if ready(got):
                            return
                        assert time.monotonic() < deadline, got
                        await asyncio.sleep(0.1)
            finally:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(10)

        proc, address = boot("first")
        async with auth.channel(address) as ch:
            stub = orchestrator_pb2_grpc.OrchestratorServiceStub(ch)
            req = opb.CreateSkillOptimizationRequest(optimization=optimization(), request_id="opt-kill")
            created = (await stub.CreateSkillOptimization(req)).optimization
        # 1. Step 1's candidate (the first prompt with the phrase) is being evaluated: kill.
        await kill_when(
            address,
            created.id,
            lambda o: o.stage == S.SKILL_OPT_STAGE_EVALUATE and models.target_held > 0,
            proc,
        )
        models.hold_target = False
        models.release_target.set()
        proc, address = boot("second")
        # 2. Step 2's second reflection waits on the optimiser (its first one was kept): kill.
        await kill_when(
            address,
            created.id,
            lambda o: (
                o.stage == S.SKILL_OPT_STAGE_REFLECT
                and len(o.steps) == 2
                and models.calls.count("reflect") >= 4
            ),
            proc,
        )
        before = models.calls.count("reflect")
        models.hold_reflection = False
        models.release.set()
        proc, address = boot("third")
        try:
            async with auth.channel(address) as ch:
                stub = orchestrator_pb2_grpc.OrchestratorServiceStub(ch)
                final = await wait_end(stub, created.id)
                runs = (await stub.ListRuns(opb.ListRunsRequest(suite="adders", page_size=100))).runs
        finally:
            proc.terminate()
            proc.wait(10)
        check_outcome(final, suite_dir, Path(service_env["FLYWHEEL_OBJECT_STORE_ROOT"]))
        # Step 2's first reflection had answered and was kept: it is read back, not asked again;
        # only the held one is asked again (and step 1's completed stage is not re-run at all).
        assert before == 4 and models.calls.count("reflect") == 4 + 1
        mine = [r for r in runs if r.labels.get("skill_optimization_id") == created.id]
        # baseline, 2 x (rollout, eval), TEST of the baseline and of the final (= best) skill:
        # the evaluation run cut by the first kill was resumed, not made a second time.
        assert len(mine) == 7 and all(r.state == common_pb2.JOB_STATE_SUCCEEDED for r in mine)
        assert sum(1 for r in mine if r.id == final.steps[0].eval_run_id) == 1


async def test_cancel_stops_the_optimisation_and_its_run(
    backends: Backends, service_env: dict[str, str], suite_dir: Path
) -> None:
    models = Models()
    models.hold_reflection = True  # step 2 would wait; the cancel comes long before
    async with orchestrator(
        backends, service_env, models, models=("target", "optimiser"), suite_dirs=[MINI, suite_dir]
    ) as h:
        req = opb.CreateSkillOptimizationRequest(optimization=optimization())
        created = (await h.stub.CreateSkillOptimization(req)).optimization
        cancel = opb.CancelSkillOptimizationRequest(optimization_id=created.id)
        await h.stub.CancelSkillOptimization(cancel)
        final = await wait_end(h.stub, created.id)
        assert final.state == common_pb2.JOB_STATE_CANCELLED and final.stage != S.SKILL_OPT_STAGE_DONE
        runs = (await h.stub.ListRuns(opb.ListRunsRequest(suite="adders", page_size=100))).runs
        mine = [r for r in runs if r.labels.get("skill_optimization_id") == created.id]
        assert all(r.state in (common_pb2.JOB_STATE_CANCELLED, common_pb2.JOB_STATE_SUCCEEDED) for r in mine)
        listed = await h.stub.ListSkillOptimizations(
            opb.ListSkillOptimizationsRequest(state=common_pb2.JOB_STATE_CANCELLED)
        )
        assert [o.id for o in listed.optimizations] == [created.id]
    models.release.set()


async def test_a_target_that_never_answers_fails_the_optimisation(
    backends: Backends, service_env: dict[str, str], suite_dir: Path
) -> None:
    def down(model: str, messages: list[dict[str, Any]], tools: Any) -> Any:
        return Fail(503, "no base model to serve")

    async with orchestrator(
        backends,
        service_env,
        down,
        models=("target", "optimiser"),
        suite_dirs=[MINI, suite_dir],
        model_max_retries=0,
    ) as h:
        req = opb.CreateSkillOptimizationRequest(optimization=optimization())
        created = (await h.stub.CreateSkillOptimization(req)).optimization
        final = await wait_end(h.stub, created.id)
        assert final.state == common_pb2.JOB_STATE_FAILED
        assert final.error.code == grpc.StatusCode.UNAVAILABLE.value[0]
        assert "(baseline): every episode ended on an infrastructure error" in final.error.message
        assert [r.stage for r in final.history] == []  # failed in BASELINE: no stage completed


async def test_two_epochs_carry_the_meta_skill(
    backends: Backends, service_env: dict[str, str], suite_dir: Path
) -> None:
    """Epoch 2 walks the minibatches again (another order) and its reflections see the meta skill
    that epoch 1 ended with; the sabotage is rejected again and the phrase stays."""
    models = Models()
    models.meta_json = True
    async with orchestrator(
        backends, service_env, models, models=("target", "optimiser"), suite_dirs=[MINI, suite_dir]
    ) as h:
        req = opb.CreateSkillOptimizationRequest(optimization=optimization(epochs=2))
        created = (await h.stub.CreateSkillOptimization(req)).optimization
        assert created.steps_total == 4
        final = await wait_end(h.stub, created.id)
    assert final.state == common_pb2.JOB_STATE_SUCCEEDED, final.error
    assert [(s.epoch, s.slow_update) for s in final.steps] == [
        (0, False),
        (0, False),
        (0, True),
        (1, False),
        (1, False),
        (1, True),
    ]
    pools = [
        sorted(t for s in final.steps if s.epoch == e and not s.slow_update for t in s.train_task_ids)
        for e in (0, 1)
    ]
    assert pools[0] == pools[1] and len(pools[0]) == 7  # every pool task once per epoch
    assert final.meta_skill_text == "LESSON: naming K helps; printing 0 hurts."
    epoch1 = models.reflect_prompts[4:]  # step 1: 2 failure batches, step 2: 2 success batches
    assert epoch1 and all("LESSON: naming K helps" in p for p in epoch1)
    assert not any("LESSON" in p for p in models.reflect_prompts[:4])
    assert [s.decision for s in final.steps if not s.slow_update] == [
        S.SKILL_GATE_DECISION_ACCEPTED,
        S.SKILL_GATE_DECISION_REJECTED,
        S.SKILL_GATE_DECISION_REJECTED,
        S.SKILL_GATE_DECISION_REJECTED,
    ]
    assert (final.test.baseline, final.test.best, final.test.final) == (0.0, 1.0, 1.0)
    stages = [h.stage for h in final.history]
    assert stages.count(S.SKILL_OPT_STAGE_META_SKILL) == 2 and stages[-1] == S.SKILL_OPT_STAGE_TEST
