"""Generation speed of the embedded model server: base model, LoRA adapter unmerged and merged, and
concurrent requests (static batching), in one run.

    .venv/bin/python services/model-server/bench/latency.py                  # Gemma-3-270M-shaped model
    .venv/bin/python services/model-server/bench/latency.py --model-path DIR # a real HF folder
    .venv/bin/python services/model-server/bench/latency.py --shape tiny     # seconds, for a smoke run

By default the model has Gemma 3 270M's shape (18 layers, hidden 640, 262,144-token vocabulary,
268M parameters) with random weights: the compute per token is the real model's, and nothing
has to be downloaded or imported from GGUF. The adapter is LoRA r=16 on every attention and MLP
projection (the trainer's default) with random non-zero weights. Requests go through the real
app (HTTP over ASGI, the same code path as uvicorn), greedy, a fixed number of tokens: first one
at a time on a server with merging off (PEFT's unmerged forward) and then on one that merges the
adapter into a copy of the model, base and adapter interleaved; then ``--clients`` requests at
once (static batching). The figures are completion tokens per second of wall time and the time
to a one-token answer; it also compares the merged and unmerged greedy answers token by token.
Printed as a Markdown table for the README.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx

from flywheel_model_server.app import build_app
from flywheel_model_server.settings import ModelServerSettings

SHAPES = {
    "gemma-3-270m": dict(
        vocab_size=262_144,
        hidden_size=640,
        intermediate_size=2048,
        num_hidden_layers=18,
        num_attention_heads=4,
        num_key_value_heads=1,
        head_dim=256,
        max_position_embeddings=32_768,
        sliding_window=512,
        query_pre_attn_scalar=256,
    ),
    "tiny": dict(
        vocab_size=2048,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=1,
        head_dim=16,
        max_position_embeddings=2048,
        sliding_window=512,
        query_pre_attn_scalar=16,
    ),
}
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def build_model(folder: Path, shape: str) -> None:
    """A random Gemma 3 text model and a word-level tokenizer that covers its whole vocabulary."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig, PreTrainedTokenizerFast

    config = Gemma3TextConfig(**SHAPES[shape], bos_token_id=2, eos_token_id=1, pad_token_id=0)
    vocab = {"<pad>": 0, "<eos>": 1, "<bos>": 2, "<unk>": 3}
    vocab.update({f"w{i}": i for i in range(4, config.vocab_size)})
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=False)
    PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>", unk_token="<unk>"
    ).save_pretrained(folder)
    torch.manual_seed(0)
    Gemma3ForCausalLM(config).save_pretrained(folder)


def build_adapter(base: Path, folder: Path) -> None:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base)
    peft_model = get_peft_model(
        model, LoraConfig(r=16, lora_alpha=32, target_modules=TARGETS, init_lora_weights=False)
    )
    torch.manual_seed(1)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_" in name:
                param.normal_(0.0, 0.02)
    peft_model.save_pretrained(folder)


async def measure(client: httpx.AsyncClient, model: str, tokens: int, runs: int) -> dict[str, float]:
    body = {
        "model": model,
        "messages": [{"role": "user", "content": " ".join(f"w{i}" for i in range(10, 60))}],
        "max_tokens": tokens,
        "temperature": 0,
    }
    rates, firsts, produced = [], [], []
    for _ in range(runs):
        started = time.perf_counter()
        reply = await client.post("/v1/chat/completions", json=body)
        elapsed = time.perf_counter() - started
        reply.raise_for_status()
        count = reply.json()["usage"]["completion_tokens"]
        rates.append(count / elapsed)
        produced.append(count)
        # Time to the first token: the same request asking for one token (prefill + one step).
        started = time.perf_counter()
        reply = await client.post("/v1/chat/completions", json={**body, "max_tokens": 1})
        reply.raise_for_status()
        firsts.append(time.perf_counter() - started)
    return {
        "tokens_per_s": statistics.median(rates),
        "first_token_ms": 1000 * statistics.median(firsts),
        "completion_tokens": statistics.median(produced),
    }


@contextlib.asynccontextmanager
async def served(
    base: Path, args: argparse.Namespace, **settings: Any
) -> AsyncIterator[tuple[httpx.AsyncClient, dict]]:
    config = ModelServerSettings(
        model_path=base, base_model="bench", device=args.device, torch_threads=args.threads, **settings
    )
    app = build_app(config)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://bench", timeout=3600) as client:
            while (await client.get("/health/ready")).status_code != 200:  # noqa: ASYNC110 - a probe, polled
                await asyncio.sleep(0.1)
            yield client, (await client.get("/health/ready")).json()


async def load(client: httpx.AsyncClient, name: str, adapter: Path) -> float:
    t = time.perf_counter()
    reply = await client.post("/v1/load_lora_adapter", json={"lora_name": name, "lora_path": str(adapter)})
    reply.raise_for_status()
    return time.perf_counter() - t


async def greedy_answer(client: httpx.AsyncClient, model: str, tokens: int) -> dict[str, Any]:
    body = {
        "model": model,
        "messages": [{"role": "user", "content": " ".join(f"w{i}" for i in range(100, 140))}],
        "max_tokens": tokens,
        "temperature": 0,
        "logprobs": True,
        "return_token_ids": True,
    }
    choice = (await client.post("/v1/chat/completions", json=body)).json()["choices"][0]
    return {"ids": choice["token_ids"], "logprobs": [e["logprob"] for e in choice["logprobs"]["content"]]}


async def batched(client: httpx.AsyncClient, model: str, clients: int, tokens: int, seed: int) -> float:
    """Completion tokens per second of wall time with ``clients`` requests sent at once."""
    bodies = [
        {
            "model": model,
            "messages": [
                {"role": "user", "content": " ".join(f"w{i + 7 * c + seed}" for i in range(10, 60))}
            ],
            "max_tokens": tokens,
            "temperature": 0,
        }
        for c in range(clients)
    ]
    started = time.perf_counter()
    replies = await asyncio.gather(*(client.post("/v1/chat/completions", json=b) for b in bodies))
    elapsed = time.perf_counter() - started
    return sum(r.json()["usage"]["completion_tokens"] for r in replies) / elapsed


def median(samples: list[dict[str, float]]) -> dict[str, float]:
    return {key: statistics.median(s[key] for s in samples) for key in samples[0]}


async def run(args: argparse.Namespace, folder: Path) -> None:
    base = Path(args.model_path) if args.model_path else folder / "base"
    if not args.model_path:
        t = time.perf_counter()
        build_model(base, args.shape)
        print(f"built a random {args.shape}-shaped model in {time.perf_counter() - t:.1f} s", file=sys.stderr)
    adapter = folder / "adapter"
    build_adapter(base, adapter)
    # One server: the adapter under two names, one served merged ("ft"), the other kept on PEFT's
    # unmerged forward ("ft-plain"), so all three are measured interleaved, under the same load.
    async with served(base, args, merged_adapters=2, max_batch_size=max(args.clients)) as (client, ready):
        engine = client._transport.app.state.engine  # type: ignore[attr-defined]
        adapter_s = await load(client, "ft", adapter)
        await load(client, "ft-plain", adapter)
        engine._unmergeable.add(engine._adapters["ft-plain"].internal)
        t = time.perf_counter()
        await measure(client, "ft", 1, 1)  # the first request of an adapter merges it
        merge_s = time.perf_counter() - t
        models = {
            "bench": "base",
            "ft-plain": "LoRA r=16, all projections, unmerged (PEFT)",
            "ft": "LoRA r=16, merged copy",
        }
        for model in models:
            await measure(client, model, 4, 1)  # warm-up
        samples: dict[str, list[dict[str, float]]] = {model: [] for model in models}
        for _ in range(args.runs):
            for model in models:
                samples[model].append(await measure(client, model, args.tokens, 1))
        single = {model: median(runs) for model, runs in samples.items()}
        reference = await greedy_answer(client, "ft-plain", args.tokens)
        answer = await greedy_answer(client, "ft", args.tokens)
        # Concurrent requests against one at a time, interleaved likewise.
        concurrent: dict[tuple[str, int], list[float]] = {}
        alone: dict[str, list[float]] = {"bench": [], "ft": []}
        for run_index in range(args.runs):
            for model in alone:
                alone[model].append((await measure(client, model, args.tokens, 1))["tokens_per_s"])
                for c in args.clients:
                    rate = await batched(client, model, c, args.tokens, run_index)
                    concurrent.setdefault((model, c), []).append(rate)
    same = sum(a == b for a, b in zip(answer["ids"], reference["ids"], strict=False))
    drift = max(
        (abs(a - b) for a, b in zip(answer["logprobs"], reference["logprobs"], strict=False)), default=0.0
    )
    print(
        f"\nmodel: {args.model_path or args.shape + ' shape, random weights'}; device: {ready['device']}; "
        f"torch threads: {args.threads or 'default'}; adapter load {adapter_s:.2f} s; first request of the "
        f"adapter (merge + 1 token) {merge_s:.2f} s"
    )
    print(f"greedy, {args.tokens} new tokens, median of {args.runs} interleaved runs\n")
    print("| what | tokens/s | first token (ms) | vs base |")
    print("|---|---:|---:|---:|")
    for model, label in models.items():
        r = single[model]
        print(
            f"| {label} | {r['tokens_per_s']:.1f} | {r['first_token_ms']:.0f} | "
            f"{r['tokens_per_s'] / single['bench']['tokens_per_s']:.2f}x |"
        )
    for (model, c), rates in concurrent.items():
        label = "base" if model == "bench" else "merged LoRA"
        rate, one = statistics.median(rates), statistics.median(alone[model])
        print(
            f"| {label}, {c} concurrent requests (static batching) | {rate:.1f} | | {rate / one:.2f}x one at a time ({one:.1f}) |"
        )
    print(
        f"\nmerged vs unmerged greedy answer: {same}/{len(reference['ids'])} tokens equal, largest log-prob "
        f"difference {drift:.4f}"
    )
    print(
        json.dumps(
            {
                "single": single,
                "concurrent": {f"{m}x{c}": statistics.median(r) for (m, c), r in concurrent.items()},
                "alone": {m: statistics.median(r) for m, r in alone.items()},
                "tokens_equal": same,
                "logprob_drift": drift,
                "device": ready["device"],
            }
        ),
        file=sys.stderr,
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--shape", choices=sorted(SHAPES), default="gemma-3-270m")
    parser.add_argument("--model-path", help="a Hugging Face folder to serve instead of a random model")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--tokens", type=int, default=64, help="completion tokens per request")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument(
        "--clients", type=int, nargs="+", default=[4], help="concurrent requests for the batching figures"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="model-server-bench-") as folder:
        asyncio.run(run(args, Path(folder)))


if __name__ == "__main__":
    main()
