"""The trainer's events: ``flywheel.finetune.<state>`` and ``flywheel.adapter.published``.

Built from the job message alone, so that the job core can announce a finished job again after a
restart (``terminal_events`` is the core's ``announce`` for fine-tune jobs). Ids are deterministic:
``finetune-<state>:<job id>:<resume_count>`` (QUEUED and RUNNING come again after a restart resumed
the job, with the next ``resume_count``) and ``adapter-published:<name>/v<version>``.
"""

from __future__ import annotations

from flywheel.common.v1 import common_pb2
from flywheel.events.v1 import events_pb2
from flywheel.trainer.v1 import trainer_pb2
from flywheel_common.jobs import QUEUED, RUNNING, SUCCEEDED, TERMINAL, Announcement, now, state_name

PRODUCER = "trainer"


def state_event(job: trainer_pb2.FineTuneJob, previous: common_pb2.JobState) -> Announcement:
    """``flywheel.finetune.<state>`` for the job's current state."""
    name = state_name(job.state)
    event_id = f"finetune-{name}:{job.id}:{job.resume_count}"
    occurred = job.end_time if job.state in TERMINAL else now()
    event = events_pb2.FineTuneStateChanged(
        meta=events_pb2.EventMeta(event_id=event_id, occurred_at=occurred, producer=PRODUCER),
        job_id=job.id,
        state=job.state,
        base_model=job.base_model,
        dataset_id=job.dataset_id,
        method=job.method,
        adapter_name=job.adapter_name,
        loop_id=job.loop_id,
    )
    if previous != common_pb2.JOB_STATE_UNSPECIFIED and previous != job.state:
        event.previous_state = previous
    if job.HasField("adapter"):
        event.adapter.CopyFrom(job.adapter)
    if job.HasField("error"):
        event.error.CopyFrom(job.error)
    if job.HasField("latest_metrics"):
        event.latest_metrics.CopyFrom(job.latest_metrics)
    return Announcement(f"flywheel.finetune.{name}", event, event_id)


def adapter_published(job: trainer_pb2.FineTuneJob) -> Announcement:
    """``flywheel.adapter.published`` for the adapter a SUCCEEDED job published."""
    ref = job.adapter
    event_id = f"adapter-published:{ref.name}/v{ref.version}"
    event = events_pb2.AdapterPublished(
        meta=events_pb2.EventMeta(event_id=event_id, occurred_at=job.end_time, producer=PRODUCER),
        name=ref.name,
        version=ref.version,
        base_model=job.base_model,
        dataset_id=job.dataset_id,
        job_id=job.id,
        object_prefix=ref.object_prefix,
        manifest=common_pb2.ObjectRef(key=ref.object_prefix + "manifest.json"),
        lora_rank=job.hyperparameters.lora.rank,
        target_modules=list(job.hyperparameters.lora.target_modules),
        loop_id=job.loop_id,
        content_digest=ref.content_digest,
    )
    return Announcement("flywheel.adapter.published", event, event_id)


def terminal_events(job: trainer_pb2.FineTuneJob) -> list[Announcement]:
    """The announcement of a finished job, in order: its adapter (if it published one), then its
    state. The state before is RUNNING for a job that ever ran, else QUEUED."""
    previous = RUNNING if job.HasField("start_time") else QUEUED
    events = [state_event(job, previous)]
    if job.state == SUCCEEDED and job.HasField("adapter"):
        events.insert(0, adapter_published(job))
    return events
