"""The training recipe of one fine-tune job: setup → train → save → cleanup, resumable.

- **setup**: the base model (fetched from the object store into the local cache), its tokenizer,
  the dataset's splits, the model (NF4-quantised for QLoRA), the LoRA config — or, for a job
  continuing a published adapter (``init_adapter``), that adapter loaded trainable — and TRL's
  ``SFTTrainer`` (assistant-only loss), ``DPOTrainer`` or, for GRPO, ``grpo.RolloutGRPOTrainer``
  (TRL's ``GRPOTrainer`` on the dataset's stored rollouts); on a CUDA GPU the device options
  (``device_options.py``) and the fused LoRA layer (``fused_lora.py``); and the newest complete
  checkpoint of the job, if any, downloaded to resume from.
- **train**: the Trainer's own loop; a callback reports every log, uploads every checkpoint to
  ``trainer/checkpoints/<job id>/checkpoint-<step>/`` (the newest two are kept) and stops at the
  next step boundary when the process is asked to stop. The final evaluation runs on the
  validation split, if there is one.
- **save**: the adapter, tokenizer, chat template, log history and loss curve into
  ``<job dir>/output``, for the service to publish.
- **cleanup**: after a saved adapter, the Trainer's local checkpoint folder goes (every
  checkpoint that counts is in the object store).

Data parallel (``spec.gpus`` > 1, started by :mod:`flywheel_trainer.launch`): every rank runs this
recipe on ``batch_size / gpus`` rows of each step, and the Trainer's DDP averages the gradients;
rank 0 downloads first (the others then read what it wrote), uploads checkpoints once every rank
has written its part (its RNG state), saves the adapter and sends the records. The ranks agree on
the rows a pass and on stopping, so none waits in a collective for one that left.

Resume: the Hugging Face Trainer restores weights, optimizer, scheduler, RNG states and the position
in the (seeded) data order from the checkpoint, so the resumed run reaches the same state as an
uninterrupted one. Progress goes to the service as :mod:`flywheel_trainer.protocol` records.
ML libraries are imported inside the steps: the environment they read is set first.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import grpc

from flywheel_trainer import checkpoints
from flywheel_trainer.nonfinite import (  # noqa: F401 - recipe.X names kept for callers
    MAX_NONFINITE_STEPS_IN_A_ROW,
    NonFiniteSteps,
    all_finite,
    nonfinite_flag,
    nonfinite_parameters,
)
from flywheel_trainer.protocol import (
    Checkpoint,
    Device,
    Done,
    Failure,
    Log,
    Outcome,
    Passes,
    Plan,
    Record,
    Resuming,
    Spec,
    Stopped,
    exit_status,
)

log = logging.getLogger("flywheel.trainer.recipe")


#: Checkpoints of a job kept in the object store (cancel and failures keep them too).
KEEP_CHECKPOINTS = 2


class Recipe:
    """One job's training, step by step; ``emit`` sends a record to the service."""

    def __init__(self, job_dir: Path, stop: threading.Event, emit: Callable[[Record], None]) -> None:
        self.job_dir = job_dir
        self.spec = Spec.model_validate_json((job_dir / "spec.json").read_text())
        self.stop = stop
        self.emit = emit
        self.out_dir = job_dir / "hf"  # the Trainer's output_dir: its local checkpoints
        self.output = job_dir / "output"  # the adapter, for the service to publish
        self.started = time.monotonic()
        self.store: Any = None
        self.tokenizer: Any = None
        self.base_hf_id = self.spec.base_model  # replaced in setup by the registry entry's hf_id
        self.trainer: Any = None
        self.has_eval = False
        self.resume_path: Path | None = None
        self.rollouts: list[dict[str, Any]] = []  # GRPO: the training rows (grpo.prepare_rows)
        self.nonfinite = NonFiniteSteps()
        # Rows of one forward/backward pass: batch_size, or a divisor of it when that many do not
        # fit the card (the memory model up front, or an out-of-memory error); the passes of an
        # optimizer step make up batch_size x gradient_accumulation_steps rows whatever the split.
        self.world = max(1, self.spec.gpus)  # data-parallel processes
        self.rank = int(os.environ.get("RANK", "0")) if self.world > 1 else 0
        self.dist: Any = None  # accelerate's PartialState once the ranks have met
        self.rank_rows = self.spec.hyperparameters.batch_size // self.world  # of each step, this rank's
        self.pass_rows = self.rank_rows
        self.pass_note = ""
        self.stopping = False  # the ranks agreed to stop at this step boundary
        self.compile_cache: Any = None  # compile_cache.CompileCache on a GPU

    @property
    def accumulation(self) -> int:
        """Passes per optimizer step."""
        hp = self.spec.hyperparameters
        return hp.gradient_accumulation_steps * (self.rank_rows // self.pass_rows)

    def _main_first(self) -> Any:
        """Rank 0 runs the block first, the other ranks after it (a no-op in one process)."""
        import contextlib

        return self.dist.main_process_first() if self.dist is not None else contextlib.nullcontext()

    def _join(self, cuda: bool) -> Failure | None:
        """Meet the other ranks (a process group over NCCL on GPUs, gloo on CPUs)."""
        import torch

        if "WORLD_SIZE" not in os.environ or int(os.environ["WORLD_SIZE"]) != self.world:
            return Failure.of(
                grpc.StatusCode.INTERNAL,
                f"a job of {self.world} GPUs must be started by flywheel_trainer.launch (WORLD_SIZE is "
                f"{os.environ.get('WORLD_SIZE', 'unset')})",
            )
        if cuda and torch.cuda.device_count() < self.world:
            return Failure.of(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"job.gpus: the job asks for {self.world} GPUs and this process sees "
                f"{torch.cuda.device_count()}",
            )
        from accelerate import PartialState

        self.dist = PartialState(cpu=not cuda)
        return None

    def _agree(self, value: int, op: str) -> int:
        """``value`` reduced over the ranks (``op``: "min" or "max"); itself in one process."""
        if self.dist is None:
            return value
        import torch
        import torch.distributed as tdist

        t = torch.tensor([value], device=self.dist.device)
        tdist.all_reduce(t, op=tdist.ReduceOp.MIN if op == "min" else tdist.ReduceOp.MAX)
        return int(t.item())

    def should_stop(self) -> bool:
        """Whether to stop at this step boundary: asked to in any rank (all ranks call this)."""
        self.stopping = self.stopping or bool(self._agree(int(self.stop.is_set()), "max"))
        return self.stopping

    # ------------------------------------------------------------------ setup

    def setup(self) -> Failure | None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        os.environ.setdefault("HF_DATASETS_CACHE", str(self.job_dir / "hf-datasets"))

        import torch
        from peft import LoraConfig
        from transformers import AutoModelForCausalLM, AutoTokenizer, set_seed

        from flywheel_common.hardware import cpu_has_fast_bf16
        from flywheel_common.objectstore import ObjectStoreSettings, open_object_store
        from flywheel_trainer import catalog
        from flywheel_trainer.device_options import cuda_model_kwargs
        from flywheel_trainer.fused_lora import fuse_lora
        from flywheel_trainer.storeio import download_dir

        spec, hp = self.spec, self.spec.hyperparameters
        self.store = store = open_object_store(ObjectStoreSettings())
        cuda = torch.cuda.is_available()
        if cuda and spec.compile_cache and self.compile_cache is None:
            # Before anything compiles (flex attention on the first step); once per process,
            # also when an out-of-memory retry runs setup again.
            from flywheel_trainer.compile_cache import CompileCache

            self.compile_cache = CompileCache(store)
            self.compile_cache.restore()
        if self.world > 1:
            joined = self._join(cuda)
            if joined is not None:
                return joined
        where = f"cuda:0 ({torch.cuda.get_device_name(0)})" if cuda else "cpu"
        if self.world > 1:
            where = (
                f"cuda:0-{self.world - 1} ({torch.cuda.get_device_name(0)}), {self.world} GPUs in data parallel"
                if cuda
                else f"cpu, {self.world} processes in data parallel (gloo)"
            )
        self.emit(Device(device=where))
        if hp.quantization == "NF4" and not cuda:
            return Failure.of(
                grpc.StatusCode.FAILED_PRECONDITION,
                "NF4 (QLoRA) needs a CUDA GPU and this trainer process sees none",
            )

        with self._main_first():  # one download into the shared cache; the others find it there
            base_dir = catalog.fetch_base_model(store, spec.base_model, Path(spec.cache_dir))
        manifest = json.loads((base_dir / catalog.BASE_MODEL_MANIFEST).read_text())
        self.base_hf_id = catalog.BaseModelInfo.from_json(manifest).hf_id
        self.tokenizer = tokenizer = AutoTokenizer.from_pretrained(base_dir)
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        if not tokenizer.chat_template:
            tokenizer.chat_template = catalog.DEFAULT_CHAT_TEMPLATE
        train_ds, eval_ds = self._datasets()
        self.has_eval = eval_ds is not None

        bf16 = cuda and torch.cuda.is_bf16_supported()
        # On a CPU with native bfloat16 (AVX-512 BF16 / AMX) the Trainer's bf16 mode autocasts the
        # matmuls while the weights stay float32: Gemma 3 270M LoRA steps ran 2.0x faster on the
        # 2-core Zen 4 machine (414 vs 199 tokens/s at 1,024 tokens, TRL's chunked loss in both).
        cpu_bf16 = not cuda and spec.cpu_bf16 and cpu_has_fast_bf16()
        model_kwargs: dict[str, Any] = {"dtype": torch.bfloat16 if bf16 else torch.float32}
        if hp.quantization == "NF4":
            from transformers import BitsAndBytesConfig

            model_kwargs["quantization_config"] = BitsAndBytesConfig(
                load_in_4bit=True,
                bnb_4bit_quant_type="nf4",
                bnb_4bit_use_double_quant=hp.double_quantization,
                bnb_4bit_compute_dtype=torch.bfloat16 if bf16 else torch.float16,
            )
        if cuda:
            model_kwargs.update(cuda_model_kwargs(spec.method, hp.packing))
        model = AutoModelForCausalLM.from_pretrained(base_dir, **model_kwargs)
        if hp.quantization == "NF4":
            from peft import prepare_model_for_kbit_training

            model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
        if spec.method == "GRPO":
            train_ds = self._rollouts(train_ds, model.config.vocab_size)
            if isinstance(train_ds, Failure):
                return train_ds
        if cuda and spec.method == "SFT" and hp.quantization == "NONE":
            from flywheel_trainer.device_options import liger_available

            self._fit_passes(model, torch.cuda.mem_get_info()[0], fused_loss=liger_available())
            # Every rank must run the same passes a step (their gradients are averaged per step).
            from flywheel_trainer.memory_plan import split_rows

            self.pass_rows = split_rows(self.rank_rows, self._agree(self.pass_rows, "min"))
        self.emit(Passes(rows=self.pass_rows, accumulation=self.accumulation, note=self.pass_note))
        lora: LoraConfig | None = LoraConfig(
            r=hp.lora_rank,
            # PEFT annotates an int but scales by alpha / r in floats; our API allows a fractional alpha.
            lora_alpha=hp.lora_alpha,  # type: ignore[arg-type]
            lora_dropout=hp.lora_dropout,
            target_modules=hp.target_modules,
            bias="none",
            task_type="CAUSAL_LM",
        )
        args, trainer_cls = self._trainer_config(
            cuda=cuda, bf16=bf16, cpu_bf16=cpu_bf16, has_eval=self.has_eval
        )

        # The trainer wraps the model in PEFT in its constructor, and LoRA initialises lora_A
        # randomly. TRL 1.13 (the pinned version) does not seed before that (later TRL does), so
        # without this the initial adapter depends on whatever drew from the global RNGs in this
        # process before, and an uninterrupted run and a resumed one (whose first part started from
        # its own initial adapter) end with different weights. Seeding here makes the initial
        # adapter a function of the seed.
        set_seed(hp.seed)
        if spec.init_adapter_prefix:
            # Continued training: the published version's weights are the initial state (its LoRA
            # settings were echoed into the job's hyperparameters at create).
            from peft import PeftModel

            init_dir = self.job_dir / "init-adapter"
            with self._main_first():
                if self.rank == 0:
                    download_dir(store, spec.init_adapter_prefix, init_dir)
            model = cast(Any, PeftModel.from_pretrained(model, str(init_dir), is_trainable=True))
            lora = None
        kwargs: dict[str, Any] = {"eval_dataset": eval_ds}
        if spec.method == "GRPO":
            from flywheel_trainer.grpo import RolloutGRPOTrainer, reward_stats

            trainer_cls, kwargs = RolloutGRPOTrainer, {"rewards": reward_stats(self.rollouts)}
        self.trainer = trainer_cls(
            model=model,
            args=args,
            train_dataset=train_ds,
            processing_class=tokenizer,
            peft_config=lora,
            callbacks=[_reporter(self)],
            **kwargs,
        )
        left = self.trainer.train_dataset
        if left is not None and len(left) == 0:
            # TRL drops examples whose loss positions all fall past max_length; left alone, its
            # sampler then fails with "num_samples=0", which names neither cause nor fix.
            return Failure.of(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"dataset {spec.dataset_id}: no training example is left after tokenising and "
                f"cutting to max_seq_length {hp.max_seq_length} ({len(train_ds)} rows in the "
                "dataset; their completions start past that length): raise max_seq_length",
            )
        if cuda:
            use_fp8 = self._use_fp8()
            if hp.fp8_base_matmuls and not use_fp8:
                print(
                    "flywheel: fp8_base_matmuls asked for, but this GPU (compute capability "
                    f"{'.'.join(map(str, torch.cuda.get_device_capability()))}) has no FP8 matmuls: "
                    "the base weights stay in bfloat16",
                    file=sys.stderr,
                    flush=True,
                )
            fused = fuse_lora(self.trainer.model, fp8=use_fp8)
            attn = model_kwargs.get("attn_implementation", "default")
            print(
                f"flywheel: CUDA path: fused LoRA on {fused} layers, attention {attn}, "
                f"base matmuls {'fp8' if use_fp8 else 'bf16'}",
                file=sys.stderr,
                flush=True,
            )
        resume = checkpoints.latest(store, spec.job_id)
        if resume is not None:
            step, prefix = resume
            self.resume_path = self.job_dir / "resume" / f"checkpoint-{step}"
            with self._main_first():
                if self.rank == 0:
                    download_dir(store, prefix, self.resume_path)
            self.emit(Resuming(step=step))
        return None

    def _use_fp8(self) -> bool:
        """Whether this job's base matmuls run in FP8: asked for, and this GPU runs them (checked once)."""
        from flywheel_trainer import fp8

        return self.spec.hyperparameters.fp8_base_matmuls and fp8.supported()

    def _fit_passes(self, model: Any, free_bytes: int, *, fused_loss: bool) -> None:
        """Split the step's rows into passes the memory model says fit ``free_bytes`` (measured with
        the base weights loaded). SFT in bf16 only: the model was fitted to the SFT path's
        activations; DPO and GRPO keep more per row (two sequences, per-token log-probs over the
        vocabulary) and QLoRA dequantises, so those rely on the out-of-memory retry alone."""
        from flywheel_trainer.memory_plan import Shape, rows_per_pass, split_rows

        hp = self.spec.hyperparameters
        if self._use_fp8():  # the FP8 copies of the base weights are made after this plan
            from flywheel_trainer.fused_lora import fp8_copy_bytes

            free_bytes -= fp8_copy_bytes(model, hp.target_modules)
        fit = rows_per_pass(
            Shape.of(model.config), free_bytes, hp.max_seq_length, hp.lora_rank, fused_loss=fused_loss
        )
        rows = split_rows(self.rank_rows, min(fit, self.pass_rows))
        if rows < self.pass_rows:
            self.pass_rows = rows
            self.pass_note = (
                f"{_rows(self.rank_rows)} of {hp.max_seq_length} tokens a pass would not fit the "
                f"{free_bytes / 2**30:.1f} GiB free on this GPU (the memory model allows {fit}): "
                f"{_rows(rows)} a pass, {self.accumulation} passes a step"
            )

    def _datasets(self) -> tuple[Any, Any]:
        """(train, validation or None) as ``datasets.Dataset`` in TRL's format for the method."""
        from datasets import Dataset

        from flywheel_trainer import catalog

        dataset = catalog.dataset_info(self.store, self.spec.dataset_id)
        train_rows = catalog.read_jsonl(self.store, dataset.train_key)
        if self.spec.method == "GRPO":
            # Rows as read; _rollouts checks and cuts them once the model's vocabulary is known. No
            # evaluation: GRPO's eval would sample from the model, and this trainer samples nothing.
            return train_rows, None
        eval_rows = catalog.read_jsonl(self.store, dataset.validation_key) if dataset.validation_key else []
        # SFT keeps the chat messages; DPO keeps TRL's preference columns (plain or conversational).
        keys = ("messages",) if self.spec.method == "SFT" else ("prompt", "chosen", "rejected")
        train = Dataset.from_list([{k: row[k] for k in keys} for row in train_rows])
        evaluation = (
            Dataset.from_list([{k: row[k] for k in keys} for row in eval_rows]) if eval_rows else None
        )
        return train, evaluation

    def _rollouts(self, rows: list[dict[str, Any]], vocab_size: int) -> Any:
        """The GRPO training rows as a ``datasets.Dataset``, or a Failure naming the bad record."""
        from datasets import Dataset

        from flywheel_trainer.catalog import DatasetError, check_rl_row
        from flywheel_trainer.grpo import RolloutError, prepare_rows

        try:
            for n, row in enumerate(rows, 1):
                check_rl_row(row, f"dataset {self.spec.dataset_id} record {n}")
            self.rollouts = prepare_rows(rows, self.spec.hyperparameters.max_seq_length, vocab_size)
        except (DatasetError, RolloutError) as err:
            return Failure.of(grpc.StatusCode.FAILED_PRECONDITION, f"dataset {self.spec.dataset_id}: {err}")
        return Dataset.from_list(self.rollouts)

    def _trainer_config(self, *, cuda: bool, bf16: bool, cpu_bf16: bool, has_eval: bool) -> tuple[Any, Any]:
        """(TRL config, TRL trainer class) for the job's method and this device."""
        from flywheel_trainer.device_options import cpu_sft_overrides, cuda_sft_overrides

        spec, hp = self.spec, self.spec.hyperparameters
        common: dict[str, Any] = {
            "output_dir": str(self.out_dir),
            "num_train_epochs": hp.epochs,
            "max_steps": hp.max_steps if hp.max_steps > 0 else -1,
            "learning_rate": hp.learning_rate,
            "lr_scheduler_type": hp.scheduler,
            "warmup_steps": hp.warmup_ratio,  # a float in [0, 1) is a ratio of the total steps
            "per_device_train_batch_size": self.pass_rows,
            "per_device_eval_batch_size": self.pass_rows,
            "gradient_accumulation_steps": self.accumulation,
            "seed": hp.seed,
            "data_seed": hp.seed,
            "logging_steps": spec.logging_steps,
            "save_strategy": "steps",
            "save_steps": hp.checkpoint_every_steps,
            "save_total_limit": 2,
            "eval_strategy": "steps" if has_eval else "no",
            "eval_steps": hp.checkpoint_every_steps if has_eval else None,
            "report_to": [],
            "bf16": bf16 or cpu_bf16,
            "max_grad_norm": 1.0,
            "include_num_input_tokens_seen": "non_padding",
            "dataloader_num_workers": 0,
            "disable_tqdm": True,
            "use_cpu": not cuda,
            "max_length": hp.max_seq_length,
        }
        if spec.method == "SFT":
            from trl import SFTConfig

            from flywheel_trainer.sync_free import SyncFreeSFTTrainer

            sft: dict[str, Any] = {**common, "packing": hp.packing, "assistant_only_loss": True}
            if cuda:
                sft.update(cuda_sft_overrides(self.pass_rows, hp.max_seq_length, hp.packing), bf16=bf16)
            elif not hp.packing:
                sft.update(cpu_sft_overrides(self.rank_rows, hp.gradient_accumulation_steps))
            return SFTConfig(**sft), SyncFreeSFTTrainer
        if spec.method == "GRPO":
            from trl import GRPOConfig, GRPOTrainer

            del common["max_length"]  # prepare_rows cut every sample to max_seq_length already
            gb = hp.batch_size * hp.gradient_accumulation_steps
            grpo = GRPOConfig(
                **common,
                # TRL's num_generations (G) shapes its own sampler and reward grouping, which we
                # replace; it only has to pass GRPOConfig's checks (>= 2, divides the batch).
                num_generations=gb if gb >= 2 else 2,
                generation_batch_size=gb if gb >= 2 else 2,
                max_completion_length=max(len(r["completion_token_ids"]) for r in self.rollouts),
                temperature=1.0,  # the stored log-probs are of the unscaled distribution
                beta=hp.grpo_kl_beta,
                epsilon=hp.grpo_epsilon,
                epsilon_high=hp.grpo_epsilon_high,
                loss_type=hp.grpo_loss_type,
                num_iterations=hp.grpo_iterations,
                remove_unused_columns=False,
            )
            if gb < 2:  # one sample per optimizer step: what GRPOConfig's check cannot express
                grpo.generation_batch_size, grpo.steps_per_generation = gb, self.accumulation
            return grpo, GRPOTrainer
        from trl import DPOConfig, DPOTrainer

        return DPOConfig(**common, beta=hp.dpo_beta, dataset_num_proc=None), DPOTrainer

    # ------------------------------------------------------------------ train

    def train(self) -> Failure | Stopped | None:
        import torch

        if self.should_stop():  # asked to stop while setting up
            return Stopped(step=0)
        resume = str(self.resume_path) if self.resume_path else None
        oom = ""
        try:
            self.trainer.train(resume_from_checkpoint=resume)
        except torch.OutOfMemoryError as err:
            oom = str(err).splitlines()[0] if str(err) else "out of memory"
        if oom:  # handled outside the except block: its traceback would keep the tensors alive
            return self._retry_smaller(oom)
        self.nonfinite.settle()  # the last step's verdict, on the device path read a step late
        if self.nonfinite.diverged:
            return Failure.of(grpc.StatusCode.ABORTED, self.nonfinite.diverged)
        if self.stopping:
            return Stopped(step=self.trainer.state.global_step)
        if self.has_eval:
            self.trainer.evaluate()  # the final eval loss goes into the logs, the manifest and the adapter
        return None

    def _retry_smaller(self, oom: str) -> Failure | Stopped | None:
        """After an out-of-memory error: train again with half the rows a pass (the next divisor of
        batch_size down), from the newest checkpoint; RESOURCE_EXHAUSTED once one row a pass fails."""
        import gc

        import torch

        from flywheel_trainer.memory_plan import split_rows

        hp = self.spec.hyperparameters
        if self.world > 1:  # the ranks would have to agree on a retry; the job fails instead
            return Failure.of(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"out of memory while training at {_rows(self.pass_rows)} a pass on each of {self.world} GPUs: "
                f"{oom} (a data-parallel job does not retry at fewer rows: lower batch_size or "
                f"max_seq_length, currently {hp.max_seq_length})",
            )
        if self.pass_rows == 1:
            return Failure.of(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"out of memory while training, even at 1 row a pass: {oom} "
                f"(lower max_seq_length, currently {hp.max_seq_length}, or use quantization NF4)",
            )
        was = self.pass_rows
        self.pass_rows = split_rows(self.rank_rows, was // 2)
        self.pass_note = (
            f"out of memory at {_rows(was)} a pass ({oom}): retried at {_rows(self.pass_rows)} a pass, "
            f"{self.accumulation} passes a step"
        )
        print(f"flywheel: {self.pass_note}", file=sys.stderr, flush=True)
        self.trainer = None
        # accelerate keeps its state in process-wide singletons (the gradient accumulation's
        # bookkeeping among it) that the next Trainer would inherit from the one that failed.
        from accelerate.state import AcceleratorState, GradientState

        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        return self.setup() or self.train()

    def on_save(self, step: int) -> None:
        """Upload the Trainer's new checkpoint, report it, keep the newest few in the store."""
        from flywheel_trainer.storeio import upload_dir

        if self.dist is not None:
            self.dist.wait_for_everyone()  # each rank has written its RNG state into the checkpoint
            if self.rank != 0:
                return
        local = self.out_dir / f"checkpoint-{step}"
        if not local.is_dir():
            return
        prefix = checkpoints.step_prefix(self.spec.job_id, step)
        upload_dir(self.store, local, prefix, overwrite=True)
        size = sum(p.stat().st_size for p in local.rglob("*") if p.is_file())
        self.emit(Checkpoint(step=step, key=prefix, size=size))
        checkpoints.prune(self.store, self.spec.job_id, keep=KEEP_CHECKPOINTS)

    # ------------------------------------------------------------------ save

    def save(self) -> Done | Failure:
        from peft import PeftModel

        trainer, tokenizer, output = self.trainer, self.tokenizer, self.output
        assert isinstance(trainer.model, PeftModel)  # what is saved is the adapter, not a whole model
        broken = nonfinite_parameters(trainer.model)
        if broken:  # never publish weights that would make every served answer NaN
            return Failure.of(
                grpc.StatusCode.ABORTED,
                f"the trained adapter has non-finite weights ({len(broken)} tensors, e.g. {broken[0]}); "
                "it was not published",
            )
        if self.rank != 0:  # rank 0 saves the adapter (the ranks' weights are the same)
            return Done(output="", step=trainer.state.global_step, elapsed_s=time.monotonic() - self.started)
        output.mkdir(parents=True, exist_ok=True)
        # Only the trained adapter: TRL may hold a frozen copy of the starting one ("ref") beside it.
        trainer.model.save_pretrained(str(output), selected_adapters=["default"])
        tokenizer.save_pretrained(output)
        if not (output / "chat_template.jinja").exists():
            (output / "chat_template.jinja").write_text(tokenizer.chat_template)
        # vLLM's filesystem resolver matches an adapter to the base model by the id vLLM was
        # started with (--model): the registry entry's hf_id (its name when it has none).
        cfg_path = output / "adapter_config.json"
        cfg = json.loads(cfg_path.read_text())
        cfg["base_model_name_or_path"] = self.base_hf_id
        cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True))
        history = trainer.state.log_history
        (output / "training_log.json").write_text(json.dumps(history, indent=1))
        _plot_loss(history, output / "loss_curve.png", title=f"{self.spec.job_id} ({self.spec.method})")
        return Done(
            output=str(output), step=trainer.state.global_step, elapsed_s=time.monotonic() - self.started
        )

    # ------------------------------------------------------------------ cleanup

    def publish_compiled(self, outcome: Outcome | None) -> None:
        """Add the kernels this job compiled to the shared compile cache (rank 0; not on a stop,
        whose grace period is for the checkpoint)."""
        if self.compile_cache is not None and self.rank == 0 and not isinstance(outcome, Stopped):
            self.compile_cache.publish()

    #: How long a rank that finished waits for the others before it leaves the process group.
    LEAVE_TIMEOUT_S = 600.0

    def cleanup(self, outcome: Outcome | None) -> None:
        if isinstance(outcome, Done) and self.rank == 0:
            shutil.rmtree(self.out_dir, ignore_errors=True)
        if self.dist is not None:
            import torch.distributed as tdist

            if tdist.is_initialized():
                if isinstance(outcome, Done):
                    self._leave_together()
                tdist.destroy_process_group()

    def _leave_together(self) -> None:
        """Wait, bounded, until every rank has finished before any leaves the process group.

        The other ranks return Done as soon as training ends, while rank 0 still saves and uploads
        the adapter. One fresh-clone CI run (2026-12-07) saw rank 1 of a two-process CPU job
        (gloo) abort in teardown (``terminate called without an active exception``) after
        training and evaluation had finished, with rank 0 still at work; tearing down only once
        all ranks are done leaves no peer mid-work. Only after Done (every rank got here): after a
        failure or a stop the ranks need not agree, and the launcher ends the others when one
        exits with an error. A rank that does not come within :data:`LEAVE_TIMEOUT_S` is not
        waited for longer."""
        import datetime

        import torch.distributed as tdist

        try:
            work = tdist.barrier(async_op=True)
            if work is not None:
                work.wait(timeout=datetime.timedelta(seconds=self.LEAVE_TIMEOUT_S))
        except RuntimeError as exc:  # a peer gone or late: the outcome stands, leave anyway
            log.warning("rank %d: not every rank finished before teardown: %s", self.rank, exc)


def _rows(n: int) -> str:
    return f"{n} row" if n == 1 else f"{n} rows"


def run(job_dir: Path, stop: threading.Event, emit: Callable[[Record], None]) -> int:
    """Train the job in ``job_dir``; the last record emitted is its outcome. Returns the exit status."""
    recipe = Recipe(job_dir, stop, emit)
    outcome: Outcome | None = None
    try:
        outcome = recipe.setup() or recipe.train() or recipe.save()
    finally:
        recipe.publish_compiled(outcome)
        recipe.cleanup(outcome)
    emit(outcome)
    return exit_status(outcome)  # the exit statuses are protocol.py's: the chart's Job reads them


def _reporter(recipe: Recipe) -> Any:
    """The Trainer callback that streams logs and checkpoints to the service and honours a stop."""
    from transformers import TrainerCallback

    emit, spec = recipe.emit, recipe.spec
    last: dict[str, Any] = {"tokens": None, "time": None, "start_step": None}

    class Reporter(TrainerCallback):
        def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            emit(Plan(total_steps=state.max_steps, start_step=state.global_step))
            last.update(
                tokens=state.num_input_tokens_seen, time=time.monotonic(), start_step=state.global_step
            )

        def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            # After clipping, before the step: a non-finite gradient would make every weight NaN.
            if recipe.nonfinite.check(kw["model"], state.global_step + 1, kw.get("optimizer")):
                control.should_training_stop = True
                control.should_save = False

        def on_step_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            limit = spec.simulate_oom_from_rows
            if limit and state.global_step >= 1 and args.per_device_train_batch_size >= limit:
                import torch

                raise torch.OutOfMemoryError(
                    f"CUDA out of memory (simulated: {_rows(args.per_device_train_batch_size)} a pass, "
                    f"{limit} or more)"
                )

        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            if spec.step_delay_s:
                time.sleep(spec.step_delay_s)
            if recipe.should_stop():
                control.should_training_stop = True
                control.should_save = False

        def on_log(
            self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kw: Any
        ) -> None:
            logs = dict(logs or {})
            now = time.monotonic()
            tokens = state.num_input_tokens_seen
            tps = 0.0
            if last["time"] is not None and now > last["time"]:
                tps = (tokens - last["tokens"]) / (now - last["time"])
            if "loss" in logs or "train_loss" not in logs:
                last.update(tokens=tokens, time=now)
            done = state.global_step - (last["start_step"] or 0)
            eta = None
            if done > 0:
                eta = (now - recipe.started) / done * max(0, state.max_steps - state.global_step)
            extra = {
                k: float(v)
                for k, v in logs.items()
                if isinstance(v, int | float)
                and k not in {"loss", "learning_rate", "grad_norm", "eval_loss", "epoch"}
                and not math.isnan(float(v))
            }
            if recipe.nonfinite.skipped:
                extra["nonfinite_steps_skipped"] = float(recipe.nonfinite.skipped)
            emit(
                Log(
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
            )

        def on_save(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            recipe.on_save(state.global_step)

    return Reporter()


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
