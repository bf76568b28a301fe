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


async def load(client: httpx.AsyncClient, adapter: Path) -> float:
    t = time.perf_counter()
    reply = await client.post("/v1/load_lora_adapter", json={"lora_name": "ft", "lora_path": str(adapter)})
    reply.raise_for_status()
    return time.perf_counter() - t


async def interleaved(client: httpx.AsyncClient, args: argparse.Namespace) -> dict[str, dict[str, float]]:
    """Base and adapter, alternating, so that a change in the machine's load hits both alike."""
    await measure(client, "bench", 4, 1)  # warm-up (and, for a merging server, the merge)
    await measure(client, "ft", 4, 1)
    samples: dict[str, list[dict[str, float]]] = {"bench": [], "ft": []}
    for _ in range(args.runs):
        for model in samples:
            samples[model].append(await measure(client, model, args.tokens, 1))
    return {
        model: {key: statistics.median(s[key] for s in runs) for key in runs[0]}
        for model, runs in samples.items()
    }


async def greedy_answer(client: httpx.AsyncClient, tokens: int) -> dict[str, Any]:
    body = {
        "model": "ft",
        "messages": [{"role": "user", "content": " ".join(f"w{i}" for i in range(100, 140))}],
        "max_tokens": tokens,
        "temperature": 0,
        "logprobs": True,
        "return_token_ids": True,
    }
    choice = (await client.post("/v1/chat/completions", json=body)).json()["choices"][0]
    return {"ids": choice["token_ids"], "logprobs": [e["logprob"] for e in choice["logprobs"]["content"]]}


async def batched(client: httpx.AsyncClient, model: str, clients: int, tokens: int, runs: int) -> float:
    """Completion tokens per second of wall time with ``clients`` requests sent at once (median)."""
    rates = []
    for run_index in range(runs):
        bodies = [
            {
                "model": model,
                "messages": [
                    {"role": "user", "content": " ".join(f"w{i + 7 * c + run_index}" for i in range(10, 60))}
                ],
                "max_tokens": tokens,
                "temperature": 0,
            }
            for c in range(clients)
        ]
        started = time.perf_counter()
        replies = await asyncio.gather(*(client.post("/v1/chat/completions", json=b) for b in bodies))
        elapsed = time.perf_counter() - started
        rates.append(sum(r.json()["usage"]["completion_tokens"] for r in replies) / elapsed)
    return statistics.median(rates)


async def run(args: argparse.Namespace, folder: Path) -> None:
    base = Path(args.model_path) if args.model_path else folder / "base"
    if not args.model_path:
        t = time.perf_counter()
        build_model(base, args.shape)
        print(f"built a random {args.shape}-shaped model in {time.perf_counter() - t:.1f} s", file=sys.stderr)
    adapter = folder / "adapter"
    build_adapter(base, adapter)
    # 1. PEFT's unmerged forward (merging off), base and adapter interleaved.
    async with served(base, args, merged_adapters=0) as (client, ready):
        adapter_s = await load(client, adapter)
        unmerged = await interleaved(client, args)
        reference = await greedy_answer(client, args.tokens)
    # 2. The same with the adapter merged into a copy, then concurrent requests (static batching).
    async with served(base, args, merged_adapters=2, max_batch_size=max(args.clients)) as (client, ready):
        await load(client, adapter)
        t = time.perf_counter()
        await measure(client, "ft", 1, 1)  # the first request of an adapter merges it
        merge_s = time.perf_counter() - t
        merged = await interleaved(client, args)
        answer = await greedy_answer(client, args.tokens)
        concurrent = {
            (model, c): await batched(client, model, c, args.tokens, args.runs)
            for model in ("bench", "ft")
            for c in args.clients
        }
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
    print("| what | tokens/s | first token (ms) | vs base of the same server |")
    print("|---|---:|---:|---:|")
    rows = [
        ("base (merging off)", unmerged["bench"], unmerged["bench"]),
        ("LoRA r=16, all projections, unmerged (PEFT)", unmerged["ft"], unmerged["bench"]),
        ("base (merging on)", merged["bench"], merged["bench"]),
        ("LoRA r=16, merged copy", merged["ft"], merged["bench"]),
    ]
    for label, r, ref in rows:
        print(
            f"| {label} | {r['tokens_per_s']:.1f} | {r['first_token_ms']:.0f} | "
            f"{r['tokens_per_s'] / ref['tokens_per_s']:.2f}x |"
        )
    for (model, c), rate in concurrent.items():
        label = "base" if model == "bench" else "merged LoRA"
        single = merged[model]["tokens_per_s"]
        print(
            f"| {label}, {c} concurrent requests (static batching) | {rate:.1f} | | {rate / single:.2f}x one at a time |"
        )
    print(
        f"\nmerged vs unmerged greedy answer: {same}/{len(reference['ids'])} tokens equal, largest log-prob "
        f"difference {drift:.4f}"
    )
    print(
        json.dumps(
            {
                "unmerged": unmerged,
                "merged": merged,
                "concurrent": {f"{m}x{c}": r for (m, c), r in concurrent.items()},
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
