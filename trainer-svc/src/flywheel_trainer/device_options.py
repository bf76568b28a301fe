"""Trainer options per device: what makes a fine-tune fast on a CUDA GPU and on a CPU.

Used by the recipe (``recipe.py``) and measured by ``bench/bench_sft_gpu.py``.
"""

from __future__ import annotations

import importlib.util
from typing import Any


def liger_available() -> bool:
    """Whether the fused (Liger) linear + cross-entropy can be used: ``liger-kernel`` is installed."""
    return importlib.util.find_spec("liger_kernel") is not None


def cuda_sft_overrides(batch_size: int = 4, max_length: int = 2048, packing: bool = True) -> dict[str, Any]:
    """SFTConfig options the worker uses on a CUDA GPU (also what bench/bench_sft_gpu.py measures).

    * padding-free batches (with ``packing``): the examples of a micro-batch are concatenated into one row with
      per-example position ids, so no FLOP is spent on padding; with ``packing`` (best-fit
      decreasing) the ``batch_size`` rows are also full, and the flattened row is padded to
      ``batch_size * max_length`` tokens so every step has one shape (the compiled flex attention
      kernel, see :func:`cuda_model_kwargs`, is then built once instead of once per length);
    * fused linear + cross-entropy (Liger) when ``liger-kernel`` is installed: the vocabulary-size
      logits are never materialised, which is most of the activation memory of small models;
    * no activation recomputation (TRL turns gradient checkpointing on by default): LoRA keeps
      the activations of a 1-2 B model at 8k-32k tokens per micro-batch inside GPU memory.
    The LoRA layers themselves are sped up separately, after the trainer is built
    (``fused_lora.fuse_lora``).
    """
    overrides: dict[str, Any] = {
        "packing": packing,
        # Padding-free only with packing: TRL 1.13 refuses padding_free without packing while
        # max_length is set (it could not enforce it), and dropping max_length would let a long
        # example through untruncated. Without packing, batches are padded and truncated.
        "padding_free": packing,
        "gradient_checkpointing": False,
        "use_liger_kernel": liger_available(),
        "per_device_train_batch_size": batch_size,
        "bf16": True,
        "tf32": True,
        # The Trainer's `torch.isnan(loss) or torch.isinf(loss)` on every micro-batch makes the
        # host wait for the GPU twice (sync_free.py); NonFiniteSteps guards the gradients instead.
        "logging_nan_inf_filter": False,
        # The next batches are collated by a worker process into pinned memory and copied to the
        # GPU without the host waiting: in-process, accelerate copies a batch synchronously (the
        # host waits for the GPU to finish the step) and then collates the next one while the
        # GPU sits idle (bench/RESULTS.md).
        "dataloader_num_workers": 1,
        "dataloader_persistent_workers": True,
        "dataloader_prefetch_factor": 2,
        "dataloader_pin_memory": True,
        "accelerator_config": {"non_blocking": True},
    }
    if packing:
        overrides["pad_to_multiple_of"] = batch_size * max_length
    return overrides


def cpu_sft_overrides(batch_size: int, gradient_accumulation_steps: int) -> dict[str, Any]:
    """SFTConfig options on a CPU: one row per micro-batch, the same effective batch.

    A CPU has no idle lanes to hide padding in: a micro-batch of 4 chat examples of 300-1,000
    tokens pads every row to the longest and computes the padding too. One row at a time with
    ``batch_size`` times the gradient accumulation gives the same optimizer steps and the same
    loss normalisation (the Trainer divides by the tokens of the whole accumulated batch), and
    ran 2.0x faster on the 2-core demo machine (Gemma 3 270M, the demo's step_sft data: 185 vs
    95 non-padding tokens/s). Activation recomputation (TRL's default) is off: a small model's
    activations fit in memory, and recomputing them costs a third more compute.
    """
    return {
        "per_device_train_batch_size": 1,
        "gradient_accumulation_steps": batch_size * gradient_accumulation_steps,
        "gradient_checkpointing": False,
    }


def cuda_model_kwargs(method: str, packing: bool) -> dict[str, Any]:
    """``from_pretrained`` options on a CUDA GPU: flex attention for packed SFT rows.

    A packed, padding-free row holds many examples; its causal mask is block-diagonal. SDPA gets
    that as a dense mask over the whole flattened row (O(n^2) for 8k-32k tokens); flex attention
    computes only the diagonal blocks (2x the whole step's throughput, README).
    """
    if method == "SFT" and packing:
        return {"attn_implementation": "flex_attention"}
    return {}
