"""Test helpers: a tiny Llama-style model and a byte-level BPE tokenizer, built offline (no hub)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from flywheel.trainer.v1 import trainer_pb2, trainer_pb2_grpc
from flywheel_common.objectstore import ObjectStore

FACTS = [
    ("What is the capital of France?", "Paris."),
    ("What colour is the sky?", "Blue."),
    ("How many legs has a spider?", "Eight."),
    ("Who wrote Hamlet?", "Shakespeare."),
]
SFT_ROWS = [
    {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]} for q, a in FACTS
] * 2
DPO_ROWS = [
    {
        "prompt": [{"role": "user", "content": q}],
        "chosen": [{"role": "assistant", "content": a}],
        "rejected": [{"role": "assistant", "content": "I do not know."}],
    }
    for q, a in FACTS
]
TINY = "tiny-llama"


SPECIAL = ["<|pad|>", "<|bos|>", "<|eos|>", "<|user|>", "<|assistant|>", "<|system|>", "<|end|>"]


def build_tiny_model(folder: Path, corpus: list[str], *, with_template: bool = False) -> Path:
    """Write a randomly initialised ~0.2M-parameter causal LM with its tokenizer into ``folder``."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=SPECIAL, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(corpus, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<|pad|>", bos_token="<|bos|>", eos_token="<|eos|>"
    )
    fast.add_special_tokens({"additional_special_tokens": SPECIAL[3:]})
    if with_template:
        fast.chat_template = (
            "{% for m in messages %}{{ m['role'] }}: {% if m['role'] == 'assistant' %}{% generation %}"
            "{{ m['content'] }}<|end|>{% endgeneration %}{% else %}{{ m['content'] }}<|end|>{% endif %}"
            "{% endfor %}{% if add_generation_prompt %}assistant: {% endif %}"
        )
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(fast),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        pad_token_id=fast.pad_token_id,
        bos_token_id=fast.bos_token_id,
        eos_token_id=fast.eos_token_id,
        tie_word_embeddings=False,
        # Wide enough init that the frozen random lm_head can express peaked distributions
        # (with the default 0.02 the largest reachable logit is ~1.3 and the loss floors near 4.6).
        initializer_range=0.2,
    )
    model = LlamaForCausalLM(config)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    fast.save_pretrained(folder)
    return folder


def write_dataset(
    store: ObjectStore,
    dataset_id: str,
    kind: str,
    rows: list[dict[str, Any]],
    validation: list[dict[str, Any]] | None = None,
) -> None:
    """Write a dataset in the layout the README documents for the dataset builder."""
    prefix = f"datasets/{dataset_id}/"
    body = "\n".join(json.dumps(r) for r in rows).encode()
    store.put(prefix + "train.jsonl", body, content_type="application/x-ndjson")
    files = {"train": "train.jsonl"}
    if validation:
        files["validation"] = "validation.jsonl"
        body = "\n".join(json.dumps(r) for r in validation).encode()
        store.put(prefix + "validation.jsonl", body, content_type="application/x-ndjson")
    manifest = {"dataset_id": dataset_id, "kind": kind, "files": files}
    store.put(prefix + "manifest.json", json.dumps(manifest).encode(), content_type="application/json")


def sft_job(adapter: str = "memo", **hp: Any) -> trainer_pb2.FineTuneJob:
    job = trainer_pb2.FineTuneJob(
        base_model=TINY,
        dataset_id="ds-sft0000000000001",
        method=trainer_pb2.FINE_TUNE_METHOD_SFT,
        adapter_name=adapter,
    )
    lora = hp.pop("lora", {"rank": 8, "alpha": 16})
    job.hyperparameters.lora.rank = lora["rank"]
    job.hyperparameters.lora.alpha = lora["alpha"]
    defaults = {"max_steps": 12, "learning_rate": 1e-2, "batch_size": 4, "max_seq_length": 128}
    for key, value in {**defaults, **hp}.items():
        setattr(job.hyperparameters, key, value)
    return job


async def wait_for(
    stub: trainer_pb2_grpc.TrainerServiceStub,
    job_id: str,
    pred: Callable[[trainer_pb2.FineTuneJob], bool],
    limit_s: float = 300.0,
) -> trainer_pb2.FineTuneJob:
    deadline = asyncio.get_running_loop().time() + limit_s
    while True:
        job = (await stub.GetFineTuneJob(trainer_pb2.GetFineTuneJobRequest(job_id=job_id))).job
        if pred(job):
            return job
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting on {job_id}: {job}")
        await asyncio.sleep(0.2)


def assert_starts_from(
    env: dict[str, str], job: trainer_pb2.FineTuneJob, adapter_dir: Path, work: Path
) -> None:
    """The trainer's recipe set up in this process for ``job`` starts from exactly the LoRA weights
    in ``adapter_dir`` (continued training, ``init_adapter``)."""
    import os
    import threading

    import torch
    from safetensors.torch import load_file

    from flywheel_trainer import hparams, recipe
    from flywheel_trainer.jobs import METHOD_NAMES, _init_prefix
    from flywheel_trainer.protocol import Spec

    work.mkdir()
    spec = Spec(
        job_id="ftj-setup",
        base_model=job.base_model,
        dataset_id=job.dataset_id,
        method=METHOD_NAMES[job.method],
        hyperparameters=hparams.worker_hparams(job.hyperparameters),
        cache_dir=str(work / "cache"),
        logging_steps=1,
        init_adapter=job.init_adapter,
        init_adapter_prefix=_init_prefix(job.init_adapter),
    )
    (work / "spec.json").write_text(spec.model_dump_json())
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update({k: v for k, v in env.items() if k.startswith("FLYWHEEL_OBJECT_STORE_")})
    try:
        setup = recipe.Recipe(work, threading.Event(), lambda record: None)
        assert setup.setup() is None
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    published = load_file(str(adapter_dir / "adapter_model.safetensors"))
    state = {k: v for k, v in setup.trainer.model.state_dict().items() if ".default." in k or "lora_" in k}
    compared = 0
    for key, weights in published.items():
        # PEFT stores "…lora_A.weight"; the live model names it "…lora_A.default.weight".
        live = key.replace(".lora_A.weight", ".lora_A.default.weight").replace(
            ".lora_B.weight", ".lora_B.default.weight"
        )
        assert live in state, (key, sorted(state)[:4])
        # On a GPU machine the recipe set the model up on CUDA; the published file loads on the CPU.
        torch.testing.assert_close(state[live].cpu(), weights, rtol=0, atol=0)
        compared += 1
    assert compared > 0 and any(v.abs().sum() > 0 for k, v in published.items() if "lora_B" in k)
