"""Joint loops (skill optimisation and a LoRA round, in either order, compared on TEST), through the
real orchestrator, sandbox runner, trajectory store, dataset builder and NATS.

Stand-ins, and why:

- the models: a scripted OpenAI-compatible server (flywheel_testing.scripted_model), because a
  hosted optimiser cannot run in CI and the figures must be exact. The base ``target`` solves an
  ``add-K`` problem exactly when its system prompt holds ``PHRASE`` and K is odd; every adapter
  (``ft/agent-vN``) solves it when K is even, or when the prompt holds ``PHRASE``; the ``teacher``
  always solves it; the ``optimiser`` always proposes appending ``PHRASE``. The alias ``agent/agent``
  answers like the adapters, standing in for the gateway's alias routing (tested in
  gateway/tests/test_aliases.py and tests/test_rounds_e2e.py);
- the trainer: an in-process gRPC TrainerService that publishes ``agent`` v1, v2, … at once. The
  adapters' behaviour is scripted above, so weights a real trainer made could not be served here
  anyway; real training is covered by trainer-svc's tests and tests/test_rounds_e2e.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from flywheel.common.v1 import common_pb2
from flywheel.orchestrator.v1 import alias_pb2 as apb
from flywheel.orchestrator.v1 import loop_pb2 as lpb
from flywheel.orchestrator.v1 import orchestrator_pb2 as opb
from flywheel.orchestrator.v1 import orchestrator_pb2_grpc, run_pb2
from flywheel.orchestrator.v1 import skill_pb2 as spb
from flywheel.trainer.v1 import trainer_pb2 as trpb
from flywheel.trainer.v1 import trainer_pb2_grpc
from flywheel_common import auth
from flywheel_common.jobs import now
from flywheel_orchestrator import skillopt, skills
from flywheel_orchestrator.service import build_app
from flywheel_orchestrator.settings import OrchestratorSettings
from flywheel_orchestrator.suites import load_folder
from flywheel_testing.processes import start_module
from flywheel_testing.scripted_model import ScriptedModelServer, json_call, text
from flywheel_testing.services import boot_service

from .conftest import MINI, Backends

TRAIN, TEST = common_pb2.TASK_SPLIT_TRAIN, common_pb2.TASK_SPLIT_TEST
PHRASE = "Add the constant K named in the question to n."
INITIAL = "# Playbook\n\nSolve the problem.\n"
OPTIMISED = skills.apply_edits(INITIAL, [spb.SkillEdit(op=spb.SKILL_EDIT_OP_APPEND, content=PHRASE)])
ALIAS = "agent/agent"
ADAPTERS = ("ft/agent-v1", "ft/agent-v2")
S = lpb
pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def suite_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Ten repo tasks ``add-K``: ``calc.f(n)`` must return n+K (the JSON tool protocol, whose
    trajectories the ``step_sft`` recipe of the LoRA rounds learns from)."""
    root = tmp_path_factory.mktemp("joint-suite") / "adders"
    (root / "tasks").mkdir(parents=True)
    (root / "suite.toml").write_text(
        'name = "adders"\ndescription = "calc.f(n) returns n+K."\ntrain_ratio = 0.7\nsplit_seed = "joint-3"\n'
    )
    for k in range(1, 11):
        task = root / "tasks" / f"add-{k}"
        (task / "repo" / "tests").mkdir(parents=True)
        (task / "fix").mkdir()
        (task / "task.toml").write_text(
            f'title = "add {k}"\nproblem_statement = "calc.f(n) must return n+K where K={k}."\n'
            'fail_to_pass = ["tests/test_calc.py::test_f"]\npass_to_pass = []\n'
        )
        (task / "repo" / "calc.py").write_text("def f(n):\n    return n\n")
        (task / "repo" / "tests" / "test_calc.py").write_text(
            f"from calc import f\n\n\ndef test_f():\n    assert f(1) == {1 + k}\n"
        )
        (task / "fix" / "calc.py").write_text(f"def f(n):\n    return n + {k}\n")
    return root


def k_of(task_id: str) -> int:
    return int(task_id.removeprefix("add-"))


@pytest.fixture(scope="module")
def tasks(suite_dir: Path) -> dict[str, list[str]]:
    """Task ids chosen so that each method gains on TEST: one odd and one even K on each side."""
    suite = load_folder(suite_dir)
    train = sorted((t.id for t in suite.select(TRAIN, [])), key=k_of)
    test = sorted((t.id for t in suite.select(TEST, [])), key=k_of)
    odd = [t for t in test if k_of(t) % 2]
    even = [t for t in test if not k_of(t) % 2]
    assert odd and even, f"the split gives no TEST task of one parity: {test}"
    sel = [next(t for t in train if k_of(t) % 2), next(t for t in train if not k_of(t) % 2)]
    return {"test": [odd[0], even[0]], "selection": sel, "lora": [t for t in train if t not in sel][:2]}


@pytest.fixture(scope="module")
def dataset_svc(backends: Backends, nats_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The real dataset builder, reading the trajectory store's trajectories."""
    root = tmp_path_factory.mktemp("dataset-svc")
    env = {
        "FLYWHEEL_NATS_URL": nats_url,
        "FLYWHEEL_OBJECT_STORE_BACKEND": "fs",
        "FLYWHEEL_OBJECT_STORE_ROOT": str(root / "objects"),
        "FLYWHEEL_TRAJECTORY_ADDRESS": backends.trajectory,
    }
    proc, info, _ = start_module("flywheel_dataset", "FLYWHEEL_DATASET_", env, root)
    try:
        yield f"127.0.0.1:{info['port']}"
    finally:
        proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(10)
        if proc.poll() is None:
            proc.kill()


class Trainer(trainer_pb2_grpc.TrainerServiceServicer):
    """Publishes the next version of the job's adapter at once; one job per request id."""

    def __init__(self) -> None:
        self.jobs: dict[str, trpb.FineTuneJob] = {}
        self.by_request: dict[str, str] = {}
        self.versions: dict[str, int] = {}

    async def CreateFineTuneJob(self, request: Any, context: Any) -> trpb.CreateFineTuneJobResponse:
        if request.request_id in self.by_request:
            return trpb.CreateFineTuneJobResponse(job=self.jobs[self.by_request[request.request_id]])
        job = trpb.FineTuneJob()
        job.CopyFrom(request.job)
        name = job.adapter_name
        self.versions[name] = self.versions.get(name, 0) + 1
        job.id = f"ftj-{len(self.jobs) + 1}"
        job.state = common_pb2.JOB_STATE_SUCCEEDED
        job.device = "cpu (stand-in)"
        job.adapter.CopyFrom(trpb.AdapterRef(name=name, version=self.versions[name]))
        job.start_time.CopyFrom(now())
        job.end_time.FromNanoseconds(job.start_time.ToNanoseconds() + 2_500_000_000)  # 2.5 s
        self.jobs[job.id] = job
        self.by_request[request.request_id] = job.id
        return trpb.CreateFineTuneJobResponse(job=job)

    async def GetFineTuneJob(self, request: Any, context: Any) -> trpb.GetFineTuneJobResponse:
        return trpb.GetFineTuneJobResponse(job=self.jobs[request.job_id])

    async def CancelFineTuneJob(self, request: Any, context: Any) -> trpb.CancelFineTuneJobResponse:
        return trpb.CancelFineTuneJobResponse(job=self.jobs[request.job_id])


class Models:
    """The scripted models; ``hold_reflection`` keeps every optimiser answer waiting (to restart in it)."""

    def __init__(self) -> None:
        self.hold_reflection = False
        self.held = asyncio.Event()
        self.release = asyncio.Event()

    async def _held(self, answer: dict[str, Any]) -> dict[str, Any]:
        self.held.set()
        await asyncio.wait_for(self.release.wait(), timeout=120)
        return answer

    def __call__(self, model: str, messages: list[dict[str, Any]], tools: Any) -> Any:
        system, user = messages[0]["content"], messages[1]["content"]
        if model == "optimiser":
            assert system == skillopt.REFLECT_SYSTEM, "only reflections are asked for here"
            edit = {"op": "append", "content": PHRASE, "rationale": "K is ignored", "support": 1}
            answer = text(json.dumps({"edits": [edit]}))
            return self._held(answer) if self.hold_reflection else answer
        found = re.search(r"K=(\d+)", user)
        assert found is not None
        k, phrase = int(found.group(1)), PHRASE in system
        if model == "teacher":
            good = True
        elif model == "target":
            good = phrase and k % 2 == 1
        else:  # an adapter, or the alias (which serves one)
            good = k % 2 == 0 or phrase
        if len(messages) > 2:  # the write's result is back: done
            return text(json.dumps({"type": "final", "answer": "done"}))
        body = f"def f(n):\n    return n + {k}\n" if good else "def f(n):\n    return 0\n"
        return json_call("write_file", {"rel_path": "calc.py", "content": body})


@contextlib.asynccontextmanager
async def trainer_server() -> AsyncIterator[tuple[Trainer, str]]:
    server = grpc.aio.server()
    trainer = Trainer()
    trainer_pb2_grpc.add_TrainerServiceServicer_to_server(trainer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield trainer, f"127.0.0.1:{port}"
    finally:
        await server.stop(grace=1.0)


@contextlib.asynccontextmanager
async def orchestrator(
    backends: Backends,
    service_env: dict[str, str],
    suite_dir: Path,
    model_url: str,
    dataset: str,
    trainer: str,
) -> AsyncIterator[orchestrator_pb2_grpc.OrchestratorServiceStub]:
    env = {
        **service_env,
        "FLYWHEEL_SANDBOX_ADDRESS": backends.sandbox,
        "FLYWHEEL_TRAJECTORY_ADDRESS": backends.trajectory,
        "FLYWHEEL_DATASET_ADDRESS": dataset,
        "FLYWHEEL_TRAINER_ADDRESS": trainer,
    }
    settings = {
        "gateway_base_url": model_url,
        "model_max_retries": 2,
        "suite_dirs": [MINI, suite_dir],
        "loop_reconcile_s": 1.0,
        "loop_retry_s": 1.0,
        "loop_hot_load_poll_s": 0.5,
    }
    async with boot_service(build_app, OrchestratorSettings, env, **settings) as address:
        async with auth.channel(address) as channel:
            yield orchestrator_pb2_grpc.OrchestratorServiceStub(channel)


def scripted(models: Models) -> ScriptedModelServer:
    return ScriptedModelServer(
        models,
        models=("target", "teacher", "optimiser", *ADAPTERS, ALIAS),
        listing={
            **{a: {"parent": "target"} for a in ADAPTERS},
            ALIAS: {"flywheel_alias": True},
        },
    )


def joint_loop(kind: int, tasks: dict[str, list[str]]) -> lpb.Loop:
    return lpb.Loop(
        kind=kind,
        suite="adders",
        base_model="tiny-base",
        incumbent_model="target",
        teacher_model="teacher",
        adapter_name="agent",
        train_task_ids=tasks["lora"],
        test_task_ids=tasks["test"],
        joint=lpb.JointLoopConfig(
            skill_optimization=spb.SkillOptimization(
                optimizer_model="optimiser",
                initial_skill=run_pb2.SkillSource(text=INITIAL),
                selection_task_ids=tasks["selection"],
                minibatch_size=2,
                reflect_batch_size=2,
                max_steps=1,
                seed=3,
            )
        ),
    )


async def until(check: Callable[[], Any], what: str, limit_s: float = 120) -> Any:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        got = await check()
        if got:
            return got
        await asyncio.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


async def ended(stub: orchestrator_pb2_grpc.OrchestratorServiceStub, loop_id: str) -> lpb.Loop:
    async def done() -> lpb.Loop | None:
        lp = (await stub.GetLoop(opb.GetLoopRequest(loop_id=loop_id))).loop
        return lp if lp.state in (common_pb2.JOB_STATE_SUCCEEDED, common_pb2.JOB_STATE_FAILED) else None

    lp: lpb.Loop = await until(done, f"loop {loop_id} to end")
    assert lp.state == common_pb2.JOB_STATE_SUCCEEDED, lp.error.message
    return lp


async def run_of(stub: orchestrator_pb2_grpc.OrchestratorServiceStub, run_id: str) -> run_pb2.Run:
    return (await stub.GetRun(opb.GetRunRequest(run_id=run_id))).run


def expected_rate(test: list[str], model: str, phrase: bool) -> float:
    """Pass rate of one arm on ``test`` under the scripted models."""
    solved = [
        (phrase and k_of(t) % 2 == 1) if model == "target" else (k_of(t) % 2 == 0 or phrase) for t in test
    ]
    return sum(solved) / len(solved)


async def check_figures(
    stub: orchestrator_pb2_grpc.OrchestratorServiceStub,
    lp: lpb.Loop,
    tasks: dict[str, list[str]],
    objects: Path,
) -> None:
    """The comparison is exact: pass rates and gains from the scripted models, and each arm's spend
    the sum of what its children recorded."""
    start_skill = skills.skill_id(INITIAL)
    optimised = skills.skill_id(OPTIMISED)
    test = tasks["test"]
    arms = {a.kind: a for a in lp.joint_arms}
    assert list(arms) == [
        S.JOINT_ARM_KIND_START,
        S.JOINT_ARM_KIND_SKILL,
        S.JOINT_ARM_KIND_LORA,
        S.JOINT_ARM_KIND_BOTH,
    ]
    both_adapter = "ft/agent-v1"
    lora_adapter = "ft/agent-v2" if lp.kind == S.LOOP_KIND_SKILL_THEN_LORA else "ft/agent-v1"
    want = {
        S.JOINT_ARM_KIND_START: ("target", start_skill, expected_rate(test, "target", False)),
        S.JOINT_ARM_KIND_SKILL: ("target", optimised, expected_rate(test, "target", True)),
        S.JOINT_ARM_KIND_LORA: (lora_adapter, start_skill, expected_rate(test, "ft", False)),
        S.JOINT_ARM_KIND_BOTH: (both_adapter, optimised, expected_rate(test, "ft", True)),
    }
    assert want[S.JOINT_ARM_KIND_START][2] == 0.0 and want[S.JOINT_ARM_KIND_BOTH][2] == 1.0
    for kind, (model, skill, rate) in want.items():
        a = arms[kind]
        assert (a.model, a.skill_id) == (model, skill), lpb.JointArmKind.Name(kind)
        assert (a.episodes, a.pass_rate, a.gain) == (len(test), rate, rate), lpb.JointArmKind.Name(kind)
        assert (a.parse_errors_per_episode, a.write_rate) == (0.0, 1.0)  # every scripted episode writes
        run = await run_of(stub, a.run_id)
        assert run.split == TEST and run.model == model and run.episode.skill.skill_id == skill
    # What each child spent, recomputed from the children themselves.
    spends = []
    for step in lp.joint_steps:
        spend = lpb.JointSpend()
        if step.what == "skill":
            o = (
                await stub.GetSkillOptimization(
                    opb.GetSkillOptimizationRequest(optimization_id=step.child_id)
                )
            ).optimization
            # baseline (2 selection tasks) + one step's minibatch (2) + its selection run (2)
            spend.rollouts = 6
            for u in o.usage:
                if u.stage != spb.SKILL_OPT_STAGE_TEST:
                    spend.target_tokens.prompt_tokens += u.target.prompt_tokens
                    spend.target_tokens.completion_tokens += u.target.completion_tokens
                    spend.optimizer_tokens.prompt_tokens += u.optimizer.prompt_tokens
                    spend.optimizer_tokens.completion_tokens += u.optimizer.completion_tokens
            assert spend.optimizer_tokens.prompt_tokens > 0 and spend.target_tokens.prompt_tokens > 0
            assert step.spend.train_seconds == 0 and step.spend.inference_seconds > 0
        else:
            child = (await stub.GetLoop(opb.GetLoopRequest(loop_id=step.child_id))).loop
            (rollouts,) = [s for s in child.stages if s.stage == S.LOOP_STAGE_ROLLOUTS]
            run = await run_of(stub, rollouts.artefacts[0].id)
            assert run.model == "teacher" and run.episode.skill.skill_id == step.start_skill_id
            spend.rollouts = len(tasks["lora"])
            spend.target_tokens.CopyFrom(run.counters.usage)
            spend.train_seconds, spend.train_device = 2.5, "cpu (stand-in)"
            assert not child.promotion.alias, "a joint loop's round never moves an alias itself"
        got = lpb.JointSpend()
        got.CopyFrom(step.spend)
        got.inference_seconds = 0.0
        assert got == spend, step.child_id
        spends.append(step.spend)
    sequence = [i for i, s in enumerate(lp.joint_steps) if s.role == "sequence"]
    assert sequence == [0, 1]
    both = arms[S.JOINT_ARM_KIND_BOTH].spend
    assert both.rollouts == spends[0].rollouts + spends[1].rollouts
    assert both.inference_seconds == pytest.approx(spends[0].inference_seconds + spends[1].inference_seconds)
    assert not arms[S.JOINT_ARM_KIND_START].spend.rollouts
    # The report and its plot are stored with the loop.
    report = (objects / lp.report.key).read_text()
    assert "| both |" in report and "joint.png" in report
    assert (objects / f"reports/{lp.id}/joint.png").read_bytes()[:4] == b"\x89PNG"


# ---------------------------------------------------------------------------------- tests


async def test_skill_then_lora_runs_in_order_reports_exactly_and_promotes_the_pair(
    backends: Backends,
    service_env: dict[str, str],
    suite_dir: Path,
    tasks: dict[str, list[str]],
    dataset_svc: str,
) -> None:
    models = Models()
    objects = Path(service_env["FLYWHEEL_OBJECT_STORE_ROOT"])
    async with scripted(models) as server, trainer_server() as (trainer, trainer_addr):
        async with orchestrator(
            backends, service_env, suite_dir, server.base_url, dataset_svc, trainer_addr
        ) as stub:
            bad = joint_loop(S.LOOP_KIND_SKILL_THEN_LORA, tasks)
            bad.joint.skill_optimization.ClearField("optimizer_model")
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.CreateLoop(opb.CreateLoopRequest(loop=bad))
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "joint.skill_optimization.optimizer_model" in err.value.details()

            created = (
                await stub.CreateLoop(
                    opb.CreateLoopRequest(loop=joint_loop(S.LOOP_KIND_SKILL_THEN_LORA, tasks))
                )
            ).loop
            lp = await ended(stub, created.id)

            # Both stages in order: the skill first, then the LoRA round that plays with it; then
            # the LoRA-alone arm, the comparison and the promotion.
            assert [s.stage for s in lp.stages] == [
                S.LOOP_STAGE_SKILL_OPTIMIZATION,
                S.LOOP_STAGE_ROUND,
                S.LOOP_STAGE_ROUND,
                S.LOOP_STAGE_COMPARISON,
                S.LOOP_STAGE_PROMOTION,
            ]
            first, second, third = lp.joint_steps
            assert [(s.what, s.role) for s in lp.joint_steps] == [
                ("skill", "sequence"),
                ("lora", "sequence"),
                ("lora", "comparison"),
            ]
            assert second.start_skill_id == first.result_skill_id != third.start_skill_id
            assert (second.result_model, third.result_model) == ADAPTERS
            assert lp.stages[0].end_time.ToNanoseconds() <= lp.stages[1].start_time.ToNanoseconds()
            await check_figures(stub, lp, tasks, objects)

            # The pair wins and is promoted: the alias serves the adapter with the skill.
            assert lp.gate_result.decision == S.GATE_DECISION_PROMOTE
            assert (lp.candidate_model, lp.candidate_skill_id) == ("ft/agent-v1", first.result_skill_id)
            alias = (await stub.GetAlias(apb.GetAliasRequest(name=ALIAS))).alias
            target = alias.current.target
            assert (target.model, target.skill_id) == ("ft/agent-v1", first.result_skill_id)
            assert target.skill_sha256 == skills.sha256(OPTIMISED)
            assert alias.current.loop_id == lp.id and lp.promotion.outcome == S.PROMOTION_OUTCOME_PROMOTED

            # A run of the alias that names no skill plays with the alias's skill and resolves
            # every task the pair can; one that names its own skill keeps it.
            run = run_pb2.Run(suite="adders", split=TEST, task_ids=tasks["test"], model=ALIAS)
            made = (await stub.CreateRun(opb.CreateRunRequest(run=run))).run
            assert made.episode.skill.skill_id == first.result_skill_id
            assert made.skill_sha256 == target.skill_sha256

            async def finished() -> run_pb2.Run | None:
                r = await run_of(stub, made.id)
                return r if r.state == common_pb2.JOB_STATE_SUCCEEDED else None

            done = await until(finished, "the alias's run")
            assert done.counters.episodes_resolved == len(tasks["test"])
            own = run_pb2.Run(
                suite="adders",
                split=TEST,
                task_ids=tasks["test"],
                model=ALIAS,
                episode=run_pb2.EpisodeSettings(skill=run_pb2.SkillSource(text=INITIAL)),
            )
            kept = (await stub.CreateRun(opb.CreateRunRequest(run=own))).run
            assert kept.episode.skill.skill_id == skills.skill_id(INITIAL)
            await until(lambda: finished_run(stub, kept.id), "the run with its own skill")
    assert len(trainer.jobs) == 2


async def finished_run(stub: orchestrator_pb2_grpc.OrchestratorServiceStub, run_id: str) -> bool:
    return (await run_of(stub, run_id)).state == common_pb2.JOB_STATE_SUCCEEDED


async def test_lora_then_skill_resumes_after_a_restart_without_repeating_a_stage(
    backends: Backends,
    service_env: dict[str, str],
    suite_dir: Path,
    tasks: dict[str, list[str]],
    dataset_svc: str,
) -> None:
    models = Models()
    models.hold_reflection = True
    objects = Path(service_env["FLYWHEEL_OBJECT_STORE_ROOT"])
    loop = joint_loop(S.LOOP_KIND_LORA_THEN_SKILL, tasks)
    async with scripted(models) as server, trainer_server() as (trainer, trainer_addr):
        args = (backends, service_env, suite_dir, server.base_url, dataset_svc, trainer_addr)
        async with orchestrator(*args) as stub:
            created = (
                await stub.CreateLoop(opb.CreateLoopRequest(loop=loop, request_id="joint-resume"))
            ).loop
            # The LoRA round ends and the skill optimisation of its adapter starts reflecting: stop there.
            await asyncio.wait_for(models.held.wait(), timeout=120)
            before = (await stub.GetLoop(opb.GetLoopRequest(loop_id=created.id))).loop
            assert [s.stage for s in before.stages] == [S.LOOP_STAGE_ROUND, S.LOOP_STAGE_SKILL_OPTIMIZATION]
            assert before.joint_steps[0].result_model == "ft/agent-v1"
        models.hold_reflection = False
        models.release.set()  # the answer goes to the stopped orchestrator and is lost
        async with orchestrator(*args) as stub:
            again = (await stub.CreateLoop(opb.CreateLoopRequest(loop=loop, request_id="joint-resume"))).loop
            assert again.id == created.id
            lp = await ended(stub, created.id)
            assert [s.stage for s in lp.stages] == [
                S.LOOP_STAGE_ROUND,
                S.LOOP_STAGE_SKILL_OPTIMIZATION,
                S.LOOP_STAGE_SKILL_OPTIMIZATION,
                S.LOOP_STAGE_COMPARISON,
                S.LOOP_STAGE_PROMOTION,
            ]
            # No stage repeated: the same children as before the restart, one of each per step.
            assert [s.child_id for s in lp.joint_steps[:2]] == [s.child_id for s in before.joint_steps]
            assert lp.joint_steps[1].start_model == "ft/agent-v1"
            assert lp.joint_steps[2].start_model == "target"
            assert [s.what for s in lp.joint_steps] == ["lora", "skill", "skill"]
            opts = (await stub.ListSkillOptimizations(opb.ListSkillOptimizationsRequest())).optimizations
            assert sorted(o.id for o in opts if o.labels.get("loop_id") == lp.id) == sorted(
                s.child_id for s in lp.joint_steps if s.what == "skill"
            )
            resumed = next(o for o in opts if o.id == lp.joint_steps[1].child_id)
            assert [h.stage for h in resumed.history].count(spb.SKILL_OPT_STAGE_REFLECT) == 1
            loops = (await stub.ListLoops(opb.ListLoopsRequest())).loops
            assert [x.id for x in loops if x.parent_loop_id == lp.id] == [lp.joint_steps[0].child_id]
            await check_figures(stub, lp, tasks, objects)
            assert (lp.candidate_model, lp.candidate_skill_id) == (
                "ft/agent-v1",
                lp.joint_steps[1].result_skill_id,
            )
            alias = (await stub.GetAlias(apb.GetAliasRequest(name=ALIAS))).alias
            assert [r.change for r in alias.history] == [apb.ALIAS_CHANGE_SET]
    assert len(trainer.jobs) == 1
