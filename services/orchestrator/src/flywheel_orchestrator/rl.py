"""RL loops: GRPO on the agents' own episodes, iteration after iteration.

A loop of kind ``RL`` keeps the imitation loop's machinery (the job core, events, the stage
table, request ids, the reconcile sweep) and changes what the stages do. Each iteration k:

1. **rollouts**: the current policy P_k plays ``rl.samples_per_task`` (G) episodes of every TRAIN
   task with token records on (``record_tokens``), at ``rl.temperature`` (1.0) and without the
   episode settings' seed (a seed would make a group's samples alike). The run pins
   the adapter digest it started with; a turn from another digest is a masked MODEL_ERROR.
2. **dataset**: ``grpo_groups`` over that run alone, pinned to P_k (``policy_adapter`` and, when
   the gateway reports one, ``policy_digest``): the builder refuses any episode from another
   version, so the trainer never sees stale rollouts. When no task's group has a spread of
   rewards there is nothing to learn; the iteration ends without training and P_{k+1} = P_k.
3. **fine-tune**: a GRPO job from P_k (``init_adapter``; the base for P_1 without a warm start)
   publishing the next version of ``adapter_name``; the trainer checks the dataset's policy
   against its own registry's digest of ``init_adapter``.
4. **hot-load**: the new version is served (adapter sync verified its digest) → P_{k+1}.
5. **evaluation** every ``rl.eval_every`` iterations and after the last: the current policy
   against the loop's incumbent (and the starting policy, when that differs) on TEST.

Iteration 0 is the optional SFT warm start (seed 003's SFT → RL): reference demonstrations, a
``step_sft`` dataset and an SFT job; its adapter is P_1. After the last iteration the gate
compares the last evaluated policy with the incumbent, as in imitation loops. Every job of an
iteration has the request id ``<loop id>-i<k>-<stage>``, so a restart anywhere continues the
iteration it was in without a second run, build or job.
"""

from __future__ import annotations

import math
import re
import statistics
from collections import defaultdict
from typing import TYPE_CHECKING

import grpc

from flywheel.common.v1 import common_pb2
from flywheel.dataset.v1 import dataset_pb2 as dpb
from flywheel.orchestrator.v1 import evaluation_pb2 as epb
from flywheel.orchestrator.v1 import loop_pb2 as lpb
from flywheel.orchestrator.v1 import run_pb2
from flywheel.trainer.v1 import trainer_pb2 as trpb
from flywheel.trajectory.v1 import trajectory_pb2 as tpb
from flywheel_common.errors import InvalidArgument
from flywheel_common.jobs import RUNNING, SUCCEEDED, TERMINAL, JobFailed

if TYPE_CHECKING:
    from flywheel_orchestrator.loops import Handler, LoopJob, LoopManager

S = lpb
#: Group size when ``rl.samples_per_task`` is 0.
DEFAULT_SAMPLES = 8
#: Sampling temperature of RL rollouts when the loop's episode settings leave it unset.
DEFAULT_TEMPERATURE = 1.0
ADAPTER_ID = "^[a-z0-9][a-z0-9._-]{0,62}/v[1-9][0-9]*$"


def samples(loop: lpb.Loop) -> int:
    return loop.rl.samples_per_task or DEFAULT_SAMPLES


def validate(loop: lpb.Loop, max_rollouts: int, path: str = "loop") -> None:
    """The RL settings of a loop (the rest is checked as for every loop)."""
    rl = loop.rl
    if rl.iterations < 1:
        raise InvalidArgument(f"{path}.rl.iterations", "must be at least 1 for an RL loop")
    if rl.iterations > 1000:
        raise InvalidArgument(f"{path}.rl.iterations", "must be at most 1000")
    if rl.samples_per_task and not 2 <= rl.samples_per_task <= max_rollouts:
        raise InvalidArgument(
            f"{path}.rl.samples_per_task",
            f"must be between 2 and {max_rollouts} (a group needs two episodes to compare)",
        )
    if rl.eval_every < 0:
        raise InvalidArgument(f"{path}.rl.eval_every", "must be >= 0")
    if rl.init_adapter and not re.match(ADAPTER_ID, rl.init_adapter):
        raise InvalidArgument(f"{path}.rl.init_adapter", "must look like <name>/v<version>, e.g. coder/v3")
    if rl.init_adapter and rl.sft_warm_start:
        raise InvalidArgument(
            f"{path}.rl.init_adapter", "cannot be combined with sft_warm_start (which makes the start)"
        )
    if loop.method not in (0, trpb.FINE_TUNE_METHOD_GRPO):
        raise InvalidArgument(f"{path}.method", "an RL loop trains with GRPO: leave it unset or GRPO")
    if loop.recipe not in ("", "grpo_groups"):
        raise InvalidArgument(f"{path}.recipe", "an RL loop builds its datasets with grpo_groups")
    if rl.HasField("temperature") and not (0 < rl.temperature <= 2 and math.isfinite(rl.temperature)):
        raise InvalidArgument(
            f"{path}.rl.temperature", "must be in (0, 2]: greedy samples of a group are all alike"
        )


def warm_start_tasks(loop: lpb.Loop) -> list[str]:
    """The TRAIN tasks of the warm start's demonstrations (empty: the whole TRAIN side)."""
    return list(loop.rl.sft_task_ids or loop.train_task_ids)


def reward_spread(results: list[run_pb2.EpisodeResult]) -> bool:
    """Whether some task's unmasked episodes got different rewards (else GRPO has nothing to learn)."""
    by_task: dict[str, set[float]] = defaultdict(set)
    for r in results:
        if not r.reward_masked:
            by_task[r.task_id].add(round(r.reward, 9))
    return any(len(v) > 1 for v in by_task.values())


def reward_figures(it: lpb.RlIteration, results: list[run_pb2.EpisodeResult]) -> None:
    kept = [r.reward for r in results if not r.reward_masked]
    it.episodes = len(results)
    it.masked_episodes = len(results) - len(kept)
    it.reward_mean = statistics.fmean(kept) if kept else 0.0
    it.reward_std = statistics.pstdev(kept) if len(kept) > 1 else 0.0
    it.train_pass_rate = sum(r.resolved for r in results) / len(results) if results else 0.0


class RlStages:
    """The stage handlers of RL loops, used by :class:`LoopManager` for loops of kind RL."""

    def __init__(self, manager: LoopManager) -> None:
        self.m = manager
        self.handlers: dict[int, Handler] = {
            S.LOOP_STAGE_UNSPECIFIED: self._start,
            S.LOOP_STAGE_ROLLOUTS: self._after_rollouts,
            S.LOOP_STAGE_DATASET: self._after_dataset,
            S.LOOP_STAGE_FINE_TUNE: self._after_fine_tune,
            S.LOOP_STAGE_HOT_LOAD: self._after_hot_load,
            S.LOOP_STAGE_EVALUATION: self._after_evaluation,
            S.LOOP_STAGE_GATE: self.m._gate,
            S.LOOP_STAGE_PROMOTION: self.m._promotion,
        }

    # ------------------------------------------------------------------------------ helpers

    def _rid(self, loop: lpb.Loop, it: lpb.RlIteration, stage: str) -> str:
        return f"{loop.id}-i{it.index}-{stage}"

    def _route(self, adapter: trpb.AdapterRef) -> str:
        return f"{self.m.settings.adapter_route_prefix}{adapter.name}-v{adapter.version}"

    def start_model(self, loop: lpb.Loop) -> str:
        """The gateway name of the policy iteration 1 starts from (without a warm start)."""
        if loop.rl.init_adapter:
            name, _, version = loop.rl.init_adapter.partition("/v")
            return f"{self.m.settings.adapter_route_prefix}{name}-v{version}"
        return loop.base_model

    def _latest(self, loop: lpb.Loop, before: int) -> lpb.RlIteration | None:
        """The newest finished iteration before index ``before`` that published an adapter."""
        for it in reversed(loop.iterations):
            if it.index < before and it.state == SUCCEEDED and it.adapter.name:
                return it
        return None

    def policy_model(self, loop: lpb.Loop, before: int) -> str:
        """The gateway name of the policy iteration ``before`` samples: the newest adapter an
        earlier iteration published and loaded, else the start (the base or ``init_adapter``)."""
        latest = self._latest(loop, before)
        return self._route(latest.adapter) if latest is not None else self.start_model(loop)

    def policy_adapter_id(self, loop: lpb.Loop, before: int) -> str:
        """``name/vN`` of that policy; empty for the base model."""
        latest = self._latest(loop, before)
        if latest is not None:
            return f"{latest.adapter.name}/v{latest.adapter.version}"
        return loop.rl.init_adapter

    # ------------------------------------------------------------------------------ stages

    async def _start(self, job: LoopJob, cur: lpb.LoopStageStatus | None, event: object | None) -> bool:
        loop = job.resource
        if loop.rl.init_adapter and not loop.rl.sft_warm_start:
            start = self.start_model(loop)
            if not await self.m.models.answers(start):
                # The starting adapter is published but not served yet (just published, or a
                # replica restarted and adapter sync is still loading): iteration 1 would lose every
                # episode to "model does not exist". Wait for it as for a new version (hot-load
                # stage, its timeout and its load-failure event), then start iteration 1.
                name, _, version = loop.rl.init_adapter.partition("/v")
                loop.candidate_model = start
                ref = self.m._ref(common_pb2.RESOURCE_KIND_ADAPTER, f"{name}/{version}")
                await self.m._begin(job, S.LOOP_STAGE_HOT_LOAD, ref)
                return True
        await self._begin_iteration(job, 0 if loop.rl.sft_warm_start else 1)
        return False

    async def _begin_iteration(self, job: LoopJob, index: int) -> None:
        loop = job.resource
        it = lpb.RlIteration(index=index, stage=S.LOOP_STAGE_ROLLOUTS, state=RUNNING)
        episode = run_pb2.EpisodeSettings()
        episode.CopyFrom(loop.episode)
        if index == 0:
            run = run_pb2.Run(teacher_kind=tpb.TEACHER_KIND_REFERENCE, rollouts_per_task=1)
        else:
            it.policy_model = self.policy_model(loop, index)
            episode.record_tokens = True
            episode.sampling.temperature = (
                loop.rl.temperature if loop.rl.HasField("temperature") else DEFAULT_TEMPERATURE
            )
            episode.sampling.ClearField("seed")
            run = run_pb2.Run(
                teacher_kind=tpb.TEACHER_KIND_MODEL, model=it.policy_model, rollouts_per_task=samples(loop)
            )
        run.suite = loop.suite
        run.split = common_pb2.TASK_SPLIT_TRAIN
        run.task_ids.extend(warm_start_tasks(loop) if index == 0 else loop.train_task_ids)
        run.episode.CopyFrom(episode)
        run.concurrency = loop.concurrency
        run.labels.update({**loop.labels, "rl_iteration": str(index)})
        created = await self.m.runs.create(run, self._rid(loop, it, "rollouts"), loop_id=loop.id)
        it.run_id = created.id
        loop.iterations.append(it)
        await self.m._begin(job, S.LOOP_STAGE_ROLLOUTS, self.m._ref(common_pb2.RESOURCE_KIND_RUN, created.id))

    async def _after_rollouts(
        self, job: LoopJob, cur: lpb.LoopStageStatus | None, event: object | None
    ) -> bool:
        loop = job.resource
        it = loop.iterations[-1]
        run = self.m.runs.get(it.run_id)
        if run.state not in TERMINAL:
            return False
        if run.state != SUCCEEDED:
            raise JobFailed(
                f"iteration {it.index} rollouts: run {it.run_id} ended "
                f"{common_pb2.JobState.Name(run.state)}: {run.error.message}"
            )
        results = await self.m.runs.results(it.run_id)
        reward_figures(it, results)
        if run.HasField("adapter"):
            it.policy.CopyFrom(run.adapter)
        # Checked first: an all-masked run also has no spread of rewards.
        if it.index > 0 and it.episodes and it.masked_episodes == it.episodes:
            raise JobFailed(
                f"iteration {it.index}: every episode ended on an infrastructure error (all masked); "
                f"see run {it.run_id}",
                grpc.StatusCode.UNAVAILABLE,
            )
        if it.index > 0 and not reward_spread(results):
            # Every group's rewards are equal: zero advantages everywhere, nothing to learn. The
            # iteration ends here (no dataset, no adapter) and the next one samples the same
            # policy again.
            await self._end_iteration(job, it)
            return True
        build = await self._dataset_build(loop, it)
        it.dataset_build_id = build.id
        it.stage = S.LOOP_STAGE_DATASET
        await self.m._begin(
            job, S.LOOP_STAGE_DATASET, self.m._ref(common_pb2.RESOURCE_KIND_DATASET_BUILD, build.id)
        )
        return True

    async def _dataset_build(self, loop: lpb.Loop, it: lpb.RlIteration) -> dpb.DatasetBuild:
        if it.index == 0:
            recipe, params, formats = self.warm_start_recipe(loop)
        else:
            recipe = "grpo_groups"
            params = dict(loop.recipe_parameters)
            params["policy_adapter"] = self.policy_adapter_id(loop, it.index) or "base"
            if it.policy.digest:
                params["policy_digest"] = it.policy.digest
            formats = [dpb.OUTPUT_FORMAT_GRPO_TOKENS]
        # RL: every group trains (the held-out side is the suite's TEST split).
        split = loop.dataset_split if it.index == 0 else dpb.SplitConfig(train_ratio=1.0)
        build = dpb.DatasetBuild(
            source=dpb.DatasetSource(run_ids=[it.run_id]),
            recipe=recipe,
            parameters=params,
            split=split,
            formats=formats,
            target_base_model=loop.base_model,
            loop_id=loop.id,
            labels={**self.m._labels(loop), "rl_iteration": str(it.index)},
        )
        reply: dpb.CreateDatasetBuildResponse = await self.m.datasets.CreateDatasetBuild(
            dpb.CreateDatasetBuildRequest(build=build, request_id=self._rid(loop, it, "dataset")), timeout=60
        )
        return reply.build

    def warm_start_recipe(self, loop: lpb.Loop) -> tuple[str, dict[str, str], list[dpb.OutputFormat]]:
        """The SFT recipe of the warm start: `step_sft` for repository tasks (JSON or native tool
        calls); for I/O problems, whose episodes use the I/O protocol, `debug_dialogues` with no
        minimum of debug rounds (a reference demonstration submits at once)."""
        from flywheel_orchestrator.suites import IoTask

        suite = self.m.runs.catalog.get(loop.suite)
        ids = warm_start_tasks(loop)
        chosen = [suite.tasks[t] for t in ids] if suite and ids else []
        if suite and not chosen:
            chosen = [t for t in suite.tasks.values() if t.split == common_pb2.TASK_SPLIT_TRAIN]
        if chosen and all(isinstance(t, IoTask) for t in chosen):
            return "debug_dialogues", {"min_debug_rounds": "0"}, []
        return "step_sft", {}, []

    async def _after_dataset(
        self, job: LoopJob, cur: lpb.LoopStageStatus | None, event: object | None
    ) -> bool:
        assert cur is not None
        loop = job.resource
        it = loop.iterations[-1]
        build = (
            await self.m.datasets.GetDatasetBuild(
                dpb.GetDatasetBuildRequest(build_id=it.dataset_build_id), timeout=30
            )
        ).build
        if build.state not in TERMINAL:
            return False
        if build.state != SUCCEEDED:
            raise JobFailed(
                f"iteration {it.index} dataset: build {build.id} ended "
                f"{common_pb2.JobState.Name(build.state)}: {build.error.message}",
                next(
                    (c for c in grpc.StatusCode if c.value[0] == build.error.code),
                    grpc.StatusCode.FAILED_PRECONDITION,
                ),
            )
        it.dataset_id = build.dataset_id
        cur.artefacts.append(
            common_pb2.ResourceRef(kind=common_pb2.RESOURCE_KIND_DATASET, id=build.dataset_id)
        )
        ft = await self._fine_tune(loop, it)
        it.fine_tune_job_id = ft.id
        it.stage = S.LOOP_STAGE_FINE_TUNE
        await self.m._begin(
            job, S.LOOP_STAGE_FINE_TUNE, self.m._ref(common_pb2.RESOURCE_KIND_FINE_TUNE_JOB, ft.id)
        )
        return True

    async def _fine_tune(self, loop: lpb.Loop, it: lpb.RlIteration) -> trpb.FineTuneJob:
        if it.index == 0:
            method, hp, init = trpb.FINE_TUNE_METHOD_SFT, loop.rl.sft_hyperparameters, ""
        else:
            method, hp = trpb.FINE_TUNE_METHOD_GRPO, loop.hyperparameters
            init = self.policy_adapter_id(loop, it.index)
        job = trpb.FineTuneJob(
            base_model=loop.base_model,
            dataset_id=it.dataset_id,
            method=method,
            hyperparameters=hp,
            adapter_name=loop.adapter_name,
            loop_id=loop.id,
            labels={**self.m._labels(loop), "rl_iteration": str(it.index)},
            init_adapter=init,
            gpus=loop.train_gpus,
        )
        return await self.m.create_fine_tune(
            job, self._rid(loop, it, "fine-tune"), f"iteration {it.index} fine-tune"
        )

    async def _after_fine_tune(
        self, job: LoopJob, cur: lpb.LoopStageStatus | None, event: object | None
    ) -> bool:
        loop = job.resource
        it = loop.iterations[-1]
        ft = (
            await self.m.trainer.GetFineTuneJob(
                trpb.GetFineTuneJobRequest(job_id=it.fine_tune_job_id), timeout=30
            )
        ).job
        if ft.state not in TERMINAL:
            return False
        if ft.state != SUCCEEDED or not ft.adapter.name:
            raise JobFailed(
                f"iteration {it.index} fine-tune: job {ft.id} ended "
                f"{common_pb2.JobState.Name(ft.state)}: {ft.error.message}"
            )
        it.adapter.CopyFrom(ft.adapter)
        it.train_metrics.CopyFrom(ft.latest_metrics)
        it.stage = S.LOOP_STAGE_HOT_LOAD
        adapter = f"{ft.adapter.name}/{ft.adapter.version}"
        loop.candidate_model = self._route(ft.adapter)
        await self.m._begin(
            job, S.LOOP_STAGE_HOT_LOAD, self.m._ref(common_pb2.RESOURCE_KIND_ADAPTER, adapter)
        )
        return True

    async def _after_hot_load(
        self, job: LoopJob, cur: lpb.LoopStageStatus | None, event: object | None
    ) -> bool:
        assert cur is not None
        loop = job.resource
        if not await self.m._loaded(job, cur, event):
            return False
        if not loop.iterations:  # waiting for the starting adapter (rl.init_adapter)
            if not await self.m.models.answers(loop.candidate_model):
                self.m.retry_later(job, self.m.settings.loop_hot_load_poll_s)
                return False
            await self._begin_iteration(job, 1)
            return False
        it = loop.iterations[-1]
        last = it.index >= loop.rl.iterations
        due = it.index > 0 and (last or (loop.rl.eval_every and it.index % loop.rl.eval_every == 0))
        if due:
            await self._evaluate(job, it, loop.candidate_model)
            return True
        await self._end_iteration(job, it)
        return True

    async def _evaluate(self, job: LoopJob, it: lpb.RlIteration, model: str) -> None:
        loop = job.resource
        loop.candidate_model = model
        evaluation = await self.m.evaluations.create(
            self._evaluation(loop), self._rid(loop, it, "evaluation"), loop_id=loop.id
        )
        it.evaluation_id = evaluation.id
        it.stage = S.LOOP_STAGE_EVALUATION
        await self.m._begin(
            job, S.LOOP_STAGE_EVALUATION, self.m._ref(common_pb2.RESOURCE_KIND_EVALUATION, evaluation.id)
        )

    def _evaluation(self, loop: lpb.Loop) -> epb.Evaluation:
        models = [loop.incumbent_model]
        start = self.baseline_model(loop)
        if start not in models:
            models.append(start)
        if loop.candidate_model not in models:
            models.append(loop.candidate_model)
        return epb.Evaluation(
            suite=loop.suite,
            split=common_pb2.TASK_SPLIT_TEST,
            task_ids=loop.test_task_ids,
            models=models,
            baseline_model=loop.incumbent_model,
            rollouts_per_task=loop.eval_rollouts_per_task,
            episode=loop.episode,
            concurrency=loop.concurrency,
            labels=self.m._labels(loop),
        )

    def baseline_model(self, loop: lpb.Loop) -> str:
        """The policy the RL iterations started from: the warm start's adapter, else the start."""
        return self.warm_start_model(loop) or self.start_model(loop)

    def warm_start_model(self, loop: lpb.Loop) -> str:
        first = loop.iterations[0] if loop.iterations else None
        if first is not None and first.index == 0 and first.adapter.name:
            return self._route(first.adapter)
        return ""

    async def _after_evaluation(
        self, job: LoopJob, cur: lpb.LoopStageStatus | None, event: object | None
    ) -> bool:
        loop = job.resource
        it = loop.iterations[-1]
        e = self.m.evaluations.get(it.evaluation_id)
        if e.state not in TERMINAL:
            return False
        if e.state != SUCCEEDED:
            raise JobFailed(
                f"iteration {it.index} evaluation: {e.id} ended {common_pb2.JobState.Name(e.state)}: {e.error.message}"
            )
        by_model = {m.model: m for m in e.model_metrics}
        if loop.candidate_model in by_model:
            it.eval_pass_rate = by_model[loop.candidate_model].pass_rate
        start = self.baseline_model(loop)
        if start in by_model:
            it.eval_baseline_pass_rate = by_model[start].pass_rate
        await self._end_iteration(job, it)
        return True

    async def _end_iteration(self, job: LoopJob, it: lpb.RlIteration) -> None:
        """Close the iteration; start the next one, or, after the last, the gate on the evaluation
        of the final policy (evaluated now if the last iteration had nothing to learn)."""
        loop = job.resource
        if it.index < loop.rl.iterations:
            it.state = SUCCEEDED
            await self._begin_iteration(job, it.index + 1)
            return
        if not it.evaluation_id:
            final = self.policy_model(loop, it.index)  # it trained nothing: the newest earlier policy
            if final == self.start_model(loop):
                raise JobFailed(
                    f"none of the {loop.rl.iterations} iterations found a spread of rewards to learn from "
                    "(every group's episodes scored alike): raise rl.samples_per_task or rl.temperature",
                    grpc.StatusCode.FAILED_PRECONDITION,
                )
            await self._evaluate(job, it, final)
            return
        it.state = SUCCEEDED
        await self.m._begin(
            job, S.LOOP_STAGE_GATE, self.m._ref(common_pb2.RESOURCE_KIND_EVALUATION, it.evaluation_id)
        )
