"""One fine-tune job in its own process: ``python -m flywheel_trainer.worker <job_dir>``.

The service starts one of these per job (so a crash or an out-of-memory kills only that job) and
reads its progress from stdout: every line that starts with :data:`PREFIX` is a JSON record
(``device``, ``plan``, ``log``, ``checkpoint``, ``done``, ``error``); anything else the libraries
print goes to the job's log. The recipe is setup → train (checkpoint every N steps to the object
store) → save the adapter into ``<job_dir>/output`` → exit. The service publishes the output.

Resume: checkpoints are uploaded to ``trainer/checkpoints/<job_id>/checkpoint-<step>/`` with a
completion marker; a restarted worker downloads the newest complete one and hands it to the
Hugging Face Trainer, which restores weights, optimizer, scheduler, RNG states and the position
in the (seeded) data order, so the resumed run reaches the same state as an uninterrupted one.
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
import sys
import time
import traceback
from pathlib import Path
from typing import Any

PREFIX = "@@flywheel "
CHECKPOINTS_PREFIX = "trainer/checkpoints/"
_stop_requested = False


def emit(kind: str, **fields: Any) -> None:
    sys.stdout.write(PREFIX + json.dumps({"type": kind, **fields}) + "\n")
    sys.stdout.flush()


def _on_sigterm(signum: int, frame: object) -> None:
    # Stop at the next step boundary; the service SIGKILLs us after its grace period anyway.
    global _stop_requested
    _stop_requested = True


def cuda_sft_overrides(batch_size: int = 4, max_length: int = 2048, packing: bool = True) -> dict[str, Any]:
    """SFTConfig options the worker uses on a CUDA GPU (also what bench/bench_sft_gpu.py measures).

    * padding-free batches: the examples of a micro-batch are concatenated into one row with
      per-example position ids, so no FLOP is spent on padding; with ``packing`` (best-fit
      decreasing) the ``batch_size`` rows are also full, and the flattened row is padded to
      ``batch_size * max_length`` tokens so every step has one shape (the compiled flex attention
      kernel, see :func:`cuda_model_kwargs`, is then built once instead of once per length);
    * fused linear + cross-entropy (Liger) when ``liger-kernel`` is installed: the vocabulary-size
      logits are never materialised, which is most of the activation memory of small models;
    * no activation recomputation (TRL turns gradient checkpointing on by default): LoRA keeps
      the activations of a 1-2 B model at 8k-32k tokens per micro-batch inside GPU memory.
    The LoRA layers themselves are sped up separately, after the trainer is built: :func:`fuse_lora`.
    """
    import importlib.util

    overrides: dict[str, Any] = {
        "packing": packing,
        "padding_free": True,
        "gradient_checkpointing": False,
        "use_liger_kernel": importlib.util.find_spec("liger_kernel") is not None,
        "per_device_train_batch_size": batch_size,
        "bf16": True,
        "tf32": True,
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


_FUSED_FN: Any = None


def _fused_lora_function() -> Any:
    """``y = x W^T + b + s * dropout(x) A^T B^T`` for PEFT's LoRA ``Linear`` in one autograd node.

    Why: PEFT computes the adapter branch as five separate modules. With the adapter weights kept
    in float32 (PEFT's default, which we want for the optimizer) it first copies each adapted
    input to float32, applies dropout in float32, lets autocast copy it back to bfloat16 for the
    matmul, then scales and adds the branch's output in two more passes; the backward pass mirrors
    every copy: by our count ~40 MB of memory traffic per token for a 1.5 B model. Here the branch
    runs in the compute dtype: dropout is one kernel that also returns its mask, the adapter's
    output is added by the matmul itself (``addmm_``, scaling as its ``alpha``), and the backward pass computes the adapter gradients from the
    saved dropped-out input and the small ``x A^T`` (N x r) with five matmuls and one fused
    mask-multiply-add. Same function and same parameters as PEFT's layer (the checkpoints and the
    published adapter are PEFT's own); the test compares it with PEFT's forward and backward.
    On one H200 this cut the benchmark's step time by 22% (36.8k -> 47.3k tokens/s, 16 packed
    rows, dropout 0.05; bench/RESULTS.md).
    """
    # Built once, on first use: the service imports this module and must not import torch.
    global _FUSED_FN
    if _FUSED_FN is not None:
        return _FUSED_FN
    import torch

    class _Fn(torch.autograd.Function):
        @staticmethod
        def forward(
            ctx: Any, x: Any, weight: Any, bias: Any, lora_a: Any, lora_b: Any, scaling: float, p: float
        ) -> Any:  # type: ignore[override]
            device = x.device.type
            dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else weight.dtype
            with torch.autocast(device_type=device, enabled=False):
                x2 = x.reshape(-1, x.shape[-1]).to(dtype)
                w = weight.to(dtype)
                a = lora_a.to(dtype)
                b = lora_b.to(dtype)
                if p > 0.0:
                    xd, mask = torch.native_dropout(x2, p, True)
                else:
                    xd, mask = x2, None
                xa = xd @ a.t()
                y = torch.addmm(bias.to(dtype), x2, w.t()) if bias is not None else x2 @ w.t()
                y.addmm_(xa, b.t(), alpha=scaling)
            ctx.save_for_backward(xd, mask, xa, weight, lora_a, lora_b)
            ctx.scaling, ctx.p, ctx.dtype, ctx.x_shape, ctx.x_dtype = scaling, p, dtype, x.shape, x.dtype
            return y.view(*x.shape[:-1], y.shape[-1])

        @staticmethod
        def backward(ctx: Any, grad: Any) -> Any:  # type: ignore[override]
            xd, mask, xa, weight, lora_a, lora_b = ctx.saved_tensors
            dtype, s = ctx.dtype, ctx.scaling
            g = grad.reshape(-1, grad.shape[-1]).to(dtype)
            a = lora_a.to(dtype)
            b = lora_b.to(dtype)
            gb = g @ b  # (N, r)
            d_b = (g.t() @ xa).mul_(s).to(lora_b.dtype) if ctx.needs_input_grad[4] else None
            gb.mul_(s)
            d_a = (gb.t() @ xd).to(lora_a.dtype) if ctx.needs_input_grad[3] else None
            d_x = None
            if ctx.needs_input_grad[0]:
                d_x = g @ weight.to(dtype)
                if mask is None:
                    d_x.addmm_(gb, a)
                else:
                    d_x.addcmul_(gb @ a, mask, value=1.0 / (1.0 - ctx.p))
                d_x = d_x.view(ctx.x_shape).to(ctx.x_dtype)
            return d_x, None, None, d_a, d_b, None, None

    _FUSED_FN = _Fn
    return _Fn


def _fused_forward(module: Any, plain_forward: Any, x: Any, *args: Any, **kwargs: Any) -> Any:
    """Forward of a patched PEFT LoRA Linear: the fused path when it applies, PEFT's otherwise."""
    import torch

    active = module.active_adapters
    if args or kwargs or module.disable_adapters or module.merged or len(active) != 1:
        return plain_forward(x, *args, **kwargs)  # DPO's reference pass (adapters off), merges, mixes
    name = active[0]
    if name not in module.lora_A or name in module.lora_variant or module.lora_B[name].bias is not None:
        return plain_forward(x)
    dropout = module.lora_dropout[name]
    p = float(dropout.p) if isinstance(dropout, torch.nn.Dropout) and dropout.training else 0.0
    base = module.get_base_layer()
    return _fused_lora_function().apply(
        x,
        base.weight,
        base.bias,
        module.lora_A[name].weight,
        module.lora_B[name].weight,
        float(module.scaling[name]),
        p,
    )


def fuse_lora(model: Any) -> int:
    """Route every plain LoRA ``Linear`` of a PEFT model through one fused autograd node.

    The node is :func:`_fused_lora_function`'s. Only layers whose base is a plain ``torch.nn.Linear`` (not 4-bit QLoRA layers, DoRA or other
    variants, nor ``fan_in_fan_out`` layers) are patched; the others keep PEFT's forward. The
    parameters, state dict, checkpoints and saved adapter are unchanged. Returns the number of
    layers patched.
    """
    import functools

    import torch
    from peft.tuners.lora.layer import Linear as LoraLinear

    patched = 0
    for module in model.modules():
        if type(module) is not LoraLinear or getattr(module, "_flywheel_fused", False):
            continue
        if type(module.get_base_layer()) is not torch.nn.Linear or module.fan_in_fan_out:
            continue
        module.forward = functools.partial(_fused_forward, module, module.forward)
        module._flywheel_fused = True
        patched += 1
    return patched


def checkpoint_prefix(job_id: str) -> str:
    return f"{CHECKPOINTS_PREFIX}{job_id}/"


def latest_checkpoint(store: Any, job_id: str) -> tuple[int, str] | None:
    """(step, prefix) of the newest checkpoint whose upload finished, or None."""
    from flywheel_trainer.storeio import COMPLETE_MARKER

    best: tuple[int, str] | None = None
    for info in store.list(checkpoint_prefix(job_id)):
        match = re.search(r"/checkpoint-(\d+)/" + COMPLETE_MARKER + "$", info.key)
        if match:
            step = int(match.group(1))
            if best is None or step > best[0]:
                best = (step, info.key[: -len(COMPLETE_MARKER)])
    return best


def _device_name() -> str:
    import torch

    if torch.cuda.is_available():
        return f"cuda:0 ({torch.cuda.get_device_name(0)})"
    return "cpu"


def _load_rows(store: Any, key: str | None) -> list[dict[str, Any]] | None:
    from flywheel_trainer.catalog import read_jsonl

    return read_jsonl(store, key) if key else None


def _normalise_preference(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Keep only prompt/chosen/rejected (TRL's preference format, plain or conversational)."""
    return [{k: row[k] for k in ("prompt", "chosen", "rejected")} for row in rows]


def run(job_dir: Path) -> int:
    spec = json.loads((job_dir / "spec.json").read_text())
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_DATASETS_CACHE", str(job_dir / "hf-datasets"))

    import torch
    from datasets import Dataset
    from peft import LoraConfig, PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback, set_seed

    from flywheel_common.objectstore import ObjectStoreSettings, open_object_store
    from flywheel_trainer import catalog
    from flywheel_trainer.storeio import download_dir, upload_dir

    signal.signal(signal.SIGTERM, _on_sigterm)
    store = open_object_store(ObjectStoreSettings())
    job_id = spec["job_id"]
    hp = spec["hyperparameters"]
    method = spec["method"]  # "SFT" or "DPO"
    device = _device_name()
    emit("device", device=device)
    if hp["quantization"] == "NF4" and not torch.cuda.is_available():
        emit("error", code=9, message="NF4 (QLoRA) needs a CUDA GPU and this trainer process sees none")
        return 3

    base_dir = catalog.fetch_base_model(store, spec["base_model"], Path(spec["cache_dir"]))
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if not tokenizer.chat_template:
        tokenizer.chat_template = catalog.DEFAULT_CHAT_TEMPLATE

    dataset = catalog.dataset_info(store, spec["dataset_id"])
    train_rows = _load_rows(store, dataset.train_key) or []
    eval_rows = _load_rows(store, dataset.validation_key)
    if method == "SFT":
        train_rows = [{"messages": r["messages"]} for r in train_rows]
        eval_rows = [{"messages": r["messages"]} for r in eval_rows] if eval_rows else None
    else:
        train_rows = _normalise_preference(train_rows)
        eval_rows = _normalise_preference(eval_rows) if eval_rows else None
    train_ds = Dataset.from_list(train_rows)
    eval_ds = Dataset.from_list(eval_rows) if eval_rows else None

    cuda = torch.cuda.is_available()
    bf16 = cuda and torch.cuda.is_bf16_supported()
    # On a CPU with native bfloat16 (AVX-512 BF16 / AMX) the Trainer's bf16 mode autocasts the
    # matmuls while the weights stay float32: Gemma 3 270M LoRA steps ran 2.0x faster on the 2-core
    # Zen 4 machine (414 vs 199 tokens/s at 1,024 tokens, TRL's chunked loss in both).
    from flywheel_common.hardware import cpu_has_fast_bf16

    cpu_bf16 = not cuda and spec.get("cpu_bf16", True) and cpu_has_fast_bf16()
    model_kwargs: dict[str, Any] = {"dtype": torch.bfloat16 if bf16 else torch.float32}
    if hp["quantization"] == "NF4":
        from transformers import BitsAndBytesConfig

        model_kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=hp["double_quantization"],
            bnb_4bit_compute_dtype=torch.bfloat16 if bf16 else torch.float16,
        )
    if cuda:
        model_kwargs.update(cuda_model_kwargs(method, hp["packing"]))
    model = AutoModelForCausalLM.from_pretrained(base_dir, **model_kwargs)
    if hp["quantization"] == "NF4":
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)

    lora = LoraConfig(
        r=hp["lora_rank"],
        lora_alpha=hp["lora_alpha"],
        lora_dropout=hp["lora_dropout"],
        target_modules=hp["target_modules"],
        bias="none",
        task_type="CAUSAL_LM",
    )

    out_dir = job_dir / "hf"
    common: dict[str, Any] = {
        "output_dir": str(out_dir),
        "num_train_epochs": hp["epochs"],
        "max_steps": hp["max_steps"] if hp["max_steps"] > 0 else -1,
        "learning_rate": hp["learning_rate"],
        "lr_scheduler_type": hp["scheduler"],
        "warmup_steps": hp["warmup_ratio"],  # a float in [0, 1) is a ratio of the total steps
        "per_device_train_batch_size": hp["batch_size"],
        "per_device_eval_batch_size": hp["batch_size"],
        "gradient_accumulation_steps": hp["gradient_accumulation_steps"],
        "seed": hp["seed"],
        "data_seed": hp["seed"],
        "logging_steps": spec["logging_steps"],
        "save_strategy": "steps",
        "save_steps": hp["checkpoint_every_steps"],
        "save_total_limit": 2,
        "eval_strategy": "steps" if eval_ds is not None else "no",
        "eval_steps": hp["checkpoint_every_steps"] if eval_ds is not None else None,
        "report_to": [],
        "bf16": bf16 or cpu_bf16,
        "max_grad_norm": 1.0,
        "include_num_input_tokens_seen": "non_padding",
        "dataloader_num_workers": 0,
        "disable_tqdm": True,
        "use_cpu": not cuda,
        "max_length": hp["max_seq_length"],
    }
    if method == "SFT":
        from trl import SFTConfig, SFTTrainer

        sft: dict[str, Any] = {**common, "packing": hp["packing"], "assistant_only_loss": True}
        if cuda:
            sft.update(cuda_sft_overrides(hp["batch_size"], hp["max_seq_length"], hp["packing"]), bf16=bf16)
        elif not hp["packing"]:
            sft.update(cpu_sft_overrides(hp["batch_size"], hp["gradient_accumulation_steps"]))
        args = SFTConfig(**sft)
        trainer_cls: Any = SFTTrainer
    else:
        from trl import DPOConfig, DPOTrainer

        args = DPOConfig(**common, beta=hp["dpo_beta"], dataset_num_proc=None)
        trainer_cls = DPOTrainer

    started = time.monotonic()
    state_box: dict[str, Any] = {"last_tokens": None, "last_time": None, "start_step": None}

    class Reporter(TrainerCallback):
        """Streams logs and checkpoints to the service; honours a stop request."""

        def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            emit("plan", total_steps=state.max_steps, start_step=state.global_step)
            state_box.update(
                last_tokens=state.num_input_tokens_seen,
                last_time=time.monotonic(),
                start_step=state.global_step,
            )

        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            if spec.get("step_delay_s"):
                time.sleep(spec["step_delay_s"])
            if _stop_requested:
                control.should_training_stop = True
                control.should_save = False

        def on_log(self, args: Any, state: Any, control: Any, logs: dict | None = None, **kw: Any) -> None:
            logs = dict(logs or {})
            now = time.monotonic()
            tokens = state.num_input_tokens_seen
            tps = 0.0
            if state_box["last_time"] is not None and now > state_box["last_time"]:
                tps = (tokens - state_box["last_tokens"]) / (now - state_box["last_time"])
            if "loss" in logs or "train_loss" not in logs:
                state_box.update(last_tokens=tokens, last_time=now)
            done = state.global_step - (state_box["start_step"] or 0)
            eta = None
            if done > 0:
                eta = (now - started) / done * max(0, state.max_steps - state.global_step)
            extra = {
                k: float(v)
                for k, v in logs.items()
                if isinstance(v, int | float)
                and k not in {"loss", "learning_rate", "grad_norm", "eval_loss", "epoch"}
                and not math.isnan(float(v))
            }
            emit(
                "log",
                step=state.global_step,
                total_steps=state.max_steps,
                epoch=float(state.epoch or 0.0),
                loss=logs.get("loss"),
                learning_rate=logs.get("learning_rate"),
                grad_norm=logs.get("grad_norm"),
                eval_loss=logs.get("eval_loss"),
                tokens_per_second=tps if "loss" in logs else None,
                eta_s=eta,
                extra=extra,
            )

        def on_save(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            local = out_dir / f"checkpoint-{state.global_step}"
            if not local.is_dir():
                return
            prefix = f"{checkpoint_prefix(job_id)}checkpoint-{state.global_step}/"
            upload_dir(store, local, prefix, overwrite=True)
            size = sum(p.stat().st_size for p in local.rglob("*") if p.is_file())
            emit("checkpoint", step=state.global_step, key=prefix, size=size)
            # Keep the newest two checkpoints in the store; cancel and failures keep them too.
            for old in _older_checkpoints(store, job_id, keep=2):
                for info in list(store.list(old)):
                    store.delete(info.key)

    # The trainer wraps the model in PEFT in its constructor, and LoRA initialises lora_A randomly.
    # TRL 1.13 (the pinned version) does not seed before that (later TRL does), so without this the
    # initial adapter depends on whatever drew from the global RNGs in this process before, and an
    # uninterrupted run and a resumed one (whose first part started from its own initial adapter)
    # end with different weights. Seeding here makes the initial adapter a function of the seed.
    set_seed(hp["seed"])
    trainer = trainer_cls(
        model=model,
        args=args,
        train_dataset=train_ds,
        eval_dataset=eval_ds,
        processing_class=tokenizer,
        peft_config=lora,
        callbacks=[Reporter()],
    )
    if cuda:
        fused = fuse_lora(trainer.model)
        attn = model_kwargs.get("attn_implementation", "default")
        print(
            f"flywheel: CUDA path: fused LoRA on {fused} layers, attention {attn}",
            file=sys.stderr,
            flush=True,
        )
    resume = latest_checkpoint(store, job_id)
    resume_path = None
    if resume is not None:
        resume_path = download_dir(store, resume[1], job_dir / "resume" / f"checkpoint-{resume[0]}")
        emit("resuming", step=resume[0])
    try:
        trainer.train(resume_from_checkpoint=str(resume_path) if resume_path else None)
    except torch.OutOfMemoryError as err:
        emit("error", code=8, message=f"out of memory while training: {str(err).splitlines()[0]}")
        return 4
    if _stop_requested:
        emit("stopped", step=trainer.state.global_step)
        return 5
    if eval_ds is not None:
        trainer.evaluate()  # the final eval loss goes into the logs, the manifest and the adapter

    output = job_dir / "output"
    output.mkdir(parents=True, exist_ok=True)
    trainer.model.save_pretrained(output)
    tokenizer.save_pretrained(output)
    if not (output / "chat_template.jinja").exists():
        (output / "chat_template.jinja").write_text(tokenizer.chat_template)
    # vLLM's resolver and Flywheel's serving match the adapter to the base model by NAME.
    cfg_path = output / "adapter_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["base_model_name_or_path"] = spec["base_model"]
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True))
    history = trainer.state.log_history
    (output / "training_log.json").write_text(json.dumps(history, indent=1))
    _plot_loss(history, output / "loss_curve.png", title=f"{job_id} ({method})")
    assert isinstance(trainer.model, PeftModel)
    emit("done", output=str(output), step=trainer.state.global_step, elapsed_s=time.monotonic() - started)
    return 0


def _older_checkpoints(store: Any, job_id: str, keep: int) -> list[str]:
    from flywheel_trainer.storeio import COMPLETE_MARKER

    steps = []
    for info in store.list(checkpoint_prefix(job_id)):
        match = re.search(r"/checkpoint-(\d+)/" + COMPLETE_MARKER + "$", info.key)
        if match:
            steps.append((int(match.group(1)), info.key[: -len(COMPLETE_MARKER)]))
    steps.sort()
    return [prefix for _, prefix in steps[:-keep]] if len(steps) > keep else []


def _plot_loss(history: list[dict[str, Any]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [(h["step"], h["loss"]) for h in history if "loss" in h]
    evals = [(h["step"], h["eval_loss"]) for h in history if "eval_loss" in h]
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    if train:
        ax.plot(*zip(*train, strict=True), label="train loss")
    if evals:
        ax.plot(*zip(*evals, strict=True), marker="o", label="eval loss")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main() -> int:
    from flywheel_common.procs import die_with_parent

    die_with_parent()  # the service's death stops training (its restart resumes from a checkpoint)
    job_dir = Path(sys.argv[1])
    try:
        return run(job_dir)
    except Exception as err:
        (job_dir / "traceback.txt").write_text(traceback.format_exc())
        message = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}".strip()
        code = 8 if "out of memory" in message.lower() else 13
        emit("error", code=code, message=message[:500])
        return 2


if __name__ == "__main__":
    sys.exit(main())
