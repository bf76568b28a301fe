"""Published adapters in the object store: ``adapters/<name>/v<version>/``.

A version is the PEFT files, the tokenizer and chat template, ``manifest.json`` (the ``Adapter``
message, lineage, metrics, serving limits, content digest), ``loss_curve.png`` and
``training_log.json``, with the completion marker written last: a version without it is not
published. Content is never rewritten: a version that is complete stays as it is.

The content digest (``flywheel_common.adapter_digest``: SHA-256 over the weight and config files
in a fixed order) is computed from the files being uploaded and goes into the manifest, the
``Adapter`` message and the ``adapter.published`` event, so that adapter sync and the model server
can prove which weights serve the version.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

from google.protobuf import json_format

from flywheel.common.v1 import common_pb2
from flywheel.trainer.v1 import trainer_pb2
from flywheel_common.adapter_digest import folder_digest
from flywheel_common.jobs import now
from flywheel_common.objectstore import ObjectStore
from flywheel_trainer import catalog
from flywheel_trainer.storeio import COMPLETE_MARKER, is_complete, upload_dir

ADAPTERS_PREFIX = "adapters/"
#: An adapter version as a job names it (``FineTuneJob.init_adapter``): ``<name>/v<version>``.
ADAPTER_ID_RE = re.compile(r"^([a-z0-9][a-z0-9._-]{0,62})/v([1-9][0-9]{0,8})$")


def version_prefix(name: str, version: int) -> str:
    return f"{ADAPTERS_PREFIX}{name}/v{version}/"


def versions(store: ObjectStore, name: str) -> set[int]:
    """Every version of ``name`` that has an object, complete or not."""
    pattern = re.compile(rf"{re.escape(ADAPTERS_PREFIX)}{re.escape(name)}/v(\d+)/")
    found = set()
    for info in store.list(f"{ADAPTERS_PREFIX}{name}/"):
        match = pattern.match(info.key)
        if match:
            found.add(int(match.group(1)))
    return found


def load(store: ObjectStore, name: str, version: int) -> trainer_pb2.Adapter | None:
    """One complete adapter version from its manifest; None if it is not published (blocking)."""
    prefix = version_prefix(name, version)
    if not is_complete(store, prefix):
        return None
    data = json.loads(store.get_bytes(prefix + "manifest.json"))
    adapter = json_format.ParseDict(data["adapter"], trainer_pb2.Adapter(), ignore_unknown_fields=True)
    if not adapter.content_digest:  # a manifest of a version published before digests were in the message
        adapter.content_digest = (data.get("digest") or {}).get("value", "")
    return adapter


def lora_config(store: ObjectStore, adapter: trainer_pb2.Adapter) -> dict[str, Any]:
    """The PEFT ``adapter_config.json`` of a published version (blocking)."""
    config: dict[str, Any] = json.loads(store.get_bytes(adapter.object_prefix + "adapter_config.json"))
    return config


def publish(
    store: ObjectStore, job: trainer_pb2.FineTuneJob, output: Path, version: int
) -> trainer_pb2.Adapter:
    """Write the trained adapter in ``output`` as ``version`` of the job's adapter name.

    Blocking (object-store I/O). A version that is already complete (published before a restart)
    is not written again, and its stored digest is the one returned.
    """
    prefix = version_prefix(job.adapter_name, version)
    digest = folder_digest(output)
    template_path = output / "chat_template.jinja"
    template = template_path.read_text() if template_path.exists() else ""
    base = catalog.base_model_info(store, job.base_model)
    adapter = trainer_pb2.Adapter(
        name=job.adapter_name,
        version=version,
        base_model=job.base_model,
        dataset_id=job.dataset_id,
        job_id=job.id,
        method=job.method,
        object_prefix=prefix,
        chat_template_sha256=catalog.template_sha256(template),
        default_chat_template=template == catalog.DEFAULT_CHAT_TEMPLATE,
        loop_id=job.loop_id,
        content_digest=digest.digest,
        init_adapter=job.init_adapter,
    )
    adapter.hyperparameters.CopyFrom(job.hyperparameters)
    adapter.labels.update(job.labels)
    adapter.create_time.CopyFrom(now())
    if job.HasField("latest_metrics"):
        adapter.final_metrics.CopyFrom(job.latest_metrics)
    history = json.loads((output / "training_log.json").read_text())
    evals = [h["eval_loss"] for h in history if "eval_loss" in h]
    if evals:
        adapter.final_metrics.eval_loss = float(evals[-1])
    adapter.loss_curve.CopyFrom(_ref(output / "loss_curve.png", prefix + "loss_curve.png"))
    adapter.manifest.key = prefix + "manifest.json"
    manifest = {
        "adapter": json_format.MessageToDict(adapter),
        "adapter_id": f"{job.adapter_name}/v{version}",
        "digest": digest.to_json(),
        "lineage": {
            "base_model": base.to_json() if base else {"name": job.base_model},
            "dataset_id": job.dataset_id,
            "job_id": job.id,
            "method": trainer_pb2.FineTuneMethod.Name(job.method),
            "hyperparameters": json_format.MessageToDict(job.hyperparameters),
            "resume_count": job.resume_count,
            "device": job.device,
            "init_adapter": _init_lineage(store, job.init_adapter),
        },
        "metrics": {"final": json_format.MessageToDict(adapter.final_metrics), "history": history},
        "serving": {
            "format": "peft-lora",
            # What adapter_config.json records: the id vLLM serves the base model under.
            "base_model_name_or_path": base.hf_id if base else job.base_model,
            "base_model": job.base_model,
            "lora_rank": job.hyperparameters.lora.rank,
            "target_modules": list(job.hyperparameters.lora.target_modules),
        },
    }
    (output / "manifest.json").write_text(json.dumps(manifest, indent=2))
    if not is_complete(store, prefix):
        upload_dir(store, output, prefix, overwrite=True)
    else:  # published before a restart: what the store holds is what was announced
        stored = json.loads(store.get_bytes(prefix + "manifest.json")).get("digest") or {}
        adapter.content_digest = stored.get("value", "")
    return adapter


def load_all(store: ObjectStore) -> list[trainer_pb2.Adapter]:
    """Every complete adapter version, newest first (blocking)."""
    adapters = []
    for info in store.list(ADAPTERS_PREFIX):
        if not info.key.endswith("/" + COMPLETE_MARKER) or info.key.count("/") != 3:
            continue
        manifest_key = info.key[: -len(COMPLETE_MARKER)] + "manifest.json"
        data = json.loads(store.get_bytes(manifest_key))
        adapter = json_format.ParseDict(data["adapter"], trainer_pb2.Adapter(), ignore_unknown_fields=True)
        stat = store.stat(manifest_key)
        adapter.manifest.CopyFrom(
            common_pb2.ObjectRef(key=manifest_key, size_bytes=stat.size, sha256=stat.sha256 or "")
        )
        adapters.append(adapter)
    adapters.sort(key=lambda a: (a.create_time.seconds, a.create_time.nanos, a.name, a.version), reverse=True)
    return adapters


def _init_lineage(store: ObjectStore, adapter_id: str) -> dict[str, str] | None:
    """``{"adapter_id", "digest"}`` of the version a job continued, or None for a fresh adapter."""
    match = ADAPTER_ID_RE.match(adapter_id)
    if not match:
        return None
    init = load(store, match.group(1), int(match.group(2)))
    return {"adapter_id": adapter_id, "digest": init.content_digest if init else ""}


def _ref(path: Path, key: str) -> common_pb2.ObjectRef:
    data = path.read_bytes()
    return common_pb2.ObjectRef(key=key, size_bytes=len(data), sha256=hashlib.sha256(data).hexdigest())
