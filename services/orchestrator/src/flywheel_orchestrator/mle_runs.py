"""ML episodes inside a rollout run: the run's worker hands an ML task here instead of the tool loop.

Same bookkeeping as a tool-protocol episode (runs.py): the trajectory id comes from (run, task,
attempt), the trajectory is stored once, the episode's result is counted, saved and streamed by
WatchRun, and listeners (evaluations) hear of it. While the search runs, every node it adds is
streamed by WatchRun as an ``MlNodeProgress`` (the tree growing, the best metric so far). The policy is the run's model through the
gateway (the same model client as every agent), or, for the REFERENCE teacher, the task's
reference solution as a single draft. The search's knobs are ``FLYWHEEL_ORCHESTRATOR_MLE_*``
(:class:`~flywheel_orchestrator.mle.MleSettings`), read when the episode starts.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from flywheel.orchestrator.v1 import mle_pb2
from flywheel.trajectory.v1 import trajectory_pb2 as tpb
from flywheel_orchestrator.agent import EpisodeTimes, episode_result
from flywheel_orchestrator.mle import (
    REFERENCE_SETTINGS,
    MleEpisode,
    MleReferencePolicy,
    MleSettings,
    MleSpec,
    Node,
)
from flywheel_orchestrator.mltasks import MlTask
from flywheel_orchestrator.model import Policy

if TYPE_CHECKING:
    from flywheel_orchestrator.runs import RunJob, RunManager


async def play_ml_episode(
    manager: RunManager,
    state: RunJob,
    task: MlTask,
    attempt: int,
    policy_info: tpb.Policy,
    labels: dict[str, str],
) -> None:
    from flywheel_orchestrator.runs import count_result, trajectory_id  # runs.py imports this module

    run = state.resource
    settings = MleSettings()
    policy: Policy
    if run.teacher_kind == tpb.TEACHER_KIND_REFERENCE:
        policy = MleReferencePolicy(task)
        settings = settings.model_copy(update=REFERENCE_SETTINGS)
    else:
        policy = manager.models.policy(
            run.model,
            record_tokens=run.episode.record_tokens,
            pinned=run.adapter if run.HasField("adapter") else None,
        )
    wall = run.episode.limits.max_wall_time.ToNanoseconds() / 1e9
    spec = MleSpec(
        trajectory_id=trajectory_id(run.id, task.id, attempt),
        run_id=run.id,
        attempt=attempt,
        suite=run.suite,
        suite_version=run.suite_version,
        task=task,
        sampling=run.episode.sampling,
        teacher_kind=run.teacher_kind,
        policy_info=policy_info,
        # A search runs several scripts: its budget is the nodes' time budgets, or the run's own.
        max_wall_time_s=wall
        or max(manager.settings.max_wall_time_s, settings.max_nodes * (task.time_budget_s + 60)),
        model_timeout_s=manager.settings.model_timeout_s,
        labels=labels,
    )
    episode = MleEpisode(spec, policy, manager.sandbox, settings)
    def on_node(ep: MleEpisode, node: Node) -> None:
        progress = node_progress(ep, node)
        progress.model = run.model
        manager.table.notify(state, progress)
        for listener in manager.node_listeners:
            listener(run, progress)

    episode.on_node.append(on_node)
    traj = await manager._put(await episode.run())
    result = episode_result(traj)
    state.results.append(result)
    state.times.append(EpisodeTimes(episode.times.model_s, episode.times.sandbox_s, episode.times.total_s))
    count_result(run.counters, result)
    await manager.table.save(state, notify=False)
    manager.table.notify(state, result)
    manager.table.notify(state)
    for listener in manager.listeners:
        listener(run, result)


OPERATORS = {
    "draft": mle_pb2.ML_OPERATOR_DRAFT,
    "debug": mle_pb2.ML_OPERATOR_DEBUG,
    "improve": mle_pb2.ML_OPERATOR_IMPROVE,
    "reflect": mle_pb2.ML_OPERATOR_REFLECT,
}


def node_progress(episode: MleEpisode, node: Node) -> mle_pb2.MlNodeProgress:
    """What WatchRun shows of a node just added: the node, and the episode's tree so far."""
    spec, task = episode.spec, episode.task
    progress = mle_pb2.MlNodeProgress(
        task_id=task.id,
        attempt=spec.attempt,
        trajectory_id=spec.trajectory_id,
        node_id=node.id,
        step=node.step,
        operator=OPERATORS.get(node.operator, mle_pb2.ML_OPERATOR_UNSPECIFIED),
        parent_id=node.parent or "",
        buggy=node.buggy,
        analysis=node.analysis,
        exec_time_s=node.exec_time_s,
        nodes=len(episode.nodes),
        max_nodes=episode.settings.max_nodes,
        metric_name=task.metric,
        maximize=task.maximize,
    )
    if node.metric is not None:
        progress.metric = node.metric
    if node.heldout is not None:
        progress.heldout = node.heldout
    best = episode.best()
    if best is not None:
        progress.best_node_id = best.id
        if best.metric is not None:
            progress.best_metric = best.metric
        if best.heldout is not None:
            progress.best_heldout = best.heldout
    return progress


def mle_prompt_sha256() -> str:
    """The run's prompt lineage: SHA-256 of the ML agent's prompt code and its prompt settings."""
    import hashlib
    import inspect

    from flywheel_orchestrator import mle

    settings = MleSettings()
    parts = [
        inspect.getsource(f)
        for f in (
            mle.draft_prompt,
            mle.debug_prompt,
            mle.improve_prompt,
            mle.critique_prompt,
            mle.edit_prompt,
        )
    ]
    parts.append(f"style={settings.prompt_style};reflection={settings.reflection}")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()
