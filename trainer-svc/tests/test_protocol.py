"""The worker ↔ service protocol: every record kind survives the trip; anything else is refused."""

from __future__ import annotations

import math

import grpc
import pytest

from flywheel_trainer.protocol import (
    PREFIX,
    Checkpoint,
    Device,
    Done,
    Failure,
    Log,
    Passes,
    Plan,
    ProtocolError,
    Record,
    Resuming,
    Stopped,
    decode,
    encode,
)

RECORDS: list[Record] = [
    Device(device="cuda:0 (NVIDIA H200)"),
    Resuming(step=4),
    Passes(rows=2, accumulation=8, note="out of memory at 4 rows a pass (CUDA out of memory): retried at 2"),
    Plan(total_steps=12, start_step=4),
    Log(
        step=5,
        total_steps=12,
        epoch=0.5,
        loss=1.25,
        learning_rate=2e-4,
        grad_norm=0.5,
        tokens_per_second=900.0,
    ),
    Log(step=8, eval_loss=0.75, extra={"rewards/chosen": 0.1, "mean_token_accuracy": 0.9}),
    Checkpoint(step=8, key="trainer/checkpoints/ftj-1/checkpoint-8/", size=123456),
    Done(output="/state/work/ftj-1/output", step=12, elapsed_s=31.5),
    Failure.of(grpc.StatusCode.RESOURCE_EXHAUSTED, "out of memory while training: CUDA out of memory"),
    Stopped(step=7),
]


@pytest.mark.parametrize("record", RECORDS, ids=lambda r: r.type)
def test_every_kind_round_trips(record: Record) -> None:
    line = encode(record)
    assert line.startswith(PREFIX) and line.endswith("\n") and line.count("\n") == 1
    assert decode(line) == record


def test_a_failure_carries_a_status_code() -> None:
    failure = decode(encode(Failure.of(grpc.StatusCode.FAILED_PRECONDITION, "NF4 needs a GPU")))
    assert isinstance(failure, Failure) and failure.status is grpc.StatusCode.FAILED_PRECONDITION


def test_a_diverging_loss_is_not_lost() -> None:
    record = decode(encode(Log(step=3, loss=math.nan, grad_norm=math.inf)))
    assert isinstance(record, Log) and record.loss is not None and math.isnan(record.loss)
    assert record.grad_norm == math.inf


@pytest.mark.parametrize(
    "line",
    [
        "loading checkpoint shards: 100%",  # not a record at all
        PREFIX + "{not json",
        PREFIX + '{"type": "teleport", "to": "mars"}',  # an unknown kind
        PREFIX + '{"device": "cpu"}',  # no kind
        PREFIX + '{"type": "plan"}',  # a required field missing
        PREFIX + '{"type": "plan", "total_steps": "many"}',
        PREFIX + '{"type": "device", "device": "cpu", "colour": "blue"}',  # a field the kind lacks
        PREFIX + '{"type": "error", "code": "OOPS", "message": "x"}',  # not a status code
    ],
)
def test_anything_else_is_a_protocol_error(line: str) -> None:
    with pytest.raises(ProtocolError):
        decode(line)
