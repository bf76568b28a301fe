"""Where a job's checkpoints live in the object store, and which of them are usable.

A checkpoint is the Hugging Face Trainer's folder (adapter, optimizer, scheduler, RNG states,
trainer state) uploaded to ``trainer/checkpoints/<job id>/checkpoint-<step>/`` with the completion
marker last (``storeio.upload_dir``), so only a folder with its marker counts.
"""

from __future__ import annotations

import re

from flywheel_common.objectstore import ObjectStore
from flywheel_trainer.storeio import COMPLETE_MARKER

CHECKPOINTS_PREFIX = "trainer/checkpoints/"
_COMPLETE_STEP = re.compile(r"/checkpoint-(\d+)/" + re.escape(COMPLETE_MARKER) + "$")


def job_prefix(job_id: str) -> str:
    return f"{CHECKPOINTS_PREFIX}{job_id}/"


def step_prefix(job_id: str, step: int) -> str:
    return f"{job_prefix(job_id)}checkpoint-{step}/"


def complete(store: ObjectStore, job_id: str) -> list[tuple[int, str]]:
    """(step, prefix) of every checkpoint whose upload finished, oldest first."""
    found = []
    for info in store.list(job_prefix(job_id)):
        match = _COMPLETE_STEP.search(info.key)
        if match:
            found.append((int(match.group(1)), info.key[: -len(COMPLETE_MARKER)]))
    return sorted(found)


def latest(store: ObjectStore, job_id: str) -> tuple[int, str] | None:
    """(step, prefix) of the newest complete checkpoint, or None."""
    found = complete(store, job_id)
    return found[-1] if found else None


def prune(store: ObjectStore, job_id: str, keep: int) -> None:
    """Delete all but the newest ``keep`` complete checkpoints."""
    for _step, prefix in complete(store, job_id)[:-keep]:
        for info in list(store.list(prefix)):
            store.delete(info.key)
