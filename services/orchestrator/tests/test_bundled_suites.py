"""The bundled suites are sound, checked in the real sandbox runner.

- The reference teacher solves every bundled task: a REFERENCE run over both sides of each
  suite's split resolves every episode (the final tests pass in the sandbox).
- Every repo task is a real bug: on the untouched snapshot, each fail_to_pass test fails and
  each pass_to_pass test passes.
No model is involved.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from flywheel.common.v1 import common_pb2
from flywheel.orchestrator.v1 import orchestrator_pb2 as opb
from flywheel.orchestrator.v1 import run_pb2
from flywheel.trajectory.v1 import trajectory_pb2 as tpb
from flywheel_orchestrator.sandbox import SandboxClient
from flywheel_orchestrator.suites import BUNDLED_DIR, RepoTask, load_folder

from .conftest import Backends, orchestrator
from .test_runs import scripted

SUITES = ("repo-bugs", "io-problems")


@pytest.mark.slow
async def test_reference_teacher_solves_every_bundled_task(
    backends: Backends, service_env: dict[str, str]
) -> None:
    async with orchestrator(backends, service_env, scripted()) as h:
        for suite in SUITES:
            for split in (common_pb2.TASK_SPLIT_TRAIN, common_pb2.TASK_SPLIT_TEST):
                run = run_pb2.Run(
                    suite=suite, split=split, teacher_kind=tpb.TEACHER_KIND_REFERENCE, concurrency=4
                )
                created = (await h.stub.CreateRun(opb.CreateRunRequest(run=run))).run
                failed = []
                final = None
                async for update in h.stub.WatchRun(opb.WatchRunRequest(run_id=created.id), timeout=600):
                    if update.WhichOneof("update") == "episode" and not update.episode.resolved:
                        failed.append(
                            (
                                update.episode.task_id,
                                tpb.FailureCategory.Name(update.episode.failure_category),
                            )
                        )
                    elif update.WhichOneof("update") == "run":
                        final = update.run
                assert final is not None and final.state == common_pb2.JOB_STATE_SUCCEEDED, final
                assert failed == [], f"{suite}: reference solutions that fail: {failed}"
                assert final.counters.episodes_resolved == final.counters.tasks > 0


@pytest.mark.slow
async def test_every_repo_task_fails_before_its_fix(backends: Backends) -> None:
    suite = load_folder(BUNDLED_DIR / "repo-bugs", bundled=True)
    client = SandboxClient(backends.sandbox)
    limit = asyncio.Semaphore(2)

    async def check(task: RepoTask) -> list[str]:
        async with limit:
            verdict = await client.run_tests(
                task, dict(task.files), tpb.TEST_TRIGGER_FINAL, time.monotonic() + 120
            )
        failing = set(verdict.run.failed_ids)
        problems = [f"{task.id}: {t} passes before the fix" for t in task.fail_to_pass if t not in failing]
        problems += [f"{task.id}: {t} fails before the fix" for t in task.pass_to_pass if t in failing]
        return problems

    try:
        results = await asyncio.gather(*(check(t) for t in suite.tasks.values() if isinstance(t, RepoTask)))
    finally:
        await client.close()
    assert [p for r in results for p in r] == []
    assert len(results) == 44
