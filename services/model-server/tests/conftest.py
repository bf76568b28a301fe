"""A tiny Llama model, a word-level tokenizer and two LoRA adapters, all built here offline.

Nothing comes from a hub: the tokenizer is a WordLevel vocabulary (decoded words are joined
with spaces, so stop strings and streamed text are plain words), the model is a 2-layer
LlamaForCausalLM with random weights, and the adapters have random non-zero LoRA weights so
that each answers differently from the base model and from the other.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from flywheel_common.auth import http_headers

WORDS = (
    "apple banana cherry date elder fig grape honey iris jade kiwi lemon mango nectar olive pear "
    "quince rose sage thyme umber violet walnut yarrow zest red orange yellow green blue indigo "
    "one two three four five six seven eight nine ten hello world user assistant system end "
    "the a of to and in is it you that he was for on are as with his they at be this"
).split()
SPECIAL = ["<pad>", "<s>", "</s>", "<unk>"]
PUNCT = ["<|", "|>", ".", ",", "!", "?", ":"]


@dataclass(frozen=True)
class TinyModels:
    base: Path
    adapter_a: Path
    adapter_b: Path
    adapter_templated: Path  #: adapter_a's weights with its own chat template
    adapter_wrong_shape: Path  #: a LoRA adapter for a different hidden size


def build_tokenizer(folder: Path) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate(SPECIAL + PUNCT + WORDS)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=False)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )
    fast.save_pretrained(folder)


def build_model(folder: Path, hidden: int = 64, seed: int = 0) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(SPECIAL) + len(PUNCT) + len(WORDS),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
        initializer_range=0.2,  # large enough that greedy text varies rather than repeating one word
    )
    torch.manual_seed(seed)
    LlamaForCausalLM(config).save_pretrained(folder)


def build_adapter(base: Path, folder: Path, seed: int) -> None:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base)
    config = LoraConfig(
        r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"], init_lora_weights=False
    )
    peft_model = get_peft_model(model, config)
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_" in name:
                param.normal_(0.0, 0.5)
    peft_model.save_pretrained(folder)


@pytest.fixture(scope="session")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> TinyModels:
    root = tmp_path_factory.mktemp("tiny")
    base = root / "base"
    build_tokenizer(base)
    build_model(base)
    build_adapter(base, root / "adapter-a", seed=1)
    build_adapter(base, root / "adapter-b", seed=2)
    templated = root / "adapter-templated"
    shutil.copytree(root / "adapter-a", templated)
    (templated / "chat_template.jinja").write_text(
        "{% for m in messages %}one two three {{ m['content'] }} end {% endfor %}four"
    )
    other = root / "other-base"
    build_tokenizer(other)
    build_model(other, hidden=32)
    build_adapter(other, root / "adapter-wrong-shape", seed=3)
    return TinyModels(base, root / "adapter-a", root / "adapter-b", templated, root / "adapter-wrong-shape")


def wait_model_ready(url: str, timeout: float = 240) -> dict:
    deadline = time.monotonic() + timeout
    last: dict = {}
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            reply = httpx.get(f"{url}/health/ready", timeout=2)
            last = reply.json()
            if reply.status_code == 200:
                return last
        time.sleep(0.1)
    raise AssertionError(f"model not ready after {timeout} s: {last}")


@pytest.fixture(scope="session")
def server(tiny: TinyModels, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The real server (`python -m flywheel_model_server`, uvicorn) on a free port, serving the tiny model."""
    # Imported here: it pulls in the gRPC scaffold, which the GPU machine's test run does without.
    from flywheel_testing.processes import start_module

    tmp = tmp_path_factory.mktemp("server")
    env = {
        "FLYWHEEL_MODEL_SERVER_MODEL_PATH": str(tiny.base),
        "FLYWHEEL_MODEL_SERVER_BASE_MODEL": "tiny",
        "FLYWHEEL_MODEL_SERVER_DEVICE": "cpu",
        # float32 everywhere (CPUs with native bfloat16 would get bfloat16): log-probs are compared
        # with a forward pass at float32 precision.
        "FLYWHEEL_MODEL_SERVER_DTYPE": "float32",
        "FLYWHEEL_MODEL_SERVER_TORCH_THREADS": "1",
        "FLYWHEEL_MODEL_SERVER_LOG_FORMAT": "text",
        "FLYWHEEL_MODEL_SERVER_MAX_N": "4",
        "FLYWHEEL_OBJECT_STORE_ROOT": str(tmp / "objects"),
    }
    proc, info, _log = start_module("flywheel_model_server", "FLYWHEEL_MODEL_SERVER_", env, tmp)
    url = f"http://127.0.0.1:{info['port']}"
    try:
        wait_model_ready(url)
        yield url
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.fixture
def client(server: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server, timeout=60, headers=http_headers()) as http:
        yield http
