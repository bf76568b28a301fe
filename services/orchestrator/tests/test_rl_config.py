"""Validation of an RL loop's warm-start task set (``rl.sft_task_ids``).

`LoopManager.validate` runs on a manager made without its services (``__new__``), holding only
what validation reads: the bundled suite catalogue and the rollout limit.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from flywheel.common.v1 import common_pb2
from flywheel.orchestrator.v1 import loop_pb2 as lpb
from flywheel_common.errors import FailedPrecondition, InvalidArgument, NotFound
from flywheel_orchestrator import rl
from flywheel_orchestrator.loops import LoopManager
from flywheel_orchestrator.suites import SuiteCatalog


@pytest.fixture(scope="module")
def manager() -> LoopManager:
    catalog = SuiteCatalog()
    catalog.reload()
    made = LoopManager.__new__(LoopManager)
    made.runs = SimpleNamespace(catalog=catalog)  # type: ignore[assignment]
    made.settings = SimpleNamespace(max_rollouts_per_task=64)  # type: ignore[assignment]
    made.skillopts = None
    return made


def split(manager: LoopManager, side: int) -> list[str]:
    suite = manager.runs.catalog.get("io-problems")
    return sorted(t.id for t in suite.tasks.values() if t.split == side)


def rl_loop(manager: LoopManager, **rl_fields: object) -> lpb.Loop:
    train = split(manager, common_pb2.TASK_SPLIT_TRAIN)
    return lpb.Loop(
        kind=lpb.LOOP_KIND_RL,
        suite="io-problems",
        base_model="tiny",
        adapter_name="io-rl",
        train_task_ids=train[:2],
        rl=lpb.RlLoopConfig(iterations=2, samples_per_task=4, **rl_fields),
    )


def test_the_warm_start_can_use_more_train_tasks_than_the_rollouts(manager: LoopManager) -> None:
    train = split(manager, common_pb2.TASK_SPLIT_TRAIN)
    loop = rl_loop(manager, sft_warm_start=True, sft_task_ids=train)
    manager.validate(loop)
    assert rl.warm_start_tasks(loop) == train
    plain = rl_loop(manager, sft_warm_start=True)
    manager.validate(plain)
    assert rl.warm_start_tasks(plain) == train[:2]


def test_bad_warm_start_task_sets_are_refused_naming_the_field(manager: LoopManager) -> None:
    train = split(manager, common_pb2.TASK_SPLIT_TRAIN)
    test = split(manager, common_pb2.TASK_SPLIT_TEST)
    with pytest.raises(InvalidArgument, match=r"rl\.sft_task_ids.*only with rl\.sft_warm_start"):
        manager.validate(rl_loop(manager, sft_task_ids=train))
    with pytest.raises(NotFound, match=r"rl\.sft_task_ids.*no task 'nope'"):
        manager.validate(rl_loop(manager, sft_warm_start=True, sft_task_ids=["nope"]))
    # A TEST task in the warm start would leak held-out answers into training.
    with pytest.raises((InvalidArgument, NotFound, FailedPrecondition), match=r"rl\.sft_task_ids"):
        manager.validate(rl_loop(manager, sft_warm_start=True, sft_task_ids=test[:1]))


def test_train_gpus_reach_every_fine_tune_job_a_loop_makes(manager: LoopManager) -> None:
    """``train_gpus`` is checked (0 to 16, naming the field) and becomes ``FineTuneJob.gpus`` of
    an imitation loop's fine-tune, an RL loop's warm-start SFT and its GRPO jobs; 0 stays 0 (the
    trainer reads it as one)."""
    import asyncio

    for bad in (-1, 17):
        loop = rl_loop(manager)
        loop.train_gpus = bad
        with pytest.raises(
            InvalidArgument, match=rf"loop\.train_gpus: must be between 0 \(one\) and 16, got {bad}"
        ):
            manager.validate(loop)

    sent: list = []

    async def create_fine_tune(job: object, request_id: str, what: str) -> object:
        sent.append(job)
        return job

    made = LoopManager.__new__(LoopManager)
    made.create_fine_tune = create_fine_tune  # type: ignore[method-assign]
    stages = rl.RlStages.__new__(rl.RlStages)
    stages.m = made
    for gpus in (0, 2):
        loop = rl_loop(manager, sft_warm_start=True)
        loop.id, loop.train_gpus = "loop-1", gpus
        manager.validate(loop)
        asyncio.run(made._fine_tune(loop, "ds-1"))
        asyncio.run(stages._fine_tune(loop, lpb.RlIteration(index=0, dataset_id="ds-2")))
        asyncio.run(stages._fine_tune(loop, lpb.RlIteration(index=1, dataset_id="ds-3")))
    assert [(j.dataset_id, j.gpus) for j in sent] == [
        ("ds-1", 0), ("ds-2", 0), ("ds-3", 0), ("ds-1", 2), ("ds-2", 2), ("ds-3", 2)
    ]  # fmt: skip
    assert [j.method for j in sent[3:]] == [1, 1, 3]  # SFT, the warm start's SFT, GRPO
