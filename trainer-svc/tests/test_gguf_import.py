"""The packaged Gemma 3 270M GGUF becomes a Hugging Face base model that works (real weights, CPU).

The conversion (about 2 minutes on the shared 2-core machine: transformers parses the GGUF
metadata twice, ~40 s each, and dequantises) runs once per test session, in a background process
started when the session begins (see conftest.py), so it overlaps the other tests.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest

from flywheel.trainer.v1 import trainer_pb2, trainer_pb2_grpc
from flywheel_common.objectstore import ObjectStoreSettings, open_object_store
from flywheel_testing.services import boot_service
from flywheel_trainer import catalog
from flywheel_trainer.gguf_import import GEMMA_DESCRIPTION, GEMMA_NAME
from flywheel_trainer.service import build_app
from flywheel_trainer.settings import TrainerSettings

pytestmark = pytest.mark.slow


@pytest.fixture(scope="session")
def gemma_dir(gemma_conversion: tuple[subprocess.Popen[bytes], Path] | None) -> Path:
    """The converted folder: the conversion started in the background when the session began."""
    assert gemma_conversion is not None
    proc, work = gemma_conversion
    rc = proc.wait(timeout=900)
    log = (work / "convert.log").read_text(errors="replace")[-2000:]
    assert rc == 0, f"GGUF conversion failed ({rc}):\n{log}"
    return work / "hf"


async def test_gemma_import_registers_a_usable_base_model(
    gemma_dir: Path, trainer_env: dict[str, str], channel_to: Callable
) -> None:
    store = open_object_store(
        ObjectStoreSettings(backend="fs", root=Path(trainer_env["FLYWHEEL_OBJECT_STORE_ROOT"]))
    )
    info = catalog.register_base_model(store, gemma_dir, GEMMA_NAME, GEMMA_DESCRIPTION)
    assert info.architecture == "Gemma3ForCausalLM"
    assert 250_000_000 < info.parameter_count < 300_000_000
    assert info.default_chat_template  # the base GGUF ships none
    assert set(info.default_target_modules) == {
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    }

    # The saved folder reloads (no quantization config left) and the weights are the real ones.
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(gemma_dir, dtype=torch.float32)
    assert getattr(model.config, "quantization_config", None) is None
    tokenizer = AutoTokenizer.from_pretrained(gemma_dir)
    text = "The quick brown fox jumps over the lazy dog. The capital of France is Paris."
    ids = tokenizer(text, return_tensors="pt").input_ids
    with torch.no_grad():
        loss = model(ids, labels=ids).loss.item()
    # Random weights would give ~ln(262144) = 12.5 nats per token; the real model knows English.
    assert loss < 5.0, loss
    with torch.no_grad():
        out = model.generate(ids[:, :8], max_new_tokens=3, do_sample=False)
    assert out.shape[1] == 11
    assert tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, chat_template=catalog.DEFAULT_CHAT_TEMPLATE
    ).startswith("<|user|>")

    async with boot_service(build_app, TrainerSettings, trainer_env) as address:
        stub = trainer_pb2_grpc.TrainerServiceStub(channel_to(address))
        models = await stub.ListBaseModels(trainer_pb2.ListBaseModelsRequest())
        gemma = next(m for m in models.base_models if m.name == GEMMA_NAME)
        assert gemma.source == "base-models/gemma-3-270m/" and gemma.max_position_embeddings >= 32768
        job = trainer_pb2.FineTuneJob(
            base_model=GEMMA_NAME,
            dataset_id="ds-sft0000000000001",
            method=trainer_pb2.FINE_TUNE_METHOD_SFT,
            adapter_name="gemma-check",
        )
        reply = await stub.CreateFineTuneJob(
            trainer_pb2.CreateFineTuneJobRequest(job=job, validate_only=True)
        )
        assert len(reply.job.hyperparameters.lora.target_modules) == 7
        job.hyperparameters.quantization.quantization = trainer_pb2.QUANTIZATION_NF4
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.CreateFineTuneJob(trainer_pb2.CreateFineTuneJobRequest(job=job))
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
