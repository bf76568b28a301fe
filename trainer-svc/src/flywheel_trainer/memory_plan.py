"""A memory model of LoRA training on one or several GPUs, fitted to the trainer's own measurements.

Used to plan jobs that cannot be tried here (a 32B model, several GPUs) and to split a GPU SFT
job's rows per step into passes that fit the card (:func:`rows_per_pass`). Everything is plain arithmetic on a model's shape:

- **fixed**: the base weights (bf16, or NF4 with double quantisation for QLoRA, whose embeddings and
  LM head stay bf16 as bitsandbytes leaves them), sharded over the GPUs under FSDP plus the layers
  gathered at a time; the LoRA parameters with their fp32 gradients and AdamW moments
  (16 bytes a parameter, as PEFT keeps adapters in float32); the CUDA context and workspaces.
- **per row** of ``seq_len`` tokens: without recomputation every layer keeps its activations,
  ``ACT_BYTES_PER_ELEMENT * (hidden + intermediate)`` bytes per token and layer; with activation
  checkpointing each layer keeps only its bf16 input, plus one layer's full activations while it
  is recomputed. The LM head's logits are not counted: the worker's fused (Liger) loss does not
  materialise them.

``ACT_BYTES_PER_ELEMENT`` is fitted to the trainer's H200 run of 2026-11-22 (`bench/RESULTS.md`:
the worker path on a Qwen2-1.5B shape, rows padded to 2,048 tokens, no recomputation, LoRA
dropout 0.05: 26.80 GiB at 4 rows, 50.31 at 8, 97.47 at 16): 5.895 GiB a row, 10.5 bytes per
(hidden + intermediate) element per token and layer. `fitted_check()` prints the model against those
three points. It is an estimate for planning, not a guarantee: other attention kernels, dropout 0
(27 GiB less at 16 rows) and allocator fragmentation move it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

GIB = 2**30
ACT_BYTES_PER_ELEMENT = 10.52
#: CUDA context, cuBLAS/flash workspaces and allocator slack, measured as the 1.5B run's intercept
#: less its weights and LoRA state (about 0.3 GiB), rounded up.
RUNTIME_BYTES = 2 * GIB
NF4_BYTES_PER_PARAM = (4 + 0.127) / 8  # 4-bit weights + double-quantised absmax constants
BF16 = 2
LORA_STATE_BYTES = 16  # fp32 weight + fp32 grad + AdamW m and v
#: Tokens a step of a GPU SFT job that leaves batch_size at 0 (``TrainerSettings.gpu_step_tokens``;
#: see ``hparams.default_rows``). Here, without the settings' imports, so the benchmark can use it.
DEFAULT_GPU_STEP_TOKENS = 32768
#: Most rows a step sized by tokens gets (a short max_seq_length); a job may still ask for more.
MAX_DEFAULT_ROWS = 256


def token_sized_rows(step_tokens: int, seq_len: int, ranks: int = 1) -> int:
    """Rows of ``seq_len`` tokens in a step of ``step_tokens`` (at most :data:`MAX_DEFAULT_ROWS`),
    rounded down to a multiple of the ``ranks`` that share the step, at least one each."""
    rows = min(MAX_DEFAULT_ROWS, step_tokens // seq_len)
    return max(ranks, rows // ranks * ranks)


#: The projections LoRA adapts by default, as (input, output) in terms of the shape.
PROJECTIONS = ("q", "k", "v", "o", "gate", "up", "down")


@dataclass(frozen=True)
class Shape:
    name: str
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    vocab: int
    tied_embeddings: bool
    #: Per-head width when it is not hidden / heads (Gemma 3: 256 at hidden 640 and 4 heads).
    explicit_head_dim: int = 0

    @property
    def head_dim(self) -> int:
        return self.explicit_head_dim or self.hidden // self.heads

    @classmethod
    def of(cls, config: Any, name: str = "") -> Shape:
        """The shape of a transformers model config (its text part for multimodal configs)."""
        text = config.get_text_config() if hasattr(config, "get_text_config") else config
        heads = int(text.num_attention_heads)
        hidden = int(text.hidden_size)
        head_dim = int(getattr(text, "head_dim", 0) or 0)
        return cls(
            name or str(getattr(text, "model_type", "model")),
            hidden,
            int(text.intermediate_size),
            int(text.num_hidden_layers),
            heads,
            int(getattr(text, "num_key_value_heads", 0) or heads),
            int(text.vocab_size),
            tied_embeddings=bool(getattr(text, "tie_word_embeddings", True)),
            explicit_head_dim=head_dim if head_dim and head_dim != hidden // heads else 0,
        )

    def projection_dims(self) -> dict[str, tuple[int, int]]:
        kv = self.kv_heads * self.head_dim
        q = self.heads * self.head_dim
        h, i = self.hidden, self.intermediate
        return {
            "q": (h, q),
            "k": (h, kv),
            "v": (h, kv),
            "o": (q, h),
            "gate": (h, i),
            "up": (h, i),
            "down": (i, h),
        }

    @property
    def layer_params(self) -> int:
        return sum(a * b for a, b in self.projection_dims().values()) + 2 * self.hidden

    @property
    def embedding_params(self) -> int:
        return self.vocab * self.hidden * (1 if self.tied_embeddings else 2)

    @property
    def params(self) -> int:
        return self.layers * self.layer_params + self.embedding_params + self.hidden

    def lora_params(self, rank: int) -> int:
        return self.layers * sum(rank * (a + b) for a, b in self.projection_dims().values())


SHAPES = {
    # Qwen2-1.5B: the trainer benchmark's model (bias terms ignored).
    "qwen2-1.5b": Shape("qwen2-1.5b", 1536, 8960, 28, 12, 2, 151936, tied_embeddings=True),
    # Qwen2.5-32B (and Qwen2.5-Coder-32B): 64 layers, GQA 40/8, 152k vocabulary, untied.
    "qwen2.5-32b": Shape("qwen2.5-32b", 5120, 27648, 64, 40, 8, 152064, tied_embeddings=False),
}


@dataclass(frozen=True)
class Plan:
    setup: str
    gpus: int
    gpu_gib: float
    fixed_gib: float
    per_row_gib: float
    max_rows: int  # per GPU, within the margin; 0: does not fit
    tokens_per_s: float  # all GPUs, at the assumed utilisation

    def line(self) -> str:
        fits = f"{self.max_rows} rows/GPU" if self.max_rows else "does not fit"
        tps = f"~{self.tokens_per_s:,.0f} tokens/s" if self.max_rows else "-"
        return (
            f"| {self.setup} | {self.gpus} x {self.gpu_gib:.0f} GiB | {self.fixed_gib:.1f} | "
            f"{self.per_row_gib:.2f} | {fits} | {tps} |"
        )


def per_row_bytes(shape: Shape, seq_len: int, recompute: bool) -> float:
    per_layer = ACT_BYTES_PER_ELEMENT * (shape.hidden + shape.intermediate) * seq_len
    if not recompute:
        return shape.layers * per_layer
    return shape.layers * seq_len * shape.hidden * BF16 + per_layer


def plan(
    shape: Shape,
    *,
    gpus: int = 1,
    gpu_gib: float = 80.0,
    qlora: bool = False,
    recompute: bool = True,
    rank: int = 16,
    seq_len: int = 2048,
    margin: float = 0.10,
    mfu: float = 0.295,
    peak_tflops: float = 989.0,
) -> Plan:
    """Memory per GPU and the rows per step that fit ``(1 - margin)`` of it; tokens/s at ``mfu``
    (counted as the benchmark does, 4 FLOPs per parameter per token; recomputation's extra forward
    pass is work that earns no MFU, so it divides throughput by 1.5)."""
    body = shape.params - shape.embedding_params
    if qlora:
        weights = body * NF4_BYTES_PER_PARAM + shape.embedding_params * BF16
    else:
        weights = shape.params * BF16
    if gpus > 1:  # FSDP: a shard of everything, plus two gathered layers (current and prefetched)
        weights = weights / gpus + 2 * shape.layer_params * BF16
    lora = shape.lora_params(rank) * LORA_STATE_BYTES / gpus
    fixed = weights + lora + RUNTIME_BYTES
    row = per_row_bytes(shape, seq_len, recompute)
    rows = max(0, int((gpu_gib * GIB * (1 - margin) - fixed) // row))
    flops_per_token = 4 * shape.params * (1.5 if recompute else 1.0)
    tps = gpus * mfu * peak_tflops * 1e12 / flops_per_token
    kind = "QLoRA NF4" if qlora else "LoRA bf16"
    setup = f"{shape.name} {kind}{' FSDP' if gpus > 1 else ''}{', recompute' if recompute else ''}"
    return Plan(setup, gpus, gpu_gib, fixed / GIB, row / GIB, rows, tps)


#: Peak memory the allocator reported (torch.cuda.max_memory_allocated) in that run, by rows.
MEASURED_1_5B_GIB = {4: 26.80, 8: 50.31, 16: 97.47}


def fitted_check() -> list[tuple[int, float, float]]:
    """(rows, model GiB, measured GiB) for the 1.5B H200 points the constant was fitted to. The
    allocator's peak does not see the CUDA context and slack, so the model's runtime term is left
    out of the comparison."""
    p = plan(SHAPES["qwen2-1.5b"], gpu_gib=141, recompute=False)
    visible = p.fixed_gib - RUNTIME_BYTES / GIB
    return [(rows, visible + rows * p.per_row_gib, gib) for rows, gib in MEASURED_1_5B_GIB.items()]


#: Share of the card's free memory a pass may plan to use: the model is fitted to one architecture
#: and one attention kernel, and the allocator fragments.
PASS_MARGIN = 0.20


#: Bytes per logit when the loss is not fused: the bf16 logits, their float32 copy for the
#: cross-entropy, and its gradient.
UNFUSED_LOGIT_BYTES = 2 + 4 + 4


def rows_per_pass(
    shape: Shape,
    free_bytes: float,
    seq_len: int,
    rank: int,
    *,
    fused_loss: bool = True,
    margin: float = PASS_MARGIN,
) -> int:
    """Rows of ``seq_len`` tokens one forward and backward pass can hold without recomputation,
    given ``free_bytes`` of the card free once the base weights are loaded: what is left after the
    margin, the LoRA state and the runtime's workspaces, divided by a row's activations (plus its
    vocabulary-wide logits when the loss is not fused, 2 GiB a 2,048-token row at Gemma's 262k
    vocabulary). At least 1 (a single row that does not fit is for the out-of-memory fallback to
    report)."""
    left = free_bytes * (1 - margin) - shape.lora_params(rank) * LORA_STATE_BYTES - RUNTIME_BYTES
    row = per_row_bytes(shape, seq_len, recompute=False)
    if not fused_loss:
        row += seq_len * shape.vocab * UNFUSED_LOGIT_BYTES
    return max(1, int(left // row))


def split_rows(rows: int, most: int) -> int:
    """The largest divisor of ``rows`` (a job's rows per optimizer step on this device) that is at
    most ``most``: a pass size that splits the step into equal passes, so gradient accumulation
    keeps exactly the rows of the step."""
    most = max(1, min(rows, most))
    return max(d for d in range(1, most + 1) if rows % d == 0)
