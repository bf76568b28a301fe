"""``flywheel finetune create`` options → the CreateFineTuneJob request, against a scripted trainer.

The trainer's own tests cover what a job does with them (``trainer-svc/tests``); here: each option
lands in its field, and the trainer's refusal reaches the user with its code and reason.
"""

from __future__ import annotations

from typing import Any

import grpc
from click.testing import CliRunner, Result

from flywheel.trainer.v1 import trainer_pb2 as tpb
from flywheel_cli.main import cli

BASE = ("--base-model", "tiny", "--dataset", "ds-sft0000000000001", "--adapter", "fixer", "--no-watch")


def flywheel(address: str, *args: str) -> Result:
    runner = CliRunner(env={"COLUMNS": "300"})
    return runner.invoke(cli, ["finetune", "--address", address, *args], catch_exceptions=False)


def sent(trainer: Any, *args: str) -> tpb.FineTuneJob:
    trainer.answers["CreateFineTuneJob"] = tpb.CreateFineTuneJobResponse(
        job=tpb.FineTuneJob(id="ft-01", adapter_name="fixer")
    )
    result = flywheel(trainer.address, "create", *BASE, *args)
    assert result.exit_code == 0, result.output
    assert "ft-01" in result.output
    request: tpb.CreateFineTuneJobRequest = trainer.asked("CreateFineTuneJob")[-1]
    return request.job


def test_fp8_asks_for_fp8_base_matmuls(scripted_trainer: Any) -> None:
    assert not sent(scripted_trainer).hyperparameters.fp8_base_matmuls
    job = sent(scripted_trainer, "--fp8", "--batch-size", "8", "--packing")
    hp = job.hyperparameters
    assert hp.fp8_base_matmuls and hp.batch_size == 8 and hp.packing
    assert job.method == tpb.FINE_TUNE_METHOD_SFT


def test_the_trainers_refusal_is_shown(scripted_trainer: Any) -> None:
    scripted_trainer.refuse(
        "CreateFineTuneJob",
        grpc.StatusCode.FAILED_PRECONDITION,
        "job.hyperparameters.fp8_base_matmuls: FP8 matmuls need a CUDA GPU",
    )
    result = flywheel(scripted_trainer.address, "create", *BASE, "--fp8")
    assert result.exit_code != 0
    assert "FAILED_PRECONDITION" in result.output and "fp8_base_matmuls" in result.output
