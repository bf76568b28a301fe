"""Starting a job's training process: one worker, or ``gpus`` of them in data parallel.

A job with ``gpus`` > 1 runs ``python -m flywheel_trainer.launch <gpus> <job_dir>``: PyTorch's own
launcher (``torch.distributed.run``, i.e. ``torchrun --standalone``) in this process, which starts
one :mod:`flywheel_trainer.worker` per GPU with ``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK`` set and a
rendezvous on a free local port. The workers' DDP (through accelerate, which the Trainer uses)
averages the gradients of every step over them. Only rank 0 writes progress records, uploads
checkpoints and saves the adapter (:mod:`flywheel_trainer.recipe`).

The launcher dies with the service (as a single worker does) and torchrun passes a SIGTERM on to the
workers, which stop together at the next step boundary; each worker dies with the launcher.
"""

from __future__ import annotations

import sys
from pathlib import Path


def worker_command(gpus: int, job_dir: Path) -> list[str]:
    """Arguments after the Python interpreter that train the job in ``job_dir``."""
    if gpus <= 1:
        return ["-m", "flywheel_trainer.worker", str(job_dir)]
    return ["-m", "flywheel_trainer.launch", str(gpus), str(job_dir)]


def torchrun_args(gpus: int, job_dir: Path) -> list[str]:
    return [
        "--standalone",  # a rendezvous on this machine, on a free port
        f"--nproc-per-node={gpus}",
        "--max-restarts=0",  # a failed rank fails the job; the service's resume is the retry
        "--module",
        "flywheel_trainer.worker",
        str(job_dir),
    ]


def main() -> int:
    from flywheel_common.procs import die_with_parent

    die_with_parent()
    if len(sys.argv) != 3 or not sys.argv[1].isdigit():
        print("usage: python -m flywheel_trainer.launch <gpus> <job_dir>", file=sys.stderr)
        return 2
    from torch.distributed.run import main as torchrun

    try:
        torchrun(torchrun_args(int(sys.argv[1]), Path(sys.argv[2])))
    except Exception as err:  # torchrun's ChildFailedError names the failed rank and its exit code
        print(f"flywheel: data-parallel training failed: {err}", file=sys.stderr, flush=True)
        return _first_exit(err)
    return 0


def _first_exit(err: BaseException) -> int:
    """The exit status of the first failed rank (the worker's status tells the outcome class)."""
    failures = getattr(err, "failures", None) or {}
    for failure in failures.values():
        code = getattr(failure, "exitcode", None)
        if isinstance(code, int) and code > 0:
            return code
    return 1


if __name__ == "__main__":
    sys.exit(main())
