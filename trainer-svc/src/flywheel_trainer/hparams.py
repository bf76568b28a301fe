"""Validation of a CreateFineTuneJob request (names, dataset, hyperparameters) and its defaults.

Plain functions over the protobuf messages; no torch import, so the service validates a request
in milliseconds. The resolved values are written back into the job's ``hyperparameters`` (so a
client sees what will run); the training process gets them as ``WorkerHyperparameters``.
"""

from __future__ import annotations

import json

from flywheel.trainer.v1 import trainer_pb2
from flywheel_common.errors import FailedPrecondition, InvalidArgument, NotFound
from flywheel_common.objectstore import ObjectStore
from flywheel_trainer import adapters, catalog
from flywheel_trainer.catalog import NAME_RE, BaseModelInfo
from flywheel_trainer.memory_plan import token_sized_rows
from flywheel_trainer.protocol import WorkerHyperparameters
from flywheel_trainer.settings import TrainerSettings

SCHEDULERS = {
    trainer_pb2.LR_SCHEDULER_UNSPECIFIED: "cosine",
    trainer_pb2.LR_SCHEDULER_COSINE: "cosine",
    trainer_pb2.LR_SCHEDULER_LINEAR: "linear",
    trainer_pb2.LR_SCHEDULER_CONSTANT: "constant_with_warmup",
}
F = "job.hyperparameters"
GRPO_LOSS_TYPES = {
    trainer_pb2.GRPO_LOSS_TYPE_UNSPECIFIED: "dapo",
    trainer_pb2.GRPO_LOSS_TYPE_DAPO: "dapo",
    trainer_pb2.GRPO_LOSS_TYPE_GRPO: "grpo",
    trainer_pb2.GRPO_LOSS_TYPE_BNPO: "bnpo",
    trainer_pb2.GRPO_LOSS_TYPE_DR_GRPO: "dr_grpo",
}
#: Default peak learning rates per method. GRPO's is 1e-5, above the 1e-6 common for full-model
#: RL: the update goes through a LoRA adapter (whose effective step is scaled by alpha / r) and
#: the trust region is enforced by the clipped ratio anyway; tests set their own.
DEFAULT_LR = {
    trainer_pb2.FINE_TUNE_METHOD_SFT: 2e-4,
    trainer_pb2.FINE_TUNE_METHOD_DPO: 5e-6,
    trainer_pb2.FINE_TUNE_METHOD_GRPO: 1e-5,
}
#: The dataset kind each method trains on.
DATASET_KIND_FOR = {
    trainer_pb2.FINE_TUNE_METHOD_SFT: "SFT",
    trainer_pb2.FINE_TUNE_METHOD_DPO: "PREFERENCE",
    trainer_pb2.FINE_TUNE_METHOD_GRPO: "RL",
}


def resolve(
    job: trainer_pb2.FineTuneJob, settings: TrainerSettings, base: BaseModelInfo, gpu: bool
) -> WorkerHyperparameters:
    """Fill the defaults into ``job.hyperparameters`` in place; return what the worker gets.

    Raises InvalidArgument naming the field for a bad value and FailedPrecondition for a request
    this trainer cannot run (NF4 without a GPU).
    """
    hp = job.hyperparameters
    sft = job.method == trainer_pb2.FINE_TUNE_METHOD_SFT
    lora = hp.lora
    if lora.rank < 0:
        raise InvalidArgument(f"{F}.lora.rank", f"must be positive, got {lora.rank}")
    lora.rank = lora.rank or 16
    if lora.rank > settings.max_lora_rank:
        raise InvalidArgument(
            f"{F}.lora.rank",
            f"rank {lora.rank} is over the serving limit max_lora_rank={settings.max_lora_rank} "
            "(FLYWHEEL_TRAINER_MAX_LORA_RANK, the model server's --max-lora-rank)",
        )
    if lora.alpha < 0:
        raise InvalidArgument(f"{F}.lora.alpha", f"must be positive, got {lora.alpha}")
    lora.alpha = lora.alpha or 32.0
    if not lora.HasField("dropout"):
        lora.dropout = 0.05
    if not 0.0 <= lora.dropout < 1.0:
        raise InvalidArgument(f"{F}.lora.dropout", f"must be in [0, 1), got {lora.dropout}")
    targets = list(lora.target_modules) or [
        m for m in base.default_target_modules if m in settings.serving_target_modules
    ]
    if not targets:
        raise FailedPrecondition(
            f"base model {base.name} has no projection module the model server can adapt "
            f"(it has {base.default_target_modules}, serving allows {settings.serving_target_modules})"
        )
    for module in targets:
        if module not in settings.serving_target_modules:
            raise InvalidArgument(
                f"{F}.lora.target_modules",
                f"{module!r} is not a module the model server can apply LoRA to "
                f"(FLYWHEEL_TRAINER_SERVING_TARGET_MODULES: {settings.serving_target_modules})",
            )
        if base.default_target_modules and module not in base.default_target_modules:
            raise InvalidArgument(
                f"{F}.lora.target_modules",
                f"{module!r} is not a projection of base model {base.name} (it has {base.default_target_modules})",
            )
    del lora.target_modules[:]
    lora.target_modules.extend(targets)

    quant = hp.quantization
    if quant.quantization == trainer_pb2.QUANTIZATION_UNSPECIFIED:
        quant.quantization = trainer_pb2.QUANTIZATION_NONE
    if quant.quantization == trainer_pb2.QUANTIZATION_NF4:
        if not quant.HasField("double_quantization"):
            quant.double_quantization = True
        if not gpu:
            raise FailedPrecondition(
                "job.hyperparameters.quantization: NF4 (QLoRA) needs a CUDA GPU and this trainer has none; "
                "use QUANTIZATION_NONE (plain LoRA) here or run the trainer on a GPU node"
            )
    if hp.fp8_base_matmuls:
        if not sft:
            # DPO compares the policy with a reference pass (adapters off, bf16 base) and GRPO with
            # the sampler's log-probs: an FP8 base would move the policy's log-probs by FP8's
            # rounding noise on its own, a bias in the very quantities those losses compare.
            raise InvalidArgument(
                f"{F}.fp8_base_matmuls",
                "FP8 base matmuls are for SFT jobs; DPO and GRPO compare the policy's log-probs with "
                "a bf16 reference or sampler, which FP8 rounding would shift",
            )
        if quant.quantization == trainer_pb2.QUANTIZATION_NF4:
            raise InvalidArgument(
                f"{F}.fp8_base_matmuls",
                "FP8 base matmuls apply to plain LoRA; with NF4 the base weights are already 4-bit "
                "(choose one of quantization NF4 and fp8_base_matmuls)",
            )
        if not gpu:
            raise FailedPrecondition(
                "job.hyperparameters.fp8_base_matmuls: FP8 matmuls need a CUDA GPU (compute capability "
                "8.9 or more) and this trainer has none; leave fp8_base_matmuls false here"
            )

    if hp.epochs < 0:
        raise InvalidArgument(f"{F}.epochs", f"must be positive, got {hp.epochs}")
    hp.epochs = hp.epochs or 1.0
    if hp.max_steps < 0:
        raise InvalidArgument(f"{F}.max_steps", f"must be >= 0, got {hp.max_steps}")
    if hp.learning_rate < 0:
        raise InvalidArgument(f"{F}.learning_rate", f"must be positive, got {hp.learning_rate}")
    hp.learning_rate = hp.learning_rate or DEFAULT_LR[job.method]
    if hp.scheduler not in SCHEDULERS:
        raise InvalidArgument(f"{F}.scheduler", f"unknown scheduler {hp.scheduler}")
    # A GRPO job is one policy update of an RL loop: a few optimizer steps on one iteration's
    # rollouts. Warm-up would spend its first step at learning rate 0 (the schedule starts there)
    # and a decay would shrink the rest, restarting each iteration; so GRPO defaults to a
    # constant rate without warm-up, and SFT/DPO keep cosine with 3% warm-up.
    grpo = job.method == trainer_pb2.FINE_TUNE_METHOD_GRPO
    if hp.scheduler == trainer_pb2.LR_SCHEDULER_UNSPECIFIED:
        hp.scheduler = trainer_pb2.LR_SCHEDULER_CONSTANT if grpo else trainer_pb2.LR_SCHEDULER_COSINE
    if not hp.HasField("warmup_ratio"):
        hp.warmup_ratio = 0.0 if grpo else 0.03
    if not 0.0 <= hp.warmup_ratio < 1.0:
        raise InvalidArgument(f"{F}.warmup_ratio", f"must be in [0, 1), got {hp.warmup_ratio}")
    for name in ("batch_size", "gradient_accumulation_steps", "max_seq_length", "checkpoint_every_steps"):
        if getattr(hp, name) < 0:
            raise InvalidArgument(f"{F}.{name}", f"must be >= 0, got {getattr(hp, name)}")
    hp.max_seq_length = hp.max_seq_length or 2048
    hp.batch_size = hp.batch_size or default_rows(job, settings, gpu)
    hp.gradient_accumulation_steps = (
        hp.gradient_accumulation_steps or settings.default_gradient_accumulation_steps
    )
    if base.max_position_embeddings and hp.max_seq_length > base.max_position_embeddings:
        raise InvalidArgument(
            f"{F}.max_seq_length",
            f"{hp.max_seq_length} is longer than base model {base.name}'s context of "
            f"{base.max_position_embeddings} tokens",
        )
    if not hp.HasField("seed"):
        hp.seed = 42
    hp.checkpoint_every_steps = hp.checkpoint_every_steps or settings.default_checkpoint_every_steps
    if hp.dpo_beta < 0:
        raise InvalidArgument(f"{F}.dpo_beta", f"must be positive, got {hp.dpo_beta}")
    if job.method == trainer_pb2.FINE_TUNE_METHOD_DPO:
        hp.dpo_beta = hp.dpo_beta or 0.1
    if not sft and hp.packing:
        raise InvalidArgument(
            f"{F}.packing", "packing is for SFT only; DPO pairs and RL samples are never packed"
        )
    if job.method == trainer_pb2.FINE_TUNE_METHOD_GRPO:
        _resolve_grpo(hp.grpo)
    elif hp.HasField("grpo"):
        raise InvalidArgument(f"{F}.grpo", "GRPO settings are for FINE_TUNE_METHOD_GRPO only")
    return worker_hparams(hp)


def default_rows(job: trainer_pb2.FineTuneJob, settings: TrainerSettings, gpu: bool) -> int:
    """Rows per step of a job that leaves ``batch_size`` at 0 (``max_seq_length`` resolved).

    On a GPU, an SFT step is sized by tokens: ``gpu_step_tokens // max_seq_length`` rows, rounded
    down to a multiple of ``job.gpus``. Measured on the benchmark's 1.5 B model (bench/RESULTS.md),
    4 rows a step reach 19% MFU and 8 or 16 reach 26-30%, so a default of 4 left most of a GPU
    idle; the recipe then splits the step into passes that fit the card (the memory model, then
    halving on out-of-memory), so a large step never fails for memory. DPO and GRPO keep
    ``default_batch_size``: a DPO row is two sequences the memory model was not fitted to, and a
    GRPO job's rows decide how many policy updates an RL iteration makes. CPUs keep it too (a
    step of 16 packed rows of Gemma 3 270M takes minutes there).
    """
    if not gpu or job.method != trainer_pb2.FINE_TUNE_METHOD_SFT or not settings.gpu_step_tokens:
        return settings.default_batch_size
    return token_sized_rows(settings.gpu_step_tokens, job.hyperparameters.max_seq_length, max(1, job.gpus))


def _resolve_grpo(grpo: trainer_pb2.GrpoConfig) -> None:
    if not grpo.HasField("epsilon"):
        grpo.epsilon = 0.2
    if not 0.0 < grpo.epsilon < 1.0:
        raise InvalidArgument(f"{F}.grpo.epsilon", f"must be in (0, 1), got {grpo.epsilon}")
    if not grpo.HasField("epsilon_high"):
        grpo.epsilon_high = grpo.epsilon
    if grpo.epsilon_high <= 0.0:
        raise InvalidArgument(f"{F}.grpo.epsilon_high", f"must be positive, got {grpo.epsilon_high}")
    if not grpo.HasField("kl_beta"):
        grpo.kl_beta = 0.0
    if grpo.kl_beta < 0.0:
        raise InvalidArgument(f"{F}.grpo.kl_beta", f"must be >= 0, got {grpo.kl_beta}")
    if grpo.loss_type not in GRPO_LOSS_TYPES:
        raise InvalidArgument(f"{F}.grpo.loss_type", f"unknown loss type {grpo.loss_type}")
    if grpo.loss_type == trainer_pb2.GRPO_LOSS_TYPE_UNSPECIFIED:
        grpo.loss_type = trainer_pb2.GRPO_LOSS_TYPE_DAPO
    if grpo.iterations < 0:
        raise InvalidArgument(f"{F}.grpo.iterations", f"must be >= 0, got {grpo.iterations}")
    grpo.iterations = grpo.iterations or 1


#: Data-parallel processes a job may ask for (one node's GPUs).
MAX_GPUS = 16


def check_gpus(job: trainer_pb2.FineTuneJob, settings: TrainerSettings, available: int | None) -> None:
    """Check ``job.gpus`` (after :func:`resolve`, which fills batch_size) and fill its default 1.

    ``available`` is how many GPUs the local backend's machine has (None: the Kubernetes backend,
    where the scheduler decides). With the ``cpu_data_parallel`` testing aid, any number of CPU
    processes is allowed on a machine without GPUs."""
    if job.gpus < 0 or job.gpus > MAX_GPUS:
        raise InvalidArgument("job.gpus", f"must be between 0 (one) and {MAX_GPUS}, got {job.gpus}")
    job.gpus = job.gpus or 1
    if job.gpus == 1:
        return
    rows = job.hyperparameters.batch_size
    if rows % job.gpus:
        raise InvalidArgument(
            "job.gpus",
            f"{job.gpus} GPUs cannot share a step of {rows} rows evenly (job.hyperparameters.batch_size): "
            f"use a batch_size that is a multiple of {job.gpus}",
        )
    if available is None or (available == 0 and settings.cpu_data_parallel):
        return
    if job.gpus > available:
        raise FailedPrecondition(
            f"job.gpus: the job asks for {job.gpus} GPUs and this trainer's machine has "
            f"{available or 'none'}; ask for at most {max(available, 1)}, or run the trainer with the "
            "Kubernetes backend, whose training pods can ask a node for more"
        )


def worker_hparams(hp: trainer_pb2.Hyperparameters) -> WorkerHyperparameters:
    """What the training process reads from ``spec.json``: a function of the resolved
    ``hyperparameters`` alone, so a job's stored message is all a resumed job needs."""
    return WorkerHyperparameters(
        lora_rank=hp.lora.rank,
        lora_alpha=hp.lora.alpha,
        lora_dropout=hp.lora.dropout,
        target_modules=list(hp.lora.target_modules),
        quantization="NF4" if hp.quantization.quantization == trainer_pb2.QUANTIZATION_NF4 else "NONE",
        double_quantization=hp.quantization.double_quantization,
        epochs=hp.epochs,
        max_steps=hp.max_steps,
        learning_rate=hp.learning_rate,
        scheduler=SCHEDULERS[hp.scheduler],
        warmup_ratio=hp.warmup_ratio,
        batch_size=hp.batch_size,
        gradient_accumulation_steps=hp.gradient_accumulation_steps,
        max_seq_length=hp.max_seq_length,
        packing=hp.packing,
        seed=hp.seed,
        checkpoint_every_steps=hp.checkpoint_every_steps,
        dpo_beta=hp.dpo_beta,
        grpo_epsilon=hp.grpo.epsilon if hp.grpo.HasField("epsilon") else 0.2,
        grpo_epsilon_high=hp.grpo.epsilon_high if hp.grpo.HasField("epsilon_high") else 0.2,
        grpo_kl_beta=hp.grpo.kl_beta,
        grpo_loss_type=GRPO_LOSS_TYPES.get(hp.grpo.loss_type, "dapo"),
        grpo_iterations=hp.grpo.iterations or 1,
        fp8_base_matmuls=hp.fp8_base_matmuls,
    )


def check_names(job: trainer_pb2.FineTuneJob) -> None:
    if not job.base_model:
        raise InvalidArgument("job.base_model", "required: a base model name (see ListBaseModels)")
    if not job.dataset_id:
        raise InvalidArgument("job.dataset_id", "required: the id of a dataset built by the dataset builder")
    if job.method not in DATASET_KIND_FOR:
        raise InvalidArgument(
            "job.method", "required: FINE_TUNE_METHOD_SFT, FINE_TUNE_METHOD_DPO or FINE_TUNE_METHOD_GRPO"
        )
    if not NAME_RE.match(job.adapter_name):
        raise InvalidArgument("job.adapter_name", f"{job.adapter_name!r} must match {NAME_RE.pattern}")
    if job.init_adapter and not adapters.ADAPTER_ID_RE.match(job.init_adapter):
        raise InvalidArgument(
            "job.init_adapter",
            f"{job.init_adapter!r} is not an adapter version: expected <name>/v<version>, e.g. coder/v3",
        )


def check_init_adapter(store: ObjectStore, job: trainer_pb2.FineTuneJob) -> trainer_pb2.Adapter | None:
    """The published version ``job.init_adapter`` names (None when empty): NOT_FOUND if it is not
    published, FAILED_PRECONDITION if it was trained on another base model (blocking)."""
    match = adapters.ADAPTER_ID_RE.match(job.init_adapter)
    if match is None:
        return None
    name, version = match.group(1), int(match.group(2))
    init = adapters.load(store, name, version)
    if init is None:
        known = sorted(adapters.versions(store, name))
        listing = ", ".join(f"v{v}" for v in known) if known else "none"
        raise NotFound(
            f"job.init_adapter: adapter {job.init_adapter} is not published (versions of {name}: {listing})"
        )
    if init.base_model != job.base_model:
        raise FailedPrecondition(
            f"job.init_adapter: adapter {job.init_adapter} was trained on base model {init.base_model!r}, "
            f"not on the job's base model {job.base_model!r}"
        )
    return init


def apply_init_lora(store: ObjectStore, job: trainer_pb2.FineTuneJob, init: trainer_pb2.Adapter) -> None:
    """The continued adapter's LoRA settings replace the request's (the weights have its shapes)."""
    config = adapters.lora_config(store, init)
    lora = job.hyperparameters.lora
    lora.rank = int(config["r"])
    lora.alpha = float(config.get("lora_alpha") or lora.rank)
    lora.dropout = float(config.get("lora_dropout") or 0.0)
    targets = config.get("target_modules") or []
    del lora.target_modules[:]
    lora.target_modules.extend(sorted(targets) if isinstance(targets, list) else [str(targets)])


def check_policy(
    info: catalog.DatasetInfo, job: trainer_pb2.FineTuneJob, init: trainer_pb2.Adapter | None
) -> None:
    """GRPO learns from rollouts of the policy it starts from: the RL dataset's behaviour policy must
    be exactly the init adapter (same version and content digest) or, with no init adapter, the base."""
    have_id, have_digest = catalog.rl_policy(info)
    want_id = job.init_adapter
    want_digest = init.content_digest if init is not None else ""
    if (have_id, have_digest) == (want_id, want_digest):
        return

    def show(adapter_id: str, digest: str) -> str:
        return f"adapter {adapter_id} (digest {digest or 'none'})" if adapter_id else "the base model"

    raise FailedPrecondition(
        f"job.dataset_id: dataset {info.dataset_id}'s episodes were sampled from {show(have_id, have_digest)} "
        f"but the job starts from {show(want_id, want_digest)}: GRPO needs rollouts of its starting policy "
        "(rebuild the dataset from that policy's episodes, or set job.init_adapter to the policy that sampled them)"
    )


def check_dataset(store: ObjectStore, job: trainer_pb2.FineTuneJob) -> catalog.DatasetInfo:
    """The dataset exists, suits the method, and its first rows have the right shape (blocking)."""
    try:
        info = catalog.dataset_info(store, job.dataset_id)
    except catalog.DatasetError as err:
        if err.missing:
            raise InvalidArgument("job.dataset_id", str(err)) from None
        raise FailedPrecondition(f"job.dataset_id: {err}") from None
    want = DATASET_KIND_FOR[job.method]
    method = trainer_pb2.FineTuneMethod.Name(job.method)
    if info.kind != want:
        raise FailedPrecondition(
            f"job.dataset_id: dataset {job.dataset_id} is a {info.kind} dataset but {method} needs "
            f"a {want} dataset"
        )
    rows = []
    with store.open(info.train_key) as stream:
        for n, line in enumerate(stream):
            if n >= 50:  # the shape check looks at the head only; the worker reads the rest
                break
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as err:
                    raise FailedPrecondition(
                        f"job.dataset_id: {info.train_key} line {n + 1} is not JSON: {err}"
                    ) from None
    try:
        catalog.check_rows(rows, info.kind, info.train_key)
    except catalog.DatasetError as err:
        raise FailedPrecondition(f"job.dataset_id: {err}") from None
    return info
