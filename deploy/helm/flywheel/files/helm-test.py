"""`helm test` on the installed stack: a tiny dataset build, and a tiny fine-tune end to end.

Runs in the trainer image (Python, the generated gRPC stubs, the object-store client, transformers)
as ``python -c <this file> dataset`` or ``… fine-tune``; the chart passes the services' addresses
(FLYWHEEL_*_ADDRESS), the object-store settings and, where service authentication is on, the
token (FLYWHEEL_SERVICE_TOKEN, sent as ``authorization: Bearer`` on every call: :func:`_metadata`).

- ``dataset``: ImportTrajectories (two chat-JSONL agent runs, inline) into a fresh run, then
  CreateDatasetBuild (``step_sft``) over that run, which must end SUCCEEDED with examples.
- ``fine-tune``: the base model named by FLYWHEEL_TEST_BASE_MODEL, or, when that is empty, a tiny
  random causal LM (~0.1M parameters) this script writes and registers as ``helm-test-tiny``; the
  dataset build above with it as the target; CreateFineTuneJob (2 steps, LoRA rank 4) on the
  trainer's backend (a Kubernetes Job from trainer-job-template.yaml), which must end SUCCEEDED
  with its adapter published.

Every wait has a deadline (FLYWHEEL_TEST_DEADLINE_S, seconds, for the whole test); a failure
prints what failed and why (the job's error, its last status message) and exits 1.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc

from flywheel.common.v1 import common_pb2
from flywheel.dataset.v1 import dataset_pb2, dataset_pb2_grpc
from flywheel.trainer.v1 import trainer_pb2, trainer_pb2_grpc
from flywheel.trajectory.v1 import trajectory_pb2, trajectory_pb2_grpc

START = time.monotonic()
DEADLINE_S = float(os.environ.get("FLYWHEEL_TEST_DEADLINE_S", "900"))
RPC_TIMEOUT_S = 60.0
TINY_MODEL = "helm-test-tiny"
TERMINAL = {common_pb2.JOB_STATE_SUCCEEDED, common_pb2.JOB_STATE_FAILED, common_pb2.JOB_STATE_CANCELLED}
STATE = common_pb2.JobState.Name

# Two agent runs in the chat-JSONL shape the trajectory store imports (JSON tool-protocol turns).
RUNS = [
    {
        "task_id": "helm-test-add",
        "resolved": True,
        "messages": [
            {"role": "system", "content": "You are a repo-fixing agent."},
            {"role": "user", "content": "GOAL:\nFix add so tests pass."},
            {
                "role": "assistant",
                "content": '{"type":"tool_call","name":"read_file","args":{"rel_path":"add.py"}}',
            },
            {"role": "user", "content": "[tool_result]\ndef add(a, b): return a - b"},
            {
                "role": "assistant",
                "content": '{"type":"tool_call","name":"write_file","args":{"rel_path":"add.py",'
                '"content":"def add(a, b): return a + b"}}',
            },
            {"role": "user", "content": "[tool_result]\nwrote add.py\n[TESTS PASS 2/2]"},
        ],
    },
    {
        "task_id": "helm-test-neg",
        "resolved": True,
        "messages": [
            {"role": "system", "content": "You are a repo-fixing agent."},
            {"role": "user", "content": "GOAL:\nFix neg so tests pass."},
            {
                "role": "assistant",
                "content": '{"type":"tool_call","name":"read_file","args":{"rel_path":"neg.py"}}',
            },
            {"role": "user", "content": "[tool_result]\ndef neg(a): return a"},
            {
                "role": "assistant",
                "content": '{"type":"tool_call","name":"write_file","args":{"rel_path":"neg.py",'
                '"content":"def neg(a): return -a"}}',
            },
            {"role": "user", "content": "[tool_result]\nwrote neg.py\n[TESTS PASS 1/1]"},
        ],
    },
]


class TestFailed(Exception):
    """What failed and why, for the user reading `helm test --logs`."""


def _metadata() -> tuple[tuple[str, str], ...]:
    """The only place the calls' credentials are made: the service token, when there is one."""
    token = os.environ.get("FLYWHEEL_SERVICE_TOKEN", "").strip()
    return (("authorization", f"Bearer {token}"),) if token else ()


def _channel(variable: str) -> grpc.Channel:
    address = os.environ.get(variable)
    if not address:
        raise TestFailed(f"{variable} is not set (the chart passes every service's address)")
    return grpc.insecure_channel(address)


def _call(what: str, method: Callable[..., Any], request: Any) -> Any:
    try:
        return method(request, timeout=RPC_TIMEOUT_S, metadata=_metadata())
    except grpc.RpcError as err:
        raise TestFailed(f"{what}: {err.code().name}: {err.details()}") from err


def _left_s() -> float:
    return DEADLINE_S - (time.monotonic() - START)


def _wait(what: str, get: Callable[[], Any], describe: Callable[[Any], str]) -> Any:
    """Poll ``get`` until its state is terminal; the test's deadline bounds the wait."""
    last = ""
    while True:
        resource = get()
        line = describe(resource)
        if line != last:
            print(f"  {what}: {line}", flush=True)
            last = line
        if resource.state in TERMINAL:
            return resource
        if _left_s() <= 0:
            raise TestFailed(f"{what} did not finish within {DEADLINE_S:.0f} s; last seen: {line}")
        time.sleep(min(3.0, max(0.1, _left_s())))


def _error(resource: Any) -> str:
    if resource.HasField("error"):
        return f"{common_pb2.JobState.Name(resource.state)}: {resource.error.code} {resource.error.message}"
    return STATE(resource.state)


def build_dataset(target_base_model: str = "") -> str:
    """Import the two runs, build a step_sft dataset over them; returns the dataset id."""
    run_id = f"helm-test-{uuid.uuid4().hex[:12]}"
    content = "".join(json.dumps(r) + "\n" for r in RUNS).encode()
    store = trajectory_pb2_grpc.TrajectoryServiceStub(_channel("FLYWHEEL_TRAJECTORY_ADDRESS"))
    imported = _call(
        "ImportTrajectories",
        store.ImportTrajectories,
        trajectory_pb2.ImportTrajectoriesRequest(
            format=trajectory_pb2.IMPORT_FORMAT_CHAT_JSONL,
            content=content,
            suite="helm-test",
            run_id=run_id,
            source_name="helm-test.jsonl",
        ),
    )
    print(f"imported {imported.created_count} trajectories into run {imported.run_id}", flush=True)
    if imported.skipped_count or imported.created_count != len(RUNS):
        errors = "; ".join(f"line {e.line}: {e.message}" for e in imported.errors)
        raise TestFailed(f"ImportTrajectories stored {imported.created_count} of {len(RUNS)}: {errors}")
    datasets = dataset_pb2_grpc.DatasetServiceStub(_channel("FLYWHEEL_DATASET_ADDRESS"))
    build = dataset_pb2.DatasetBuild(
        recipe="step_sft",
        source=dataset_pb2.DatasetSource(run_ids=[imported.run_id]),
        parameters={"require_resolved": "false"},
        split=dataset_pb2.SplitConfig(train_ratio=1.0),
        formats=[dataset_pb2.OUTPUT_FORMAT_CHAT_MESSAGES],
        file_formats=[dataset_pb2.FILE_FORMAT_JSONL],
        target_base_model=target_base_model,
        labels={"flywheel.dev/helm-test": "true"},
    )
    created = _call(
        "CreateDatasetBuild",
        datasets.CreateDatasetBuild,
        dataset_pb2.CreateDatasetBuildRequest(build=build, request_id=run_id),
    ).build
    print(f"dataset build {created.id} created", flush=True)
    done = _wait(
        f"dataset build {created.id}",
        lambda: (
            _call(
                "GetDatasetBuild",
                datasets.GetDatasetBuild,
                dataset_pb2.GetDatasetBuildRequest(build_id=created.id),
            ).build
        ),
        lambda b: f"{STATE(b.state)}, {b.progress.examples_written} examples",
    )
    if done.state != common_pb2.JOB_STATE_SUCCEEDED:
        raise TestFailed(f"dataset build {done.id} ended {_error(done)}")
    if done.progress.examples_written < 1:
        raise TestFailed(f"dataset build {done.id} succeeded with no example")
    print(f"dataset {done.dataset_id} built ({done.progress.examples_written} examples)", flush=True)
    return str(done.dataset_id)


def _tiny_model(folder: Path) -> Path:
    """A randomly initialised ~0.1M-parameter Llama and a byte-level BPE tokenizer trained on RUNS."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    special = ["<|pad|>", "<|bos|>", "<|eos|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=special, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator([m["content"] for r in RUNS for m in r["messages"]] * 4, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token=special[0], bos_token=special[1], eos_token=special[2]
    )
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(fast),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        pad_token_id=fast.pad_token_id,
        bos_token_id=fast.bos_token_id,
        eos_token_id=fast.eos_token_id,
        tie_word_embeddings=False,
    )
    LlamaForCausalLM(config).save_pretrained(folder)
    fast.save_pretrained(folder)
    return folder


def _base_model() -> str:
    name = os.environ.get("FLYWHEEL_TEST_BASE_MODEL", "").strip()
    if name:
        print(f"fine-tuning the registered base model {name}", flush=True)
        return name
    from flywheel_common.objectstore import ObjectStoreSettings, open_object_store
    from flywheel_trainer.catalog import register_base_model

    with tempfile.TemporaryDirectory(prefix="helm-test-") as folder:
        model = _tiny_model(Path(folder) / "model")
        register_base_model(
            open_object_store(ObjectStoreSettings()), model, TINY_MODEL, "tiny random model of helm test"
        )
    print(f"registered the tiny random base model {TINY_MODEL}", flush=True)
    return TINY_MODEL


def fine_tune() -> None:
    base = _base_model()
    dataset_id = build_dataset(target_base_model=base)
    trainer = trainer_pb2_grpc.TrainerServiceStub(_channel("FLYWHEEL_TRAINER_ADDRESS"))
    job = trainer_pb2.FineTuneJob(
        base_model=base,
        dataset_id=dataset_id,
        method=trainer_pb2.FINE_TUNE_METHOD_SFT,
        adapter_name="helm-test",
        labels={"flywheel.dev/helm-test": "true"},
    )
    hp = job.hyperparameters
    hp.lora.rank, hp.lora.alpha = 4, 8
    hp.max_steps, hp.batch_size, hp.max_seq_length, hp.learning_rate = 2, 2, 256, 1e-3
    created = _call(
        "CreateFineTuneJob",
        trainer.CreateFineTuneJob,
        trainer_pb2.CreateFineTuneJobRequest(job=job, request_id=f"helm-test-{dataset_id}"),
    ).job
    print(
        f"fine-tune job {created.id} created (a Kubernetes Job on the trainer's kubernetes backend)",
        flush=True,
    )

    def get() -> Any:
        return _call(
            "GetFineTuneJob", trainer.GetFineTuneJob, trainer_pb2.GetFineTuneJobRequest(job_id=created.id)
        ).job

    def describe(j: Any) -> str:
        waiting = f" ({j.status_message})" if j.status_message else ""
        return f"{STATE(j.state)}{waiting}, step {j.progress.step}/{j.progress.total_steps}"

    try:
        done = _wait(f"fine-tune job {created.id}", get, describe)
    except TestFailed:
        _call(
            "CancelFineTuneJob",
            trainer.CancelFineTuneJob,
            trainer_pb2.CancelFineTuneJobRequest(job_id=created.id),
        )
        raise
    if done.state != common_pb2.JOB_STATE_SUCCEEDED:
        raise TestFailed(f"fine-tune job {done.id} ended {_error(done)}")
    if not done.adapter.name:
        raise TestFailed(f"fine-tune job {done.id} succeeded without publishing an adapter")
    print(
        f"fine-tune job {done.id} SUCCEEDED: adapter {done.adapter.name} v{done.adapter.version}", flush=True
    )


def main(argv: list[str]) -> int:
    modes = {"dataset": lambda: print(f"OK: dataset {build_dataset()}"), "fine-tune": fine_tune}
    if len(argv) != 2 or argv[1] not in modes:
        print(f"usage: helm-test.py {{{'|'.join(modes)}}}", file=sys.stderr)
        return 2
    try:
        modes[argv[1]]()
    except TestFailed as err:
        print(f"FAILED: {err}", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
