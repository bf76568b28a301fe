"""OpenAI's files and fine-tuning API at the gateway, driven by the official ``openai`` client.

The whole product runs (``flywheel_cli.stack.Stack``, what ``flywheel up`` starts, on a filesystem
object store and the session's nats-server) with a tiny random Llama as its base model: the
client uploads a chat JSONL, creates a supervised job, follows its events until it succeeds (the
trainer trains on the CPU, adapter sync loads the adapter on the embedded model server), lists
its checkpoints and calls the fine-tuned model through chat completions. Then the errors: bad
files named by line, an unknown model and file id, cancelling a finished job.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import openai
import pytest
from openai import OpenAI

from flywheel.trainer.v1 import trainer_pb2, trainer_pb2_grpc
from flywheel_cli.stack import Stack
from flywheel_common import auth
from flywheel_common.events import NatsSettings
from flywheel_testing.stack import address, long_context, running_stack
from flywheel_testing.trainer import SFT_ROWS, build_tiny_model

ROOT = Path(__file__).resolve().parents[2]
MINI = ROOT / "services" / "orchestrator" / "tests" / "fixtures" / "mini"
BASE = "tiny-ft"
TRAIN = "".join(json.dumps(r) + "\n" for r in SFT_ROWS).encode()


@pytest.fixture
def stack(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, nats_settings: NatsSettings) -> Iterator[Stack]:
    folder = build_tiny_model(tmp_path / "base", [json.dumps(r) for r in SFT_ROWS] * 8, with_template=True)
    long_context(folder, 1024)
    extra = {
        # a checkpoint at every step, so that the job has intermediate checkpoints to list
        "FLYWHEEL_TRAINER_DEFAULT_CHECKPOINT_EVERY_STEPS": "1",
        "FLYWHEEL_TRAINER_DEFAULT_BATCH_SIZE": "4",
    }
    with running_stack(
        tmp_path / "state",
        monkeypatch,
        nats_settings.url,
        base=BASE,
        base_folder=folder,
        suite_dirs=[MINI],
        extra_env=extra,
    ) as s:
        yield s


def error_of(err: openai.APIStatusError) -> dict:
    body = err.response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
    return body["error"]


def test_fine_tune_with_the_openai_client(stack: Stack) -> None:
    client = OpenAI(
        base_url=f"http://{address(stack, 'gateway')}/v1", api_key=stack.gateway_key(), max_retries=0
    )

    # ---- files
    uploaded = client.files.create(file=("train.jsonl", TRAIN), purpose="fine-tune")
    assert uploaded.object == "file" and uploaded.id.startswith("file-")
    assert (uploaded.bytes, uploaded.filename, uploaded.purpose, uploaded.status) == (
        len(TRAIN), "train.jsonl", "fine-tune", "processed"
    )  # fmt: skip
    assert client.files.retrieve(uploaded.id) == uploaded
    assert uploaded.id in [f.id for f in client.files.list(purpose="fine-tune")]
    assert client.files.content(uploaded.id).content == TRAIN

    # ---- bad files are refused at upload, naming the line and what is wrong
    bad_json = TRAIN.split(b"\n")[0] + b'\n{"messages": [\n'
    with pytest.raises(openai.BadRequestError) as caught:
        client.files.create(file=("bad.jsonl", bad_json), purpose="fine-tune")
    error = error_of(caught.value)
    assert error["param"] == "file" and error["type"] == "invalid_request_error"
    assert error["message"].startswith("file-") and "line 2: not valid JSON" in error["message"], error
    no_messages = TRAIN.split(b"\n")[0] + b'\n{"text": "hello"}\n'
    with pytest.raises(openai.BadRequestError) as caught:
        client.files.create(file=("bad.jsonl", no_messages), purpose="fine-tune")
    assert "line 2: 'messages' is missing" in error_of(caught.value)["message"]
    listed = [f.filename for f in client.files.list()]
    assert "bad.jsonl" not in listed  # nothing kept of a refused file

    # ---- unknown model, unknown file, a chat file for a DPO job
    with pytest.raises(openai.NotFoundError) as caught:
        client.fine_tuning.jobs.create(model="gpt-4o-mini", training_file=uploaded.id)
    error = error_of(caught.value)
    assert (error["code"], error["param"]) == ("model_not_found", "model") and BASE in error["message"]
    # ---- a base model's Hugging Face id names it (one entry), or is refused as ambiguous (two)
    token = auth.bearer_metadata(auth.current_token())
    with grpc.insecure_channel(address(stack, "trainer-svc")) as ch:
        trainer = trainer_pb2_grpc.TrainerServiceStub(ch)
        for name in ("tiny-hf-a", "tiny-hf-b"):
            trainer.RegisterBaseModel(
                trainer_pb2.RegisterBaseModelRequest(
                    name=name, hf_id=f"acme/{name}", source_prefix=f"base-models/{BASE}/"
                ),
                metadata=token,
                timeout=120,
            )
        by_id = client.fine_tuning.jobs.create(model="acme/tiny-hf-a", training_file=uploaded.id)
        assert by_id.model == "acme/tiny-hf-a"
        job = trainer.GetFineTuneJob(
            trainer_pb2.GetFineTuneJobRequest(job_id=by_id.id), metadata=token, timeout=30
        ).job
        assert job.base_model == "tiny-hf-a"
        client.fine_tuning.jobs.cancel(by_id.id)
        trainer.RegisterBaseModel(
            trainer_pb2.RegisterBaseModelRequest(
                name="tiny-hf-c", hf_id="acme/tiny-hf-a", source_prefix=f"base-models/{BASE}/"
            ),
            metadata=token,
            timeout=120,
        )
    with pytest.raises(openai.BadRequestError) as caught:
        client.fine_tuning.jobs.create(model="acme/tiny-hf-a", training_file=uploaded.id)
    error = error_of(caught.value)
    assert error["code"] == "ambiguous_model" and "tiny-hf-a, tiny-hf-c" in error["message"], error
    with pytest.raises(openai.NotFoundError) as caught:
        client.fine_tuning.jobs.create(model=BASE, training_file="file-000000000000000000000000")
    assert (error_of(caught.value)["code"], error_of(caught.value)["param"]) == (
        "file_not_found",
        "training_file",
    )
    with pytest.raises(openai.BadRequestError) as caught:
        client.fine_tuning.jobs.create(model=BASE, training_file=uploaded.id, method={"type": "dpo"})
    error = error_of(caught.value)
    assert error["param"] == "training_file" and "line 1: 'input' is missing" in error["message"], error

    # ---- a supervised job on the tiny model
    job = client.fine_tuning.jobs.create(
        model=BASE,
        training_file=uploaded.id,
        suffix="Memo Bot",
        seed=7,
        metadata={"team": "qa"},
        method={
            "type": "supervised",
            "supervised": {
                "hyperparameters": {"n_epochs": 2, "batch_size": 4, "learning_rate_multiplier": 50}
            },
        },
    )
    assert job.object == "fine_tuning.job" and job.status in ("queued", "running")
    assert (job.model, job.training_file, job.seed, job.metadata) == (BASE, uploaded.id, 7, {"team": "qa"})
    assert job.hyperparameters.n_epochs == 2 and job.hyperparameters.batch_size == 4
    assert job.hyperparameters.learning_rate_multiplier == pytest.approx(50)
    assert job.method is not None and job.method.type == "supervised"
    assert job.fine_tuned_model is None and job.finished_at is None and job.user_provided_suffix == "Memo Bot"

    deadline = time.monotonic() + 150
    seen: dict[str, object] = {}
    while True:
        for event in client.fine_tuning.jobs.list_events(job.id, limit=100).data:
            seen[event.id] = event
        job = client.fine_tuning.jobs.retrieve(job.id)
        if job.status in ("succeeded", "failed", "cancelled"):
            break
        assert time.monotonic() < deadline, f"job still {job.status} after 150 s"
        time.sleep(0.5)  # a poll interval, with the deadline above
    assert job.status == "succeeded", job.error
    assert job.fine_tuned_model == "ft/memo-bot-v1"
    assert job.finished_at is not None and job.finished_at >= job.created_at
    assert job.trained_tokens is not None and job.trained_tokens > 0

    events = client.fine_tuning.jobs.list_events(job.id, limit=100)
    assert events.object == "list" and not events.has_more
    messages = [e.message for e in events.data]
    assert messages[0] == "The job has successfully completed"  # newest first
    assert "New fine-tuned model created: ft/memo-bot-v1" in messages
    assert messages[-1] == f"Created fine-tuning job: {job.id}"
    metrics = [e for e in events.data if e.type == "metrics"]
    assert [e.data["step"] for e in metrics] == [4, 3, 2, 1]  # type: ignore[index]
    assert all(
        isinstance(e.data["train_loss"], float) and e.object == "fine_tuning.job.event" for e in metrics
    )  # type: ignore[index]
    second = client.fine_tuning.jobs.list_events(job.id, limit=2, after=events.data[1].id)
    assert [e.id for e in second.data] == [e.id for e in events.data[2:4]]

    checkpoints = client.fine_tuning.jobs.checkpoints.list(job.id).data
    assert [c.step_number for c in checkpoints] == [4, 3]  # the final adapter, then the newest kept
    assert checkpoints[0].fine_tuned_model_checkpoint == "ft/memo-bot-v1"
    assert checkpoints[1].fine_tuned_model_checkpoint == f"{job.id}:ckpt-step-3"
    assert all(c.fine_tuning_job_id == job.id and c.metrics.train_loss is not None for c in checkpoints)

    # ---- the fine-tuned model answers at the same gateway
    answer = client.chat.completions.create(
        model=job.fine_tuned_model,
        messages=[{"role": "user", "content": "What is the capital of France?"}],
        max_tokens=4,
        temperature=0,
    )
    assert answer.model == "ft/memo-bot-v1" and answer.choices[0].message.role == "assistant"

    # ---- list, filter, cancel a finished job, delete the file
    listing = client.fine_tuning.jobs.list(limit=10, metadata={"team": "qa"})
    assert [j.id for j in listing.data] == [job.id]
    assert client.fine_tuning.jobs.list(metadata={"team": "other"}).data == []
    with pytest.raises(openai.BadRequestError) as caught:
        client.fine_tuning.jobs.cancel(job.id)
    assert error_of(caught.value)["message"] == f"Job has already completed: {job.id}"
    with pytest.raises(openai.NotFoundError) as caught:
        client.fine_tuning.jobs.retrieve("ftj-NOSUCHJOB")
    assert error_of(caught.value)["code"] == "fine_tuning_job_not_found"
    assert client.files.delete(uploaded.id).deleted is True
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(uploaded.id)
    # the job keeps its own copy of the data (the dataset): it is still readable
    assert client.fine_tuning.jobs.retrieve(job.id).status == "succeeded"

    # ---- cancel a job that has not finished; other keys than the master key are refused
    again = client.files.create(file=("train.jsonl", TRAIN), purpose="fine-tune")
    long_job = client.fine_tuning.jobs.create(
        model=BASE, training_file=again.id, hyperparameters={"n_epochs": 200}
    )
    cancelled = client.fine_tuning.jobs.cancel(long_job.id)
    assert cancelled.id == long_job.id and cancelled.status == "cancelled"
    deadline = time.monotonic() + 60
    while (state := client.fine_tuning.jobs.retrieve(long_job.id)).finished_at is None:
        assert time.monotonic() < deadline, f"job {long_job.id} still {state.status} 60 s after its cancel"
        time.sleep(0.5)
    assert state.status == "cancelled" and state.fine_tuned_model is None
    assert client.fine_tuning.jobs.list_events(long_job.id).data[0].message == "The job was cancelled"
    with pytest.raises(openai.BadRequestError) as caught:
        client.fine_tuning.jobs.cancel(long_job.id)
    assert error_of(caught.value)["message"] == f"Job has already been cancelled: {long_job.id}"
    stranger = OpenAI(base_url=client.base_url, api_key="sk-not-the-master-key", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as caught:
        stranger.fine_tuning.jobs.list()
    assert error_of(caught.value)["code"] == "invalid_api_key"
