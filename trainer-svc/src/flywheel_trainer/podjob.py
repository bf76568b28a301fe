"""``python -m flywheel_trainer run-job``: one fine-tune inside its Kubernetes Job's pod.

The kubernetes backend's counterpart of the local training process. The service wrote the job's
spec to the object store (:func:`spec_key`); this command downloads it into
``<state_dir>/work/<job id>/`` (the base-model cache is ``<state_dir>/base-models``), runs the same
worker (:mod:`flywheel_trainer.worker`, which resumes from the job's newest checkpoint in the store
and uploads every new one) with its progress records on the pod's stdout, where the service reads
them from the pod's log, and, once the worker has trained the adapter, uploads it to
:func:`output_prefix` for the service to publish. The exit status is the worker's (non-zero when
the upload failed), so the pod's phase tells the service how it ended, and the Job's
``podFailurePolicy`` whether a new pod may try again (``protocol.NO_RETRY_EXIT_STATUSES``: bad
input, a crash, out of memory, diverged training; any other failure, a failed upload included, is
retried up to the Job's ``backoffLimit`` and resumes from the checkpoint). SIGTERM (a deleted Job
or pod, a preemption, a drain) is passed to the worker, which stops at the next step boundary.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path
from types import FrameType

from flywheel_common.objectstore import open_object_store
from flywheel_trainer.launch import worker_command
from flywheel_trainer.protocol import EXIT_NOT_CONFIGURED, Spec
from flywheel_trainer.settings import TrainerSettings
from flywheel_trainer.storeio import upload_dir

WORK_PREFIX = "trainer/work/"


def spec_key(job_id: str) -> str:
    return f"{WORK_PREFIX}{job_id}/spec.json"


def output_prefix(job_id: str) -> str:
    return f"{WORK_PREFIX}{job_id}/output/"


def main() -> int:
    settings = TrainerSettings()
    if not settings.job_id:
        print("run-job: FLYWHEEL_TRAINER_JOB_ID is not set (the trainer sets it in the Job)", file=sys.stderr)
        return EXIT_NOT_CONFIGURED
    store = open_object_store(settings.object_store)
    spec = Spec.model_validate_json(store.get_bytes(spec_key(settings.job_id)))
    job_dir = settings.state_dir / "work" / settings.job_id
    job_dir.mkdir(parents=True, exist_ok=True)
    spec = spec.model_copy(update={"cache_dir": str(settings.state_dir / "base-models")})
    (job_dir / "spec.json").write_text(spec.model_dump_json(indent=2))
    # One worker, or one per GPU of the pod (the Job asked for spec.gpus of them).
    worker = subprocess.Popen([sys.executable, *worker_command(spec.gpus, job_dir)])

    def forward(signum: int, frame: FrameType | None) -> None:
        worker.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    rc = worker.wait()
    output = Path(job_dir / "output")
    if rc == 0 and output.is_dir():
        print(f"run-job: uploading the adapter to {output_prefix(settings.job_id)}", file=sys.stderr)
        upload_dir(store, output, output_prefix(settings.job_id), overwrite=True)
    return rc
