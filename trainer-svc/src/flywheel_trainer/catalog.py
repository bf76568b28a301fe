"""What the trainer reads from the object store: base models and datasets.

Base models live under ``base-models/<name>/`` in Hugging Face format (config.json, safetensors
weights, tokenizer files with a chat template) plus ``flywheel-base-model.json``, the manifest
written by :func:`register_base_model`. Datasets are written by the dataset builder under
``datasets/<dataset_id>/``: ``manifest.json`` names the kind and the split files (see README).
Both are plain JSON so that no torch import is needed to validate a request.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flywheel_common.objectstore import ObjectNotFoundError, ObjectStore
from flywheel_trainer.storeio import download_dir, is_complete, upload_dir

BASE_MODELS_PREFIX = "base-models/"
BASE_MODEL_MANIFEST = "flywheel-base-model.json"
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
DATASET_ID_RE = re.compile(r"^ds-[0-9a-z][0-9a-z_-]{0,62}$")

#: Flywheel's default chat template, for base models that ship none (e.g. the Gemma 3 270M base
#: GGUF). Plain role headers that any tokenizer can encode, an end-of-turn marker, and the
#: ``{% generation %}`` markers TRL needs to put the loss on assistant turns only.
DEFAULT_CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{- '<|' + message['role'] + '|>\\n' -}}"
    "{%- if message['role'] == 'assistant' -%}"
    "{% generation %}{{- message['content'] + '<|end|>\\n' -}}{% endgeneration %}"
    "{%- else -%}"
    "{{- message['content'] + '<|end|>\\n' -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|assistant|>\\n' -}}{%- endif -%}"
)

#: Module names that are attention or MLP projections in the common decoder architectures
#: (Llama, Qwen2, Mistral, Gemma, Phi-3 …). The default LoRA targets are the ones a model has.
PROJECTION_MODULES = (
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "qkv_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
    "gate_up_proj",
)

DATASET_KINDS = {"SFT": "SFT", "DATASET_KIND_SFT": "SFT", "PREFERENCE": "PREFERENCE"}
DATASET_KINDS["DATASET_KIND_PREFERENCE"] = "PREFERENCE"
DATASET_KINDS["DPO"] = "PREFERENCE"
DATASET_KINDS["RL"] = DATASET_KINDS["DATASET_KIND_RL"] = "RL"


def template_sha256(template: str) -> str:
    return hashlib.sha256(template.encode("utf-8")).hexdigest()


@dataclass
class BaseModelInfo:
    """The manifest of one base model (``base-models/<name>/flywheel-base-model.json``)."""

    name: str
    description: str = ""
    architecture: str = ""
    parameter_count: int = 0
    max_position_embeddings: int = 0
    default_chat_template: bool = False
    default_target_modules: list[str] = field(default_factory=list)
    create_time: str = ""
    #: Hugging Face id the serving engine is started with (vLLM ``--model``); what adapters record
    #: as ``base_model_name_or_path``. Manifests written before it existed read as ``name``.
    hf_id: str = ""
    #: ``sha256:<hex>`` over the registered files (:func:`flywheel_trainer.registry.folder_digest`);
    #: empty for manifests written before it existed.
    content_digest: str = ""
    #: Where the files came from: ``{"kind": "prefix"|"folder"|"gguf_key"|"gguf_path",
    #: "location": …, "sha256": … (GGUF only)}``; empty for older manifests.
    source: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.hf_id:
            self.hf_id = self.name

    @property
    def prefix(self) -> str:
        return f"{BASE_MODELS_PREFIX}{self.name}/"

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> BaseModelInfo:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)


def base_model_info(store: ObjectStore, name: str) -> BaseModelInfo | None:
    try:
        raw = store.get_bytes(f"{BASE_MODELS_PREFIX}{name}/{BASE_MODEL_MANIFEST}")
    except ObjectNotFoundError:
        return None
    return BaseModelInfo.from_json(json.loads(raw))


def list_base_models(store: ObjectStore) -> list[BaseModelInfo]:
    """Every registered base model; an entry still being uploaded (no ``_COMPLETE`` yet) is not one."""
    found = []
    for info in store.list(BASE_MODELS_PREFIX):
        if info.key.endswith("/" + BASE_MODEL_MANIFEST) and info.key.count("/") == 2:
            if not is_complete(store, info.key.rsplit("/", 1)[0] + "/"):
                continue
            found.append(BaseModelInfo.from_json(json.loads(store.get_bytes(info.key))))
    return sorted(found, key=lambda m: m.name)


def describe_local_model(
    folder: Path, name: str, description: str, *, template_dir: Path | None = None
) -> BaseModelInfo:
    """Read config.json and the tokenizer config of a Hugging Face folder into a manifest.

    A tokenizer without a chat template gets :data:`DEFAULT_CHAT_TEMPLATE` written as
    ``chat_template.jinja`` into ``template_dir`` (default: the folder itself; the registry passes
    a side folder, the source may be read-only), so every consumer of the model sees the same template.
    """
    config = json.loads((folder / "config.json").read_text())
    tok_path = folder / "tokenizer_config.json"
    tok = json.loads(tok_path.read_text()) if tok_path.exists() else {}
    jinja = folder / "chat_template.jinja"
    has_template = bool(tok.get("chat_template")) or jinja.exists()
    if not has_template:
        ((template_dir or folder) / jinja.name).write_text(DEFAULT_CHAT_TEMPLATE)
    text_config = config.get("text_config", config)
    params = _count_parameters(folder)
    modules = _linear_module_names(folder)
    return BaseModelInfo(
        name=name,
        description=description,
        architecture=(config.get("architectures") or [""])[0],
        parameter_count=params,
        max_position_embeddings=int(text_config.get("max_position_embeddings") or 0),
        default_chat_template=not has_template,
        default_target_modules=[m for m in PROJECTION_MODULES if m in modules],
        create_time=dt.datetime.now(dt.UTC).isoformat(),
    )


def _safetensors_headers(folder: Path) -> dict[str, Any]:
    headers: dict[str, Any] = {}
    for path in folder.glob("*.safetensors"):
        with path.open("rb") as f:
            size = int.from_bytes(f.read(8), "little")
            headers.update(json.loads(f.read(size)))
    headers.pop("__metadata__", None)
    return headers


def _count_parameters(folder: Path) -> int:
    total = 0
    for meta in _safetensors_headers(folder).values():
        count = 1
        for dim in meta["shape"]:
            count *= dim
        total += count
    return total


def _linear_module_names(folder: Path) -> set[str]:
    names = set()
    for key in _safetensors_headers(folder):
        parts = key.split(".")
        if len(parts) >= 2 and parts[-1] == "weight":
            names.add(parts[-2])
    return names


def register_base_model(
    store: ObjectStore, folder: Path, name: str, description: str = "", hf_id: str = ""
) -> BaseModelInfo:
    """Upload a Hugging Face folder as base model ``name`` (replacing an older upload of that name).

    The unchecked path of the command-line importer and the tests; the RPC goes through
    :func:`flywheel_trainer.registry.register` (validation, idempotency, crash-safe replacement).
    """
    if not NAME_RE.match(name):
        raise ValueError(f"base model name {name!r} must match {NAME_RE.pattern}")
    from flywheel_trainer.registry import files_digest, folder_files  # registry imports this module

    info = describe_local_model(folder, name, description)
    info.hf_id = hf_id or name
    # The digest RegisterBaseModel compares: the same files registered again through it are the same.
    info.content_digest = files_digest(folder_files(folder))
    (folder / BASE_MODEL_MANIFEST).write_text(json.dumps(info.to_json(), indent=2))
    upload_dir(store, folder, info.prefix, overwrite=True)
    return info


def fetch_base_model(store: ObjectStore, name: str, cache_dir: Path) -> Path:
    """A local copy of base model ``name`` (downloaded once per upload, keyed on the manifest)."""
    prefix = f"{BASE_MODELS_PREFIX}{name}/"
    manifest = store.get_bytes(prefix + BASE_MODEL_MANIFEST)
    digest = hashlib.sha256(manifest).hexdigest()[:16]
    local = cache_dir / f"{name}-{digest}"
    if (local / BASE_MODEL_MANIFEST).exists():
        return local
    if not is_complete(store, prefix):
        raise FileNotFoundError(f"base model {name} is still being uploaded (no {prefix}_COMPLETE)")
    return download_dir(store, prefix, local)


# ------------------------------------------------------------------------------------------- datasets


@dataclass
class DatasetInfo:
    """``datasets/<id>/manifest.json``, as far as the trainer needs it."""

    dataset_id: str
    kind: str  # "SFT", "PREFERENCE" or "RL"
    train_key: str
    validation_key: str | None
    raw: dict[str, Any]


class DatasetError(Exception):
    """The dataset is missing or malformed; ``field`` says which part of the request it concerns."""

    def __init__(self, message: str, *, missing: bool = False) -> None:
        super().__init__(message)
        self.missing = missing


def dataset_info(store: ObjectStore, dataset_id: str) -> DatasetInfo:
    prefix = f"datasets/{dataset_id}/"
    try:
        raw = json.loads(store.get_bytes(prefix + "manifest.json"))
    except ObjectNotFoundError:
        raise DatasetError(
            f"no dataset {dataset_id!r} in the object store ({prefix}manifest.json does not exist)",
            missing=True,
        ) from None
    except json.JSONDecodeError as err:
        raise DatasetError(f"{prefix}manifest.json is not valid JSON: {err}") from None
    kind = DATASET_KINDS.get(str(raw.get("kind", "")).upper())
    if kind is None:
        raise DatasetError(f"{prefix}manifest.json: kind {raw.get('kind')!r} is not SFT, PREFERENCE or RL")
    files = raw.get("files") or {}
    train_key = prefix + files.get("train", "train.jsonl")
    if not store.exists(train_key):
        raise DatasetError(f"dataset {dataset_id} has no training split ({train_key} does not exist)")
    val_name = files.get("validation")
    if val_name is None and store.exists(prefix + "validation.jsonl"):
        val_name = "validation.jsonl"
    return DatasetInfo(dataset_id, kind, train_key, prefix + val_name if val_name else None, raw)


def read_jsonl(store: ObjectStore, key: str) -> list[dict[str, Any]]:
    rows = []
    for n, line in enumerate(store.get_bytes(key).decode("utf-8").splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise DatasetError(f"{key} line {n} is not JSON: {err}") from None
    return rows


def check_rows(rows: list[dict[str, Any]], kind: str, key: str) -> None:
    """Check the shape of the rows: chat ``messages`` for SFT, prompt/chosen/rejected for PREFERENCE,
    token ids, behaviour log-probs and an advantage for RL (``grpo_groups``)."""
    if not rows:
        raise DatasetError(f"{key} has no examples")
    for n, row in enumerate(rows, 1):
        if kind == "RL":
            check_rl_row(row, f"{key} line {n}")
        elif kind == "SFT":
            msgs = row.get("messages")
            if not isinstance(msgs, list) or not msgs:
                raise DatasetError(f"{key} line {n}: an SFT example needs a non-empty 'messages' list")
            if not any(isinstance(m, dict) and m.get("role") == "assistant" for m in msgs):
                raise DatasetError(f"{key} line {n}: no assistant message to learn from")
        else:
            for part in ("prompt", "chosen", "rejected"):
                if part not in row:
                    raise DatasetError(f"{key} line {n}: a preference example needs '{part}'")


def check_rl_row(row: dict[str, Any], where: str) -> None:
    """One record of OUTPUT_FORMAT_GRPO_TOKENS: the sampled ids, their log-probs and the advantage."""
    for part in ("prompt_token_ids", "completion_token_ids"):
        ids = row.get(part)
        if not isinstance(ids, list) or not ids or not all(isinstance(i, int) and i >= 0 for i in ids):
            raise DatasetError(f"{where}: an RL sample needs '{part}', a non-empty list of token ids")
    logprobs = row.get("behaviour_logprobs")
    if not isinstance(logprobs, list) or not all(isinstance(v, int | float) for v in logprobs):
        raise DatasetError(f"{where}: an RL sample needs 'behaviour_logprobs', a list of numbers")
    if len(logprobs) != len(row["completion_token_ids"]):
        raise DatasetError(
            f"{where}: {len(logprobs)} behaviour_logprobs for {len(row['completion_token_ids'])} "
            "completion tokens (one log-prob per completion token is needed)"
        )
    if not isinstance(row.get("advantage"), int | float):
        raise DatasetError(f"{where}: an RL sample needs a numeric 'advantage'")


def rl_policy(info: DatasetInfo) -> tuple[str, str]:
    """(adapter id, content digest) of the policy an RL dataset's episodes came from; ("", "") for
    the base model. Reads ``rl_stats.policy`` of the manifest (the builder writes proto field names)."""
    stats = info.raw.get("rl_stats") or info.raw.get("rlStats") or {}
    policy = stats.get("policy") or {}
    return str(policy.get("adapter_id") or policy.get("adapterId") or ""), str(policy.get("digest") or "")
