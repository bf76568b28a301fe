"""GPU benchmark of the trainer's SFT against TRL configured by a competent user (same model, data, GPU, run).

    python3 trainer-svc/bench/bench_sft_gpu.py [--steps 30] [--repeats 3] [--variants trl4,ours4,...]
    python3 trainer-svc/bench/bench_sft_gpu.py --smoke   # a CPU check of every variant's code path

Model: a randomly initialised Qwen2-style causal LM with Qwen2-1.5B's shape (1.54 B parameters);
data: words of a 32k-word vocabulary drawn from a Zipf distribution (so a model can learn
something in a few steps and the losses compare), 64 to 2,047 words (= tokens) per example.
LoRA r=16, alpha 32 on every attention and MLP projection in every variant, dropout 0.05 (the
trainer's default) unless the variant ends in ``_p0``. Learning rate 2e-4 (the trainer's SFT
default) in every SFT variant, so the losses at equal steps compare.

* trl4, trl8, trl16, trl32 (the peer that matters): plain ``SFTConfig`` as a competent user tunes
  it: packing (best-fit decreasing), padding-free rows, Liger's fused linear + cross-entropy
  (``use_liger_kernel``), no activation recomputation, flex attention on the model; PEFT's own
  LoRA layers. N rows a step; none of our code. The flattened row is padded to N x 2,048 tokens
  (SFTConfig's ``pad_to_multiple_of``) as ours, so flex attention compiles once; ``trlN_varlen``
  leaves that out (a new length each step).
* baseline: ``SFTConfig`` defaults (padding to the longest in the batch, 8 examples a batch,
  gradient checkpointing on); only ``max_length=2048``, ``bf16``, the learning rate and the step
  count set. Context only: nobody who cares about speed trains like this.
* ours4, ours8, ours16, ours32: exactly the worker's CUDA path for a packed SFT job with that
  ``batch_size``: :func:`flywheel_trainer.device_options.cuda_sft_overrides` (packed,
  padding-free rows padded to ``batch_size x 2048`` tokens, Liger's fused linear + cross-entropy,
  no recomputation), :func:`~flywheel_trainer.device_options.cuda_model_kwargs` (flex attention)
  and :func:`~flywheel_trainer.fused_lora.fuse_lora` (one fused autograd node per LoRA layer),
  with the worker's guard against non-finite gradients (:class:`flywheel_trainer.nonfinite.
  NonFiniteSteps`; from 2026-12-06, seventh session, after that session's GPU runs).
* default: what a GPU SFT job that leaves ``batch_size`` at 0 runs on this card: the rows a step
  of ``TrainerSettings.gpu_step_tokens`` (16 at 2,048 tokens), split into the passes the memory
  model (:func:`flywheel_trainer.memory_plan.rows_per_pass`) says fit the card's free memory.
* ours16_p0: ours16 with LoRA dropout 0 (a job's ``lora.dropout = 0``).
* ours8_syncs (any ``oursN`` + ``_syncs``): TRL's own ``SFTTrainer`` and the Trainer's NaN/inf test
  of every micro-batch's loss instead of :class:`flywheel_trainer.sync_free.SyncFreeSFTTrainer`:
  the host waits for the GPU 14 times a step instead of 9.5 (H100, 8 rows), to measure that
  lever alone.
* ours8_maskdrop (any ``oursN`` + ``_maskdrop``): PyTorch's ``native_dropout`` (the dropped-out
  input and its mask written out and kept) instead of the adapter's dropout drawn inside its
  kernels from a seed (``fused_lora.DROPOUT_IN_KERNELS``, the worker's default since 2026-12-06),
  to measure that lever alone. (``_seeddrop`` is accepted and changes nothing now.)
* ours8_bwd1 / ours8_bwd2 (any ``oursN`` + ``_bwd1`` or ``_bwd2``): the seeded dropout's backward
  as one pass over the input (one kernel for both gradients, each keep decision drawn once) or as
  two kernels (weight gradient, then input gradient, each drawing every decision):
  ``fused_lora.SEEDED_ONE_PASS_BACKWARD`` set either way, whatever the worker's default.
* ours8_philox7 / ours8_philox10 (any ``oursN`` + ``_philox7`` or ``_philox10``): the seeded
  dropout's draws with seven or ten (Triton's default) Philox rounds (``lora_kernels.PHILOX_ROUNDS``).
* ours8_group / ours8_nogroup / ours8_group_noconcat (any ``oursN`` + ``_group``, ``_nogroup`` or
  ``_noconcat``): sibling LoRA layers that read one input (q/k/v, gate/up) as one node each
  (``fused_lora.GROUP_SHARED_INPUT`` on; gate/up in the concat form) or as separate nodes (off, the
  worker's default since the ninth session); ``_noconcat`` keeps the groups in the accumulate
  form only (``fused_lora.CONCAT_MIN_RATIO`` out of reach). The ninth session's H100 runs had
  grouping on by default: its ``ours8`` is today's ``ours8_group`` with the weights widened afresh
  each step, and its ``ours8_nogroup`` today's ``ours8``.
* ours8_logsync (any ``oursN`` + ``_logsync``): the sync-free trainer with its logs read back at
  the logging step and the Trainer's own device-side token count, as before 2026-12-06 (the
  default reads the logs a step late and counts tokens on the host), to measure that lever alone.
* ours8_hostmask (any ``oursN`` + ``_hostmask``): flex attention's block mask built from tile
  tensors the collator computes on the host (:mod:`flywheel_trainer.packed_mask`,
  ``SyncFreeSFTTrainer.host_block_mask``) instead of by transformers on the GPU each forward; not
  the worker's default: measured slower (tenth session, bench/RESULTS.md).
* ours8_packhost (any ``oursN`` + ``_packhost``): transformers' packed-sequence check takes the
  collator's verdict from the host (:func:`flywheel_trainer.sync_free.packed_check_from_host`)
  instead of reading it back from the GPU at the start of every forward; the block mask is still
  transformers' own. Not the worker's default until measured; beside ``_hostmask`` (which removes
  the same wait and builds the mask on the host) it tells which part of that lever costs.
* ours8_lcewait (any ``oursN`` + ``_lcewait``): Liger's fused loss asks the GPU whether the incoming
  gradient is 1 before scaling its stored gradients in the backward (Liger's own code, a wait for
  the GPU), instead of scaling them without asking
  (:func:`flywheel_trainer.sync_free.liger_backward_without_wait`, the worker's default since the
  tenth session), to measure that lever alone. The tenth session's ``ours8_lcescale`` runs are
  today's ``ours8`` and its ``ours8`` runs today's ``ours8_lcewait`` (``_lcescale`` is accepted and
  changes nothing now).
* ours8_dl0 (any ``oursN`` + ``_dl0``): batches collated in the training process and copied to the
  GPU synchronously (the Trainer's defaults) instead of by a worker process into pinned memory
  with a non-blocking copy.
* ours8_nokern: ours8 without the Triton kernel for the dropout branch's input gradient (PyTorch's
  ``addcmul`` instead), to measure that kernel alone.
* ours8_fp8 (any ``oursN`` + ``_fp8``, combinable with ``_p0``): the frozen base weights' matmuls in
  FP8 (:mod:`flywheel_trainer.fp8`, ``fuse_lora(fp8=True)``); Hopper GPUs only.
* peft16: ours16 without ``fuse_lora`` (PEFT's own LoRA layers): the previous configuration.
* ours16_compile: ours16 plus ``torch_compile=True`` (an experiment; not what the worker does).
* qlora: the worker's path (4 rows) with the base weights in 4-bit NF4 (bitsandbytes), a few steps.
* dpo: DPOTrainer with LoRA through ``fuse_lora``, 4 pairs a step, a few steps.
* grpo: the worker's GRPO trainer (:class:`flywheel_trainer.grpo.RolloutGRPOTrainer`, fused LoRA
  layers as the worker on a GPU) on stored
  rollouts: 8 samples a step (4 on a card under 100 GB), prompts and completions of 256-1,023 tokens each, stored behaviour
  log-probs, DAPO loss, no KL term (the defaults of a GRPO job).
* dpo_liger: dpo with TRL's ``use_liger_kernel`` (Liger's fused linear DPO loss, which never holds
  the full logits of the 8 sequences); a lever to measure, not what the worker does yet.
* grpo_full: grpo with TRL's own full-logits log-probs instead of the LM head a slice at a time
  (:mod:`flywheel_trainer.token_logps`), to measure that lever alone.

Step times come from a CUDA event recorded at each step's end (read after training), so the
clock adds no wait of its own; ``FLYWHEEL_BENCH_SYNC_CLOCK=1`` waits for the GPU at every step's
end instead, as the benchmark did before 2026-12-06. ``--profile`` also traces steps 5-6 with
the device's activity alone and writes ``gaps.txt``: the GPU's idle time between kernels, by size
and by the kernels each gap fell between.

Each run of a variant is its own process (clean peak-memory figures); ``--repeats K`` runs every
variant K times, interleaved (variant order within each round), and the summary gives medians and
the spread. Prints one JSON line per run and a summary: tokens/s (non-padding tokens, steps 6 to
the end), MFU (4 FLOPs per parameter per token, the LoRA convention of issue 7, against the GPU's
dense bf16 peak), peak memory, final loss (the last step's) and the mean loss of the last five
steps; then ours against tuned TRL at each row count both have.

``--smoke`` runs every variant on the CPU with a tiny model of the same family, a few steps and
short rows, without flex attention, Liger, bf16 or bitsandbytes (qlora is skipped): it checks that
each variant's code path runs, not its speed.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12}
WORDS = 32000
LEARNING_RATE = 2e-4
MAX_LENGTH = 2048
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
#: Suffixes of an ``oursN``/``trlN`` variant that turn one lever on or off without changing the
#: attention's shape (so ``--warm`` compiles the plain variant's kernels for them).
LEVERS = r"_fp8|_nokern|_p0|_syncs|_seeddrop|_maskdrop|_logsync|_dl0|_hostmask|_bwd1|_bwd2|_philox7|_philox10|_nogroup|_group|_noconcat|_lcescale|_lcewait|_packhost"
#: Variants that run the full step count (the rest run a few steps: their speed is context).
FULL_STEPS = re.compile(
    rf"^(baseline|peft16|default|dpo|dpo_liger|grpo|grpo_full|(ours|trl)\d+(_compile|_varlen|{LEVERS})*)(x\d+)?$"
)
#: Seconds a variant's process may take. The first step compiles flex attention's kernels: on the
#: device tool's H100 machines that took 210-257 s with a cold cache (ptxas on one kernel, most of
#: it) and 6-11 s with a warm one (``--warm`` compiles every row count's kernels once, in parallel).
TIMEOUT_S = {"ours16_compile": 900}
DEFAULT_TIMEOUT_S = 900
SMOKE = os.environ.get("FLYWHEEL_BENCH_SMOKE") == "1"
if SMOKE:
    MAX_LENGTH = 256


def _tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<eos>": 1, "<unk>": 2, "<bos>": 3}
    vocab.update({f"w{i}": i + 4 for i in range(WORDS)})
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>", bos_token="<bos>"
    )


def _device() -> str:
    return "cpu" if SMOKE else "cuda"


def _model(quantized: bool):
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    shape = {
        "hidden_size": 1536,
        "intermediate_size": 8960,
        "num_hidden_layers": 28,
        "num_attention_heads": 12,
    }
    if os.environ.get("FLYWHEEL_BENCH_LAYERS"):  # --warm: the attention's shapes, few layers
        shape["num_hidden_layers"] = int(os.environ["FLYWHEEL_BENCH_LAYERS"])
    if SMOKE:
        shape = {
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
        }
    config = Qwen2Config(
        vocab_size=151936 if not SMOKE else WORDS + 4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        tie_word_embeddings=True,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=3,
        **shape,
    )
    torch.manual_seed(0)
    with torch.device(_device()):
        model = Qwen2ForCausalLM(config).to(torch.float32 if SMOKE else torch.bfloat16)
    if quantized:
        # bitsandbytes quantizes on load, so round-trip the random weights through a folder.
        from transformers import BitsAndBytesConfig

        folder = Path("/tmp/bench-random-qwen2")
        if not folder.exists():
            model.save_pretrained(folder)
        del model
        torch.cuda.empty_cache()
        quant = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16,
        )
        model = Qwen2ForCausalLM.from_pretrained(folder, quantization_config=quant, device_map={"": 0})
    return model


def _words(n: int, seed: int, low: int = 64, high: int = MAX_LENGTH - 1) -> list[list[int]]:
    """``n`` examples of Zipf-distributed word indices, ``low`` to ``high`` words each."""
    import itertools
    import random

    rng = random.Random(seed)
    cum = list(itertools.accumulate(1.0 / (rank + 1) ** 1.1 for rank in range(WORDS)))
    return [rng.choices(range(WORDS), cum_weights=cum, k=rng.randint(low, high)) for _ in range(n)]


def _texts(n: int, seed: int) -> list[str]:
    return [" ".join(f"w{i}" for i in example) for example in _words(n, seed, high=MAX_LENGTH - 1)]


def _rows(variant: str) -> int:
    """Rows a step of an ``oursN`` / ``trlN`` variant."""
    found = re.match(r"^(?:ours|trl|peft)(\d+)", variant)
    return int(found.group(1)) if found else 4


def _sft_overrides(variant: str, model, world: int = 1) -> dict:
    """SFTConfig options of an SFT variant (and the model's attention set to match)."""
    from flywheel_trainer.device_options import cuda_model_kwargs, cuda_sft_overrides, liger_available

    if variant == "baseline":
        return {}
    if variant.startswith("trl"):
        # Tuned plain TRL: every speed option SFTConfig has, none of ours.
        overrides = {
            "packing": True,
            "padding_free": True,
            "use_liger_kernel": liger_available(),
            "gradient_checkpointing": False,
            "per_device_train_batch_size": _rows(variant),
            "bf16": True,
        }
        if "_varlen" not in variant:
            # SFTConfig's own option: one flattened length every step, so the compiled flex
            # attention is built once. Without it (trlN_varlen) each new length recompiles.
            overrides["pad_to_multiple_of"] = _rows(variant) * MAX_LENGTH
        attn = "flex_attention"
    elif variant == "default":
        from flywheel_trainer.memory_plan import (
            DEFAULT_GPU_STEP_TOKENS,
            Shape,
            rows_per_pass,
            split_rows,
            token_sized_rows,
        )

        # As hparams.default_rows, then as the recipe: each of the world's ranks takes its share.
        step = token_sized_rows(DEFAULT_GPU_STEP_TOKENS, MAX_LENGTH, world)
        free = _free_bytes()
        fit = rows_per_pass(Shape.of(model.config), free, MAX_LENGTH, 16, fused_loss=liger_available())
        per_pass = split_rows(step // world, fit)
        overrides = cuda_sft_overrides(batch_size=per_pass, max_length=MAX_LENGTH, packing=True)
        overrides["gradient_accumulation_steps"] = step // world // per_pass
        attn = cuda_model_kwargs("SFT", packing=True).get("attn_implementation")
    else:
        overrides = cuda_sft_overrides(batch_size=_rows(variant), max_length=MAX_LENGTH, packing=True)
        attn = cuda_model_kwargs("SFT", packing=True).get("attn_implementation")
        if "_compile" in variant:
            overrides["torch_compile"] = True
        if "_syncs" in variant:  # the Trainer's per-micro-batch NaN/inf test of the loss, as before
            overrides["logging_nan_inf_filter"] = True
        if "_dl0" in variant:  # batches collated in the training process and copied synchronously
            for key in (
                "dataloader_num_workers",
                "dataloader_persistent_workers",
                "dataloader_prefetch_factor",
            ):
                overrides.pop(key, None)
            overrides["accelerator_config"] = {"non_blocking": False}
    if SMOKE:  # no flex attention, Liger, bf16 or TF32 on a CPU: the code path, not the speed
        attn = "sdpa"
        overrides.update(use_liger_kernel=False, bf16=False, use_cpu=True)
        overrides.pop("tf32", None)
    if attn:
        model.set_attn_implementation(attn)
    return overrides


def _free_bytes() -> float:
    import torch

    if SMOKE:
        return 8 * 2**30
    torch.cuda.synchronize()
    return float(torch.cuda.mem_get_info()[0])


def _grpo_rows() -> int:
    """Samples a GRPO step: 8, or 4 on a card under 100 GB (8 ran out of an H100's 80 GB).

    ``FLYWHEEL_BENCH_GRPO_ROWS`` sets it.
    """
    import torch

    if os.environ.get("FLYWHEEL_BENCH_GRPO_ROWS"):
        return int(os.environ["FLYWHEEL_BENCH_GRPO_ROWS"])
    if SMOKE or torch.cuda.get_device_properties(0).total_memory >= 100 * 2**30:
        return 8
    return 4


def _grpo_trainer(model, tok, lora, common: dict, steps: int, world: int = 1, sliced: bool = True):
    """The worker's GRPO trainer on synthetic stored rollouts, configured as the recipe does."""
    import math

    from datasets import Dataset
    from trl import GRPOConfig

    from flywheel_trainer.grpo import RolloutGRPOTrainer, prepare_rows, reward_stats

    rows_a_step = _grpo_rows()
    high = min(1023, MAX_LENGTH // 2 - 1)
    prompts = _words(steps * rows_a_step, seed=2, low=min(256, high // 2), high=high)
    completions = _words(steps * rows_a_step, seed=3, low=min(256, high // 2), high=high)
    uniform = -math.log(model.config.vocab_size)  # about what a random model gives a token
    raw = [
        {
            "prompt_token_ids": [i + 4 for i in p],
            "completion_token_ids": [i + 4 for i in c],
            "behaviour_logprobs": [uniform] * len(c),
            "advantage": 1.0 if n % 2 else -1.0,
            "reward": float(n % 2),
        }
        for n, (p, c) in enumerate(zip(prompts, completions, strict=True))
    ]
    rollouts = prepare_rows(raw, MAX_LENGTH, model.config.vocab_size)
    common = {k: v for k, v in common.items() if k != "max_length"}
    args = GRPOConfig(
        **common,
        learning_rate=1e-5,
        per_device_train_batch_size=rows_a_step,
        gradient_checkpointing=False,
        num_generations=rows_a_step * world,
        generation_batch_size=rows_a_step * world,  # TRL's is global: every rank's rows
        max_completion_length=max(len(r["completion_token_ids"]) for r in rollouts),
        temperature=1.0,
        beta=0.0,
        loss_type="dapo",
        remove_unused_columns=False,
    )
    return RolloutGRPOTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(rollouts),
        processing_class=tok,
        peft_config=lora,
        rewards=reward_stats(rollouts),
        sliced_logps=sliced,
    )


def split_world(name: str) -> tuple[str, int]:
    """``ours8x2`` → ("ours8", 2): the variant and its data-parallel processes (GPUs). The ``x10``
    that ends ``_philox10`` is the lever's, not a process count."""
    found = re.match(r"^(.+?)(?<!_philo)x(\d+)$", name)
    return (found.group(1), int(found.group(2))) if found else (name, 1)


def _dump_stacks_while_running(name: str) -> None:
    """With ``--stacks SECONDS``: every SECONDS, this process's Python stacks go to DIR/stacks-NAME.txt.

    The first step of a variant took minutes on some GPU machines; the stacks show which code
    (compilation, a Triton build, a host loop) those minutes went to.
    """
    import faulthandler

    spec = os.environ.get("FLYWHEEL_BENCH_STACKS")
    if not spec:
        return
    seconds, folder = spec.split(":", 1)
    Path(folder).mkdir(parents=True, exist_ok=True)
    rank = os.environ.get("RANK", "0")
    out = open(
        Path(folder) / f"stacks-{name}-r{rank}-{os.getpid()}.txt", "w"
    )  # kept open: faulthandler writes to it
    faulthandler.dump_traceback_later(float(seconds), repeat=True, file=out)


def run_variant(name: str, steps: int) -> dict:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import TrainerCallback

    from flywheel_trainer.fused_lora import fuse_lora

    started = time.perf_counter()
    _dump_stacks_while_running(name)
    cache_in = os.environ.get("FLYWHEEL_BENCH_CACHE_IN")
    if cache_in and Path(cache_in).is_file():
        # A portable compile cache from another machine (torch.compiler's "mega-cache"):
        # the trainer's compile_cache module does this for jobs; here it is measured.
        torch.compiler.load_cache_artifacts(Path(cache_in).read_bytes())
    variant, _ = split_world(name)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    cuda = not SMOKE
    if world > 1:
        # Started by torch.distributed.run (_run_once): one process per GPU, DDP through the
        # Trainer, as the worker's data-parallel jobs (gloo on a CPU for --smoke).
        from accelerate import PartialState

        if cuda:
            torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
        PartialState(cpu=not cuda)
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
    lora = LoraConfig(
        r=16,
        lora_alpha=32,
        lora_dropout=0.0 if "_p0" in variant else 0.05,
        target_modules=TARGETS,
        task_type="CAUSAL_LM",
    )
    tok = _tokenizer()
    model = _model(quantized=variant == "qlora")
    if variant == "qlora":
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    n_params = sum(p.numel() for p in model.parameters())
    if variant == "qlora":
        n_params = 1_543_714_304  # 4-bit packing halves numel(); count the real model
    timing: dict = {"t": [], "tokens": []}

    sync_clock = bool(os.environ.get("FLYWHEEL_BENCH_SYNC_CLOCK"))
    timing["events"] = []

    class Clock(TrainerCallback):
        """Each step's end: a CUDA event on the GPU's stream (read after training), so timing adds no
        wait of its own; FLYWHEEL_BENCH_SYNC_CLOCK=1 waits for the GPU at every step end instead,
        as the benchmark did up to 2026-12-06."""

        def on_step_end(self, args, state, control, **kw):
            if cuda and sync_clock:
                torch.cuda.synchronize()
            elif cuda:
                event = torch.cuda.Event(enable_timing=True)
                event.record()
                timing["events"].append(event)
            timing["t"].append(time.perf_counter())
            timing["tokens"].append(state.num_input_tokens_seen)

    common = {
        "output_dir": f"/tmp/bench-{name}",
        "max_steps": steps,
        "report_to": [],
        "bf16": cuda,
        "logging_steps": 1,
        "save_strategy": "no",
        "include_num_input_tokens_seen": "non_padding",
        "max_length": MAX_LENGTH,
        "disable_tqdm": True,
    }
    if SMOKE:
        common["use_cpu"] = True
    fused = 0
    rows_a_step = 0
    if variant in ("dpo", "dpo_liger"):
        from trl import DPOConfig, DPOTrainer

        texts = _texts(3 * steps * 8 * world, seed=1)
        rows = [
            {"prompt": texts[i][:3000], "chosen": texts[i + 1][:3000], "rejected": texts[i + 2][:3000]}
            for i in range(0, len(texts) - 2, 3)
        ]
        # dpo_liger: TRL's own switch to Liger's fused linear DPO loss (no full logits); GPU only.
        liger = {"use_liger_kernel": True} if variant == "dpo_liger" else {}
        args = DPOConfig(**common, per_device_train_batch_size=4, gradient_checkpointing=False, **liger)
        trainer = DPOTrainer(
            model=model,
            args=args,
            train_dataset=Dataset.from_list(rows),
            processing_class=tok,
            peft_config=lora,
        )
        fused = fuse_lora(trainer.model)
        rows_a_step = 4
    elif variant in ("grpo", "grpo_full"):
        trainer = _grpo_trainer(model, tok, lora, common, steps * world, world, sliced=variant == "grpo")
        fused = fuse_lora(trainer.model)  # as the worker does for every method on a GPU
        args = trainer.args
        rows_a_step = args.per_device_train_batch_size * args.gradient_accumulation_steps
    else:
        from trl import SFTConfig, SFTTrainer

        overrides = _sft_overrides(variant, model, world)
        batch = overrides.get("per_device_train_batch_size", 8)
        rows_a_step = batch * overrides.get("gradient_accumulation_steps", 1)
        data = Dataset.from_list([{"text": t} for t in _texts(steps * rows_a_step * world * 4, seed=1)])
        args = SFTConfig(**{**common, "learning_rate": LEARNING_RATE, **overrides})
        trainer_cls = SFTTrainer
        if (variant.startswith("ours") or variant == "default") and "_syncs" not in variant:
            from flywheel_trainer.sync_free import SyncFreeSFTTrainer

            # _logsync: the logged numbers and the token count read back at once, as before.
            logsync = "_logsync" in variant
            trainer_cls = type(
                "BenchSFTTrainer",
                (SyncFreeSFTTrainer,),
                {
                    "defer_logs": False if logsync else None,
                    "count_on_host": not logsync,
                    "host_block_mask": "_hostmask" in variant,
                    "liger_scale_always": "_lcewait" not in variant,
                    "packed_check_from_host": "_packhost" in variant,
                },
            )
        trainer = trainer_cls(
            model=model, args=args, train_dataset=data, processing_class=tok, peft_config=lora
        )
        if variant.startswith("ours") or variant == "default":
            from flywheel_trainer import fused_lora

            fused_lora.DROPOUT_GRAD_KERNEL = "_nokern" not in variant
            fused_lora.DROPOUT_IN_KERNELS = "_maskdrop" not in variant and "_nokern" not in variant
            if "_group" in variant or "_nogroup" in variant:
                fused_lora.GROUP_SHARED_INPUT = "_group" in variant
            if "_noconcat" in variant:
                fused_lora.CONCAT_MIN_RATIO = float("inf")
            for flag, one_pass in (("_bwd1", True), ("_bwd2", False)):
                if flag in variant:
                    fused_lora.SEEDED_ONE_PASS_BACKWARD = one_pass
            rounds = re.search(r"_philox(\d+)", variant)
            if rounds and not SMOKE:
                from flywheel_trainer import lora_kernels  # Triton: CUDA only

                lora_kernels.PHILOX_ROUNDS = int(rounds.group(1))
            fused = fuse_lora(trainer.model, fp8="_fp8" in variant)
    if fused:
        # The worker's guard against non-finite gradients (its Reporter callback does the same):
        # on a GPU with fused AdamW it skips on the device and reads its verdict a step late.
        from flywheel_trainer.nonfinite import NonFiniteSteps

        guard = NonFiniteSteps()

        class Guard(TrainerCallback):
            def on_pre_optimizer_step(self, args, state, control, **kw):
                guard.check(kw["model"], state.global_step + 1, kw.get("optimizer"))

        trainer.add_callback(Guard())
    if os.environ.get("FLYWHEEL_BENCH_PROFILE"):
        # Before the clock: its step-end work (a trace written after step 6) then lands before
        # the clock reads the time, outside the timed steps.
        trainer.add_callback(_profiler_callback(Path(os.environ["FLYWHEEL_BENCH_PROFILE"]) / name, steps))
    trainer.add_callback(Clock())
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    setup_s = time.perf_counter() - started
    result = trainer.train()
    cache_out = os.environ.get("FLYWHEEL_BENCH_CACHE_OUT")
    if cache_out and os.environ.get("RANK", "0") == "0":
        saved = torch.compiler.save_cache_artifacts()
        if saved is not None:
            Path(cache_out).write_bytes(saved[0])
    if timing["events"]:
        # The times the GPU finished each step, on the host clock of the first one.
        torch.cuda.synchronize()
        first = timing["events"][0]
        timing["t"] = [timing["t"][0] + first.elapsed_time(e) / 1e3 for e in timing["events"]]
    warm = max(0, min(5, len(timing["t"]) - 2))
    seconds = timing["t"][-1] - timing["t"][warm]
    tokens = timing["tokens"][-1] - timing["tokens"][warm]
    tps = tokens / seconds
    gpu = torch.cuda.get_device_name(0) if cuda else "cpu (smoke)"
    peak = next((v for k, v in PEAK_BF16.items() if k in gpu), 989e12) * world
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return {
        "variant": name,
        "gpus": world,
        "gpu": gpu,
        "torch": torch.__version__,
        "parameters": n_params,
        "steps": steps,
        "batch_rows": args.per_device_train_batch_size,
        "rows_a_step": rows_a_step * world,
        "attention": getattr(model.config, "_attn_implementation", None),
        "lora_dropout": lora.lora_dropout,
        "fused_lora_layers": fused,
        # sibling groups run as one node: (groups, of them in the concat form, their group computations)
        "shared_input_groups": _group_counts(trainer.model) if fused else None,
        "tokens_per_step": round(tokens / max(1, len(timing["t"]) - 1 - warm)),
        "tokens_per_s": round(tps),
        "mfu": round(4 * n_params * tps / peak, 4),
        "peak_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None,
        "final_loss": losses[-1] if losses else None,
        "last5_loss": round(sum(losses[-5:]) / len(losses[-5:]), 4) if losses else None,
        "train_loss": result.training_loss,
        "setup_s": round(setup_s, 1),
        "first_step_s": round(timing["t"][0] - started - setup_s, 1) if timing["t"] else None,
        "early_steps_s": [round(b - a, 2) for a, b in zip(timing["t"][:6], timing["t"][1:7], strict=False)],
        # every step after the first, on the GPU's clock: where a run's speed changes during it
        # (the tenth session's _hostmask runs: their first steps as fast as ours8's, the later not)
        "steps_s": [round(b - a, 3) for a, b in zip(timing["t"], timing["t"][1:], strict=False)],
        "process_s": round(time.perf_counter() - started, 1),
        "compile_s": _compile_seconds(),
        "compile_threads": _compile_threads(),
    }


def _compile_threads() -> int | None:
    """The worker processes Inductor compiles kernels with (1 means one at a time)."""
    try:
        from torch._inductor import config

        return int(config.compile_threads)
    except Exception:  # a private setting: its absence must not lose the variant's figures
        return None


def _compile_seconds() -> float | None:
    """Seconds this process spent in torch.compile (flex attention's kernels, the block masks), if torch says."""
    try:
        from torch._dynamo.utils import calculate_time_spent

        return round(float(calculate_time_spent().get("total_wall_time", 0.0)), 1)
    except Exception:  # a private API: its absence must not lose the variant's figures
        return None


def _profiler_callback(folder: Path, steps: int):
    """A callback that profiles steps 3 and 4 and writes where the GPU time went.

    They are before the timed steps (6 to the end), so the profiler and its report (which takes
    seconds) do not count in the variant's tokens/s.

    ``--profile DIR`` turns it on: ``DIR/<variant>/kernels.txt`` holds the kernels by total CUDA
    time, ``host.txt`` the host-side operations by self CPU time, and ``categories.json`` the
    kernels' sums by kind (matmul, attention, Liger/Triton, dropout, other elementwise) with the
    step's wall time and the GPU's busy fraction: the figures a speed lever is chosen by.
    ``syncs.txt`` lists every place the host waited for the GPU in those steps (torch's sync
    debug mode), with the Python stack that asked, most frequent first: each wait lets the GPU
    run dry until the host has queued work again.
    """
    import traceback
    import warnings
    from collections import Counter

    import torch
    from transformers import TrainerCallback

    first = 2  # profile steps 3 and 4: the first steps compile flex attention and Liger's kernels

    class Profile(TrainerCallback):
        prof = None

        light = None

        def on_step_begin(self, args, state, control, **kw):
            if state.global_step == first + 2 and self.light is None and torch.cuda.is_available():
                # Steps 5 and 6 again with the device's activity alone: recording every host
                # operation (steps 3-4) slows the host, and so inflates the GPU's idle time.
                torch.cuda.synchronize()
                self.light = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA])
                self.light.__enter__()
                self.light_wall = time.perf_counter()
            if state.global_step == first and self.prof is None:
                cuda = torch.cuda.is_available()
                activities = [torch.profiler.ProfilerActivity.CPU]
                if cuda:
                    activities.append(torch.profiler.ProfilerActivity.CUDA)
                    torch.cuda.synchronize()
                self.prof = torch.profiler.profile(activities=activities)
                self.prof.__enter__()
                self.syncs: Counter = Counter()
                self._warnings = None
                if cuda:
                    try:
                        self._watch_syncs()
                    except Exception as err:  # a diagnostic: its failure must not lose the figures
                        print(f"sync trace off: {err!r}", flush=True)
                self.wall = time.perf_counter()

        def _watch_syncs(self):
            def record(message, category, filename, lineno, file=None, line=None):
                stack = "".join(traceback.format_stack(limit=12)[:-2])
                self.syncs[f"{str(message).splitlines()[0][:100]}\n{stack}"] += 1

            self._warnings = warnings.catch_warnings()
            self._warnings.__enter__()
            warnings.simplefilter("always")
            warnings.showwarning = record
            torch.cuda.set_sync_debug_mode("warn")

        def _write_gaps(self):
            torch.cuda.synchronize()
            wall_us = (time.perf_counter() - self.light_wall) * 1e6
            self.light.__exit__(None, None, None)
            try:
                folder.mkdir(parents=True, exist_ok=True)
                figures, lines = gpu_gaps(_trace_kernels(self.light, folder), wall_us)
            except Exception as err:  # a diagnostic: its failure must not lose the figures
                print(f"gap trace off: {err!r}", flush=True)
                return
            finally:
                self.light = False  # done: not again
            figures["steps"] = [first + 3, first + 4]
            (folder / "gaps.txt").write_text(
                f"GPU idle between kernels, steps {first + 3}-{first + 4} (device activity alone):\n"
                + json.dumps(figures, indent=1)
                + "\n\nlargest totals, by the kernels each gap fell between:\n"
                + "\n".join(lines)
                + "\n"
            )
            print(f"GAPS {json.dumps(figures)}", flush=True)

        def _write_syncs(self, folder):
            if self._warnings is None:
                return None
            torch.cuda.set_sync_debug_mode("default")
            self._warnings.__exit__(None, None, None)
            waits = sum(self.syncs.values()) / 2
            text = [f"{waits:g} waits of the host for the GPU a step (steps {first + 1}-{first + 2})\n"]
            text += [f"--- {n / 2:g} a step: {where}" for where, n in self.syncs.most_common()]
            (folder / "syncs.txt").write_text("\n".join(text))
            return waits

        def on_step_end(self, args, state, control, **kw):
            if self.light and state.global_step == first + 4:
                self._write_gaps()
            if self.prof is None or state.global_step < first + 2:
                return
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            wall_us = (time.perf_counter() - self.wall) * 1e6
            self.prof.__exit__(None, None, None)
            folder.mkdir(parents=True, exist_ok=True)
            waits = self._write_syncs(folder)
            events = self.prof.key_averages()
            attr = "device_time_total" if hasattr(events[0], "device_time_total") else "cuda_time_total"
            kernels = [e for e in events if getattr(e, attr, 0) > 0 and e.device_type.name == "CUDA"]
            kernels.sort(key=lambda e: -getattr(e, attr))
            total = sum(getattr(e, attr) for e in kernels) or 1.0
            cats: dict[str, float] = {}
            lines = []
            for e in kernels:
                us = getattr(e, attr)
                cats[_kernel_kind(e.key)] = cats.get(_kernel_kind(e.key), 0.0) + us
                lines.append(f"{us / 2e3:9.2f} ms/step {us / total:6.1%} {e.count // 2:6d}x  {e.key[:150]}")
            (folder / "kernels.txt").write_text("\n".join(lines[:80]) + "\n")
            # The host side: where the Python process spends the steps (what the GPU waits for
            # when it is idle), by self CPU time.
            host = sorted(
                (e for e in events if e.device_type.name == "CPU"), key=lambda e: -e.self_cpu_time_total
            )
            (folder / "host.txt").write_text(
                "\n".join(
                    f"{e.self_cpu_time_total / 2e3:9.2f} ms/step self {e.cpu_time_total / 2e3:9.2f} total "
                    f"{e.count // 2:6d}x  {e.key[:120]}"
                    for e in host[:60]
                )
                + "\n"
            )
            summary: dict = {
                k: {"ms_per_step": round(v / 2e3, 2), "share": round(v / total, 4)} for k, v in cats.items()
            }
            # GPU time against wall time over the two steps (profiler overhead included): below 1,
            # the GPU waited for the host.
            summary["wall_ms_per_step"] = round(wall_us / 2e3, 2)
            summary["gpu_busy"] = round(total / wall_us, 3)
            summary["host_waits_per_step"] = waits
            (folder / "categories.json").write_text(json.dumps(summary, indent=1))
            print(f"PROFILE {json.dumps(summary)}", flush=True)
            self.prof = None

    return Profile()


def gpu_gaps(
    kernels: list[tuple[str, float, float]], wall_us: float, top: int = 25
) -> tuple[dict, list[str]]:
    """Where the GPU sat idle: the gaps between its kernels, and which kernels they fell between.

    ``kernels`` are (name, start µs, duration µs) from a trace; kernels on several streams may
    overlap, so busy time is the union of their intervals. A gap is a stretch with no kernel
    running; it is named by the kernel that ended before it and the one that started after it,
    which places it in the step (a gap before the first embedding kernel is the host's work between
    steps; gaps between LoRA kernels in the backward mean the host could not launch fast enough).
    Returns the figures (busy time against ``wall_us``, gap totals by size) and the report's lines,
    largest total first.
    """
    spans = sorted((start, start + dur, name) for name, start, dur in kernels if dur >= 0)
    busy = 0.0
    gaps: list[tuple[float, str, str]] = []
    at: list[float] = []  # where each gap began, µs from the first kernel's start
    if spans:
        cur_start, cur_end, cur_name = spans[0]
        origin = cur_start
        for start, end, name in spans[1:]:
            if start > cur_end:
                busy += cur_end - cur_start
                gaps.append((start - cur_end, cur_name, name))
                at.append(cur_end - origin)
                cur_start, cur_end, cur_name = start, end, name
            elif end > cur_end:
                cur_end, cur_name = end, name
        busy += cur_end - cur_start
    bins = [
        (5.0, "<5us"),
        (20.0, "5-20us"),
        (100.0, "20-100us"),
        (1000.0, "100us-1ms"),
        (float("inf"), ">1ms"),
    ]
    by_size = {label: {"count": 0, "us": 0.0} for _, label in bins}
    pairs: dict[tuple[str, str], list[float]] = {}
    for us, before, after in gaps:
        label = next(lab for limit, lab in bins if us < limit)
        by_size[label]["count"] += 1
        by_size[label]["us"] += us
        pairs.setdefault((_short(before), _short(after)), []).append(us)
    figures = {
        "wall_us": round(wall_us, 1),
        "busy_us": round(busy, 1),
        "gpu_busy": round(busy / wall_us, 4) if wall_us > 0 else None,
        "idle_between_kernels_us": round(sum(g for g, _, _ in gaps), 1),
        "gaps_by_size": {k: {"count": v["count"], "us": round(v["us"], 1)} for k, v in by_size.items()},
    }
    lines = [
        f"{sum(v) / 1e3:9.3f} ms {len(v):6d}x  max {max(v):8.1f} us  {before}  ->  {after}"
        for (before, after), v in sorted(pairs.items(), key=lambda kv: -sum(kv[1]))[:top]
    ]
    # The largest single gaps in the order they happened: where in the steps the GPU waited.
    largest = sorted(sorted(range(len(gaps)), key=lambda i: -gaps[i][0])[:top])
    if largest:
        lines += ["", "largest single gaps, in time order (ms from the first kernel):"]
        lines += [
            f"{at[i] / 1e3:9.2f} ms  {gaps[i][0]:8.1f} us  {_short(gaps[i][1])}  ->  {_short(gaps[i][2])}"
            for i in largest
        ]
    return figures, lines


def _short(name: str) -> str:
    """A kernel's name without its template arguments, short enough for a report line."""
    name = name.replace("void ", "")
    for mark in ("<", "("):
        if mark in name:
            name = name[: name.index(mark)]
    return name[:70]


def _trace_kernels(prof, scratch: Path) -> list[tuple[str, float, float]]:
    """The device's kernels, copies and sets in a profiler run, from its Chrome trace."""
    path = scratch / "light-trace.json"
    prof.export_chrome_trace(str(path))
    try:
        events = json.loads(path.read_text()).get("traceEvents", [])
    finally:
        path.unlink(missing_ok=True)
    kinds = ("kernel", "gpu_memcpy", "gpu_memset")
    return [
        (str(e.get("name", "")), float(e["ts"]), float(e.get("dur", 0.0)))
        for e in events
        if e.get("ph") == "X" and str(e.get("cat", "")).lower() in kinds
    ]


def _kernel_kind(name: str) -> str:
    low = name.lower()
    if any(k in low for k in ("gemm", "cutlass", "sm90_xmma", "nvjet", "cublas", "matmul", "_mm_")):
        return "matmul"
    if "flex" in low or "attention" in low or "flash" in low:
        return "attention"
    if "dropout" in low or "bernoulli" in low:
        return "dropout"
    if "nccl" in low:
        return "communication"
    if "at::native" in low or "elementwise" in low or "memset" in low or "memcpy" in low:
        return "PyTorch elementwise / reduce / copy"
    if "triton" in low or "liger" in low or "_kernel" in low:
        return "triton (Liger, flex backward, ours)"
    return "other"


def _run_once(variant: str, steps: int) -> dict | None:
    _, world = split_world(variant)
    launcher = [sys.executable]
    if world > 1:
        launcher += ["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={world}"]
    try:
        proc = subprocess.run(
            [*launcher, __file__, "--variant", variant, "--steps", str(steps)],
            capture_output=True,
            text=True,
            env=os.environ,
            timeout=TIMEOUT_S.get(variant, DEFAULT_TIMEOUT_S),
        )
    except subprocess.TimeoutExpired as err:
        tail = (err.stderr or b"")[-2000:]
        print(f"{variant}: TIMED OUT after {err.timeout} s\n{tail!r}", flush=True)
        return None
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode or not lines:
        if "OutOfMemoryError" in proc.stderr:  # a fact about the card, not a crash to read through
            print(f"{variant}: OUT OF MEMORY on this GPU ({proc.stderr.strip().splitlines()[-1][:300]})")
            return None
        print(f"{variant}: FAILED (exit {proc.returncode})\n{proc.stderr[-3000:]}", flush=True)
        return None
    return json.loads(lines[-1][len("RESULT ") :])


def warm_compile_caches(variants: list[str]) -> None:
    """Compile flex attention once for each row count the variants use, all at once.

    On the device tool's H100 machines one flex attention compilation took 210 s, nearly all
    of it ``ptxas`` building one kernel on one core (``--stacks``, 2026-12-06); a warm on-disk
    cache brought a variant's first step from 219 s to 11 s. The kernels depend on the attention
    (heads, head size, tokens a pass), not on the depth, so a 2-layer model builds the same ones;
    one process per row count, in parallel, makes the cold compilations overlap. The timed
    variants then start from the warm cache (ours and tuned TRL share it: both pad a pass to
    rows x 2,048 tokens).
    """
    shapes: dict[int, str] = {}
    for name in variants:
        variant, world = split_world(name)
        if world == 1 and re.match(r"^(ours|trl)\d+", variant) and "_varlen" not in variant:
            shapes.setdefault(
                _rows(variant),
                re.sub(LEVERS, "", variant),
            )
    if not shapes:
        return
    started = time.perf_counter()
    env = {**os.environ, "FLYWHEEL_BENCH_LAYERS": "2"}
    env.pop("FLYWHEEL_BENCH_PROFILE", None)
    # Each process's stderr goes to a file: pipes read one after the other could fill and stall
    # the processes not yet read.
    logs = [tempfile.TemporaryFile("w+") for _ in shapes]
    procs = [
        subprocess.Popen(
            [sys.executable, __file__, "--variant", v, "--steps", "3"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=log,
            text=True,
        )
        for v, log in zip(shapes.values(), logs, strict=True)
    ]
    for v, proc, log in zip(shapes.values(), procs, logs, strict=True):
        with log:
            if proc.wait(timeout=DEFAULT_TIMEOUT_S):
                log.seek(0)
                print(f"warm-up {v}: exit {proc.returncode}\n{log.read()[-2000:]}", flush=True)
    took = time.perf_counter() - started
    print(f"warm-up: compiled {sorted(shapes)} rows a pass in {took:.0f} s", flush=True)


def summarise(runs: dict[str, list[dict]]) -> list[str]:
    """Markdown tables: each variant's median over its runs, then ours against tuned TRL."""
    med = {name: statistics.median(r["tokens_per_s"] for r in rs) for name, rs in runs.items() if rs}
    out = [
        "| variant | rows a step | rows a pass | runs | tokens/s (median) | min-max | MFU (median) | peak GiB | last-5 loss |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, rs in runs.items():
        if not rs:
            out.append(f"| {name} | | | 0 | failed | | | | |")
            continue
        speeds = [r["tokens_per_s"] for r in rs]
        mfu = statistics.median(r["mfu"] for r in rs)
        peak = max((r["peak_memory_gib"] or 0) for r in rs)
        loss = statistics.median(r["last5_loss"] or 0 for r in rs)
        out.append(
            f"| {name} | {rs[0].get('rows_a_step', '')} | {rs[0]['batch_rows']} | {len(rs)} | {med[name]:,.0f} | "
            f"{min(speeds):,}-{max(speeds):,} | {mfu:.1%} | {peak} | {loss:.4f} |"
        )
    pairs = [(f"ours{n}", f"trl{n}") for n in (4, 8, 16, 32) if f"ours{n}" in med and f"trl{n}" in med]
    if "default" in med and "trl16" in med:
        pairs.append(("default", "trl16"))
    if pairs:
        out += ["", "| ours | tuned TRL + flex | ratio of medians |", "|---|---|---:|"]
        out += [f"| {a} | {b} | {med[a] / med[b]:.2f}x |" for a, b in pairs]
    best_trl = max((n for n in med if n.startswith("trl")), key=lambda n: med[n], default=None)
    best_ours = max(
        (n for n in med if n.startswith("ours") or n == "default"), key=lambda n: med[n], default=None
    )
    if best_trl and best_ours:
        out.append(f"| best: {best_ours} | best: {best_trl} | {med[best_ours] / med[best_trl]:.2f}x |")
    scaled = [(n, split_world(n)) for n in med if split_world(n)[1] > 1 and split_world(n)[0] in med]
    if scaled:
        out += [
            "",
            "| data parallel | GPUs | one GPU | speed-up (medians) | efficiency |",
            "|---|---:|---|---:|---:|",
        ]
        out += [
            f"| {n} | {w} | {one} | {med[n] / med[one]:.2f}x | {med[n] / med[one] / w:.0%} |"
            for n, (one, w) in scaled
        ]
    if "baseline" in med:
        out += [
            "",
            "Context: against SFTConfig defaults (baseline) "
            + ", ".join(f"{n} {v / med['baseline']:.2f}x" for n, v in med.items() if n != "baseline"),
        ]
    return out


def _group_counts(model: object) -> list[int]:
    """``[groups, concat-form groups, group computations so far]`` of fused_lora's sibling groups."""
    groups = {id(g): g for m in model.modules() if (g := vars(m).get("_flywheel_group")) is not None}
    return [len(groups), sum(g.concat for g in groups.values()), sum(g.calls for g in groups.values())]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=1, help="runs of each variant (medians reported)")
    parser.add_argument(
        "--variants", default="trl4,ours4,trl8,ours8,trl16,ours16,default,baseline,dpo,grpo,qlora"
    )
    parser.add_argument("--smoke", action="store_true", help="a CPU check of each variant's code path")
    parser.add_argument("--json-out", help="also write every run's result to this JSON file")
    parser.add_argument(
        "--profile", help="profile two steps of each variant; kernel tables go under this folder"
    )
    parser.add_argument(
        "--stacks",
        help="SECONDS:DIR: dump each variant process's Python stacks every SECONDS into DIR (slow first steps)",
    )
    parser.add_argument(
        "--warm",
        action="store_true",
        help="first compile each row count's flex attention once, in parallel, with a 2-layer model",
    )
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:
        result = run_variant(args.variant, args.steps)
        if os.environ.get("RANK", "0") == "0":
            print("RESULT " + json.dumps(result), flush=True)
        return 0
    if args.smoke:
        os.environ["FLYWHEEL_BENCH_SMOKE"] = "1"  # for the variant processes
    if args.stacks:
        seconds, _, folder = args.stacks.partition(":")
        if not folder or float(seconds) <= 0:
            parser.error("--stacks takes SECONDS:DIR, e.g. 30:/tmp/stacks")
        os.environ["FLYWHEEL_BENCH_STACKS"] = f"{float(seconds)}:{Path(folder).resolve()}"
    if args.profile:
        os.environ["FLYWHEEL_BENCH_PROFILE"] = str(Path(args.profile).resolve())
    variants = [v for v in args.variants.split(",") if v and not (args.smoke and v == "qlora")]
    runs: dict[str, list[dict]] = {v: [] for v in variants}
    if args.warm:
        warm_compile_caches(variants)
    for round_ in range(args.repeats):
        for variant in variants:
            full = bool(FULL_STEPS.match(variant))
            steps = args.steps if full else max(5, args.steps // 4) + 2
            result = _run_once(variant, steps)
            if result is None:
                continue
            result["round"] = round_ + 1
            runs[variant].append(result)
            print(json.dumps(result), flush=True)
            if args.json_out:
                Path(args.json_out).write_text(json.dumps(runs, indent=1))
    for line in summarise(runs):
        print(line, flush=True)
    return 0 if all(runs.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
