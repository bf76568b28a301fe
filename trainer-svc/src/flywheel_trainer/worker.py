"""One fine-tune job in its own process: ``python -m flywheel_trainer.worker <job_dir>``.

The service starts one of these per job (so a crash or an out-of-memory kills only that job) after
writing the job's ``spec.json``, and reads its progress records (:mod:`flywheel_trainer.protocol`)
from stdout. The training itself is :mod:`flywheel_trainer.recipe`'s; this entry point only wires
the process: it dies with the service (whose restart resumes the job from a checkpoint), turns
SIGTERM into a stop at the next step boundary (the service SIGKILLs after its grace period anyway),
keeps stdout for the records alone (whatever else the libraries print goes to stderr, the job's
``worker.log``) and reports an unexpected error as the job's outcome.

In a data-parallel job (:mod:`flywheel_trainer.launch`) every rank runs this; only rank 0's records
reach the service (the others' go nowhere), and a rank's traceback goes to its own file.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import traceback
from pathlib import Path
from types import FrameType
from typing import TextIO

import grpc

from flywheel_common.procs import die_with_parent
from flywheel_trainer import recipe
from flywheel_trainer.protocol import Failure, Record, encode, exit_status


def _record_channel(rank: int) -> TextIO:
    """A stream on the original stdout for the records (rank 0's; other ranks' are dropped); fd 1
    then points at stderr."""
    sys.stdout.flush()
    channel = (
        os.fdopen(os.dup(1), "w", encoding="utf-8") if rank == 0 else open(os.devnull, "w", encoding="utf-8")
    )
    os.dup2(2, 1)
    return channel


class _SignalStop(threading.Event):
    """The worker's stop flag, set by its SIGTERM handler without a lock.

    ``threading.Event.set`` takes the Event's lock. A pod's process group gets the SIGTERM, and
    ``run-job`` forwards its own, so a second SIGTERM can arrive while the first handler is inside
    ``Event.set`` holding that lock; the nested handler then waited for it forever (seen with
    py-spy: the preempted pod's worker hung in ``Condition.__enter__``). Setting a plain attribute
    cannot block. Only ``set`` and ``is_set`` are used (``recipe.Recipe.should_stop``)."""

    def __init__(self) -> None:
        super().__init__()
        self._asked = False

    def set(self) -> None:
        self._asked = True

    def is_set(self) -> bool:
        return self._asked


def main() -> int:
    die_with_parent()
    job_dir = Path(sys.argv[1])
    rank = int(os.environ.get("RANK", "0"))  # set by torchrun in a data-parallel job
    channel = _record_channel(rank)

    def emit(record: Record) -> None:
        channel.write(encode(record))
        channel.flush()

    stop = _SignalStop()

    def on_sigterm(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_sigterm)
    try:
        return recipe.run(job_dir, stop, emit)
    except Exception as err:
        (job_dir / ("traceback.txt" if rank == 0 else f"traceback-rank{rank}.txt")).write_text(
            traceback.format_exc()
        )
        traceback.print_exc()  # into worker.log as well
        message = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}".strip()
        oom = "out of memory" in message.lower()
        failure = Failure.of(
            grpc.StatusCode.RESOURCE_EXHAUSTED if oom else grpc.StatusCode.INTERNAL, message[:500]
        )
        emit(failure)
        return exit_status(failure)


if __name__ == "__main__":
    sys.exit(main())
