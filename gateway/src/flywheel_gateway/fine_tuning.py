"""OpenAI's files and fine-tuning API on our own dataset builder and trainer.

``/v1/files`` (upload, list, retrieve, delete, content) and ``/v1/fine_tuning/jobs`` (create, list,
retrieve, cancel, events, checkpoints) answer with OpenAI's objects, so the official ``openai``
client (``client.files.create``, ``client.fine_tuning.jobs.create`` …) works against the gateway,
and the job's ``fine_tuned_model`` (``ft/<name>-v<version>``) is callable at the same gateway.

Why not LiteLLM's routes of the same paths: LiteLLM's ``/v1/files`` and ``/v1/fine_tuning/jobs``
forward to a hosted provider's fine-tuning API (OpenAI, Azure, Vertex, set under its
``finetune_settings`` / ``files_settings``) and keep nothing themselves; they cannot train on our
trainer or store files where our services read them. Our layer answers these paths before
LiteLLM sees them (``app.GatewayApp``), for every model: there is no hosted fine-tuning behind
this gateway.

Where things live:

* a **file** is ``gateway/files/<file id>/content.jsonl`` plus ``gateway/files/<file id>.json``
  (the ``file`` object, written last: a file exists once it is there). An upload is checked line
  by line by dataset-svc (``ImportDataset`` with ``validate_only``) before it is kept: a bad line
  is a 400 naming it;
* a **job** is a trainer ``FineTuneJob`` (see ``openai_ft``); its files become one dataset of
  dataset-svc (``ImportDataset``) when the job is created, so a file that does not suit the
  method (a chat file for DPO) is a 400 naming the line, and no job is left behind;
* **events** and **checkpoints** are derived on each request from what the trainer keeps (the job,
  its checkpoints ``trainer/checkpoints/<job>/checkpoint-<step>/``, the published adapter's
  ``training_log.json``), so every replica answers the same.

A trainer job that SUCCEEDED is reported ``succeeded`` once the model server lists its adapter
(adapter sync loads it), so that ``fine_tuned_model`` answers as soon as a caller sees it; until
then it is ``running`` with the event "Adapter published …". After
``FLYWHEEL_GATEWAY_FINE_TUNING_READY_WAIT_S`` it is ``succeeded`` regardless (no adapter sync
running, or a load that failed: a call to the model then answers 404).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import secrets
import time
from typing import Any
from urllib.parse import parse_qsl

import aiohttp
import grpc
import orjson

from flywheel.common.v1 import common_pb2
from flywheel.dataset.v1 import dataset_pb2, dataset_pb2_grpc
from flywheel.trainer.v1 import trainer_pb2, trainer_pb2_grpc
from flywheel_common.objectstore import (
    ObjectNotFoundError,
    ObjectStore,
    ObjectStoreSettings,
    open_object_store,
)
from flywheel_gateway import openai_ft as oft
from flywheel_gateway.asgi import Receive, Scope, Send, openai_error, read_body, respond
from flywheel_gateway.channels import ServiceChannels
from flywheel_gateway.fast_path import FastPath
from flywheel_gateway.settings import GatewaySettings

log = logging.getLogger("flywheel.gateway.fine_tuning")

FILES_PREFIX = "gateway/files/"
CHECKPOINTS_PREFIX = "trainer/checkpoints/"
COMPLETE_MARKER = "_COMPLETE"  # flywheel_trainer.storeio.COMPLETE_MARKER: a finished upload
FILE_ID = re.compile(r"^file-[0-9a-f]{24}$")
JOB_ID = re.compile(r"^ftj-[0-9A-Za-z]{1,64}$")
ADAPTER_MODEL = re.compile(r"^([a-z0-9][a-z0-9._-]{0,62})-v([1-9][0-9]{0,8})$")
REQUEST_ID = re.compile(r"[^A-Za-z0-9_-]")
KIND_FOR_METHOD = {
    "supervised": dataset_pb2.DATASET_KIND_SFT,
    "dpo": dataset_pb2.DATASET_KIND_PREFERENCE,
    "grpo": dataset_pb2.DATASET_KIND_RL,
}
MAX_CREATE_BYTES = 1024 * 1024
#: The trainer's max_seq_length when a job leaves it at 0 (trainer.proto Hyperparameters).
DEFAULT_MAX_SEQ_LENGTH = 2048
GRPC_TIMEOUT_S = 30.0
IMPORT_TIMEOUT_S = 300.0
#: gRPC codes and the HTTP status and OpenAI error type they become.
GRPC_HTTP = {
    grpc.StatusCode.INVALID_ARGUMENT: (400, "invalid_request_error"),
    grpc.StatusCode.FAILED_PRECONDITION: (400, "invalid_request_error"),
    grpc.StatusCode.OUT_OF_RANGE: (400, "invalid_request_error"),
    grpc.StatusCode.NOT_FOUND: (404, "invalid_request_error"),
    grpc.StatusCode.ALREADY_EXISTS: (409, "invalid_request_error"),
    grpc.StatusCode.RESOURCE_EXHAUSTED: (429, "rate_limit_error"),
    grpc.StatusCode.UNAVAILABLE: (503, "api_error"),
    grpc.StatusCode.DEADLINE_EXCEEDED: (504, "api_error"),
}


def fine_tuning_path(path: str) -> str | None:
    """The path without ``/v1`` when it belongs to the files or fine-tuning API, else None."""
    bare = path[3:] if path.startswith("/v1/") else path
    if bare == "/files" or bare.startswith(("/files/", "/fine_tuning/")) or bare == "/fine_tuning":
        return bare
    return None


class ServiceError(Exception):
    """A dependency answered an error: the OpenAI error to send."""

    def __init__(
        self, status: int, message: str, kind: str, code: str | None = None, param: str | None = None
    ):
        super().__init__(message)
        self.status, self.message, self.kind, self.code, self.param = status, message, kind, code, param

    def body(self) -> bytes:
        return openai_error(self.status, self.message, self.kind, self.code, self.param)


def from_rpc(err: grpc.aio.AioRpcError, service: str, params: dict[str, str] | None = None,
             code: str | None = None) -> ServiceError:  # fmt: skip
    """An RPC error as the caller's error; ``params`` maps a request field named first in the
    message (``train_object_key: …``) to the OpenAI parameter it came from."""
    status, kind = GRPC_HTTP.get(err.code(), (500, "api_error"))
    message = err.details() or err.code().name
    param = None
    head, sep, rest = message.partition(": ")
    if sep and params and head in params:
        param, message = params[head], rest
    if err.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        message = f"{service} is unavailable: {message}"
        code = f"{service.replace('-', '_')}_unavailable"
    return ServiceError(status, message, kind, code if status < 500 or code else None, param)


class FineTuningAPI:
    """The ``/v1/files`` and ``/v1/fine_tuning`` routes (master key; see the module docstring)."""

    def __init__(
        self,
        settings: GatewaySettings,
        store: ObjectStore,
        fast: FastPath,
        channels: ServiceChannels | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.fast = fast
        self.prefix = settings.adapter_prefix
        self.channels = channels or ServiceChannels()  # the gateway's shared holder when it has one
        self._served: set[str] = set()  # adapters the model server was seen serving
        self._history: dict[str, list[dict[str, Any]]] = {}  # log history of published adapters
        self._tokens: dict[str, int] = {}  # TRAIN tokens per dataset

    @classmethod
    def from_environment(
        cls, settings: GatewaySettings, fast: FastPath, channels: ServiceChannels | None = None
    ) -> FineTuningAPI | None:
        from flywheel_gateway.aliases import object_store_configured

        if not settings.fine_tuning or not object_store_configured():
            log.info(
                "the files and fine-tuning API is off: no object store configured (FLYWHEEL_OBJECT_STORE_*)"
            )
            return None
        return cls(settings, open_object_store(ObjectStoreSettings()), fast, channels)

    async def close(self) -> None:
        await self.channels.close()

    def _channel(self, address: str) -> grpc.aio.Channel:
        return self.channels.get(address)

    @property
    def datasets(self) -> dataset_pb2_grpc.DatasetServiceStub:
        return dataset_pb2_grpc.DatasetServiceStub(self._channel(self.settings.dataset_address))

    @property
    def trainer(self) -> trainer_pb2_grpc.TrainerServiceStub:
        return trainer_pb2_grpc.TrainerServiceStub(self._channel(self.settings.trainer_address))

    # ------------------------------------------------------------------ routing

    async def __call__(self, scope: Scope, receive: Receive, send: Send, path: str) -> None:
        method = scope["method"]
        query = dict(parse_qsl(scope.get("query_string", b"").decode("latin-1")))
        parts = path.strip("/").split("/")
        try:
            if parts[0] == "files":
                await self._files(scope, receive, send, method, parts[1:], query)
            elif parts[:2] == ["fine_tuning", "jobs"]:
                await self._jobs(scope, receive, send, method, parts[2:], query)
            else:
                raise oft.RequestError(f"Invalid URL ({method} /v1{path})", code="unknown_url", status=404)
        except oft.RequestError as err:
            await respond(
                send,
                err.status,
                openai_error(err.status, err.message, "invalid_request_error", err.code, err.param),
            )
        except ServiceError as err:
            await respond(send, err.status, err.body())

    async def _files(self, scope: Scope, receive: Receive, send: Send, method: str, rest: list[str],
                     query: dict[str, str]) -> None:  # fmt: skip
        if not rest and method == "POST":
            await self.upload(scope, receive, send)
        elif not rest and method == "GET":
            await respond(send, 200, orjson.dumps(await self.list_files(query)))
        elif len(rest) == 1 and method == "GET":
            await respond(send, 200, orjson.dumps(await self.file_meta(rest[0])))
        elif len(rest) == 1 and method == "DELETE":
            await respond(send, 200, orjson.dumps(await self.delete_file(rest[0])))
        elif len(rest) == 2 and rest[1] == "content" and method == "GET":
            await self.file_meta(rest[0])
            data = await asyncio.to_thread(self.store.get_bytes, self._content_key(rest[0]))
            await respond(send, 200, data, b"application/jsonl")
        else:
            raise oft.RequestError(
                f"Invalid URL ({method} /v1/files/{'/'.join(rest)})", code="unknown_url", status=404
            )

    async def _jobs(self, scope: Scope, receive: Receive, send: Send, method: str, rest: list[str],
                    query: dict[str, str]) -> None:  # fmt: skip
        if not rest and method == "POST":
            raw = await read_body(receive, send, MAX_CREATE_BYTES, "request body")
            if raw is None:
                return
            try:
                body = orjson.loads(raw)
            except orjson.JSONDecodeError as err:
                raise oft.RequestError(f"request body is not valid JSON: {err}") from None
            key = dict(scope["headers"]).get(b"idempotency-key", b"").decode("latin-1")
            await respond(send, 200, orjson.dumps(await self.create_job(body, key)))
        elif not rest and method == "GET":
            await respond(send, 200, orjson.dumps(await self.list_jobs(query)))
        elif len(rest) == 1 and method == "GET":
            job = await self.get_job(rest[0])
            await respond(send, 200, orjson.dumps(await self.job_object(job, await self.status_of(job))))
        elif len(rest) == 2 and rest[1] == "cancel" and method == "POST":
            await respond(send, 200, orjson.dumps(await self.cancel_job(rest[0])))
        elif len(rest) == 2 and rest[1] == "events" and method == "GET":
            await respond(send, 200, orjson.dumps(await self.list_events(rest[0], query)))
        elif len(rest) == 2 and rest[1] == "checkpoints" and method == "GET":
            await respond(send, 200, orjson.dumps(await self.list_checkpoints(rest[0], query)))
        else:
            path = "/".join(rest)
            raise oft.RequestError(
                f"Invalid URL ({method} /v1/fine_tuning/jobs/{path})", code="unknown_url", status=404
            )

    # ------------------------------------------------------------------ files

    @staticmethod
    def _meta_key(file_id: str) -> str:
        return f"{FILES_PREFIX}{file_id}.json"

    @staticmethod
    def _content_key(file_id: str) -> str:
        return f"{FILES_PREFIX}{file_id}/content.jsonl"

    async def upload(self, scope: Scope, receive: Receive, send: Send) -> None:
        from starlette.requests import Request

        limit = self.settings.files_max_bytes
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > limit + 64 * 1024:
            raise oft.RequestError(f"file larger than {limit} bytes", "file", "file_too_large", 413)
        request = Request(scope, receive)
        try:
            form = await request.form(max_files=1, max_fields=8)
        except Exception as err:  # starlette's MultiPartException, a body that is not a form
            raise oft.RequestError(
                f"expected a multipart/form-data body with 'file' and 'purpose': {err}"
            ) from None
        try:
            upload, purpose = form.get("file"), form.get("purpose")
            if purpose is None:
                raise oft.RequestError(
                    "Missing required parameter: 'purpose'.", "purpose", "missing_required_parameter"
                )
            if purpose != "fine-tune":
                raise oft.RequestError(
                    f"purpose {purpose!r} is not supported here: this gateway keeps files for fine-tuning only "
                    "(purpose 'fine-tune')",
                    "purpose",
                )
            if upload is None or isinstance(upload, str):
                raise oft.RequestError(
                    "Missing required parameter: 'file'.", "file", "missing_required_parameter"
                )
            size = upload.size if upload.size is not None else 0
            if size > limit:
                raise oft.RequestError(f"file larger than {limit} bytes", "file", "file_too_large", 413)
            file_id = "file-" + secrets.token_hex(12)
            content_key = self._content_key(file_id)
            upload.file.seek(0)
            await asyncio.to_thread(
                self.store.put, content_key, upload.file, length=size, content_type="application/jsonl"
            )
            filename = upload.filename or "file.jsonl"
        finally:
            await form.close()
        try:
            await self._validate_file(file_id, content_key)
        except BaseException:
            await asyncio.to_thread(self.store.delete, content_key)
            raise
        meta = {
            "object": "file",
            "id": file_id,
            "bytes": size,
            "created_at": int(time.time()),
            "filename": filename,
            "purpose": "fine-tune",
            "status": "processed",
            "expires_at": None,
            "status_details": None,
        }
        await asyncio.to_thread(
            self.store.put, self._meta_key(file_id), orjson.dumps(meta), content_type="application/json"
        )
        await respond(send, 200, orjson.dumps(meta))

    async def _validate_file(self, file_id: str, key: str) -> None:
        request = dataset_pb2.ImportDatasetRequest(
            train_object_key=key, train_name=file_id, validate_only=True
        )
        try:
            await self.datasets.ImportDataset(request, timeout=IMPORT_TIMEOUT_S)
        except grpc.aio.AioRpcError as err:
            raise from_rpc(err, "dataset-svc", {"train_object_key": "file"}, "invalid_file") from None

    async def file_meta(self, file_id: str, param: str | None = None) -> dict[str, Any]:
        if FILE_ID.match(file_id):
            try:
                raw = await asyncio.to_thread(self.store.get_bytes, self._meta_key(file_id))
                meta: dict[str, Any] = orjson.loads(raw)
                return meta
            except ObjectNotFoundError:
                pass
        raise oft.RequestError(f"No such File object: {file_id}", param or "id", "file_not_found", 404)

    async def list_files(self, query: dict[str, str]) -> dict[str, Any]:
        purpose = query.get("purpose")
        limit = _limit(query, 10_000, 10_000)
        order = query.get("order", "desc")
        if order not in ("asc", "desc"):
            raise oft.RequestError("order must be 'asc' or 'desc'", "order")

        def load() -> list[dict[str, Any]]:
            found = []
            for info in self.store.list(FILES_PREFIX):
                rest = info.key[len(FILES_PREFIX) :]
                if "/" not in rest and rest.endswith(".json"):
                    found.append(json.loads(self.store.get_bytes(info.key)))
            return found

        files = [f for f in await asyncio.to_thread(load) if not purpose or f.get("purpose") == purpose]
        files.sort(key=lambda f: (f["created_at"], f["id"]), reverse=order == "desc")
        return oft.page(files, query.get("after"), limit)

    async def delete_file(self, file_id: str) -> dict[str, Any]:
        await self.file_meta(file_id)
        await asyncio.to_thread(self.store.delete, self._meta_key(file_id))  # first: the file is gone
        await asyncio.to_thread(self.store.delete, self._content_key(file_id))
        return {"object": "file", "id": file_id, "deleted": True}

    # ------------------------------------------------------------------ jobs

    async def create_job(self, body: Any, idempotency_key: str = "") -> dict[str, Any]:
        spec = oft.parse_create(body)
        base_model, init_adapter, adapter_name = await self._resolve_model(spec.model)
        if spec.suffix is not None:
            adapter_name = oft.adapter_name_from_suffix(spec.suffix)
        files = [(spec.training_file, "training_file")]
        if spec.validation_file:
            files.append((spec.validation_file, "validation_file"))
        for file_id, param in files:
            await self.file_meta(file_id, param)
        request = dataset_pb2.ImportDatasetRequest(
            train_object_key=self._content_key(spec.training_file),
            train_name=spec.training_file,
            validation_object_key=self._content_key(spec.validation_file) if spec.validation_file else "",
            validation_name=spec.validation_file or "",
            kind=KIND_FOR_METHOD[spec.method],
            target_base_model=base_model,
            labels={oft.L_TRAINING_FILE: spec.training_file},
        )
        try:
            dataset = (await self.datasets.ImportDataset(request, timeout=IMPORT_TIMEOUT_S)).dataset
        except grpc.aio.AioRpcError as err:
            params = {"train_object_key": "training_file", "validation_object_key": "validation_file"}
            code = (
                "invalid_validation_file"
                if (err.details() or "").startswith("validation")
                else "invalid_training_file"
            )
            raise from_rpc(err, "dataset-svc", params, code) from None
        job = trainer_pb2.FineTuneJob(
            base_model=base_model,
            dataset_id=dataset.id,
            method=oft.METHODS[spec.method],
            adapter_name=adapter_name,
            init_adapter=init_adapter,
        )
        # The trainer's default sequence length (2048) may exceed a small model's context, which
        # an OpenAI caller cannot set: cut it to the context.
        context = (await self._base_models()).get(base_model)
        if context is not None and 0 < context.max_position_embeddings < DEFAULT_MAX_SEQ_LENGTH:
            job.hyperparameters.max_seq_length = context.max_position_embeddings
        try:
            # The trainer's defaults first: the learning-rate multiplier scales its default rate.
            resolved = (
                await self.trainer.CreateFineTuneJob(
                    trainer_pb2.CreateFineTuneJobRequest(job=job, validate_only=True), timeout=GRPC_TIMEOUT_S
                )
            ).job
            base_lr = resolved.hyperparameters.learning_rate
            oft.apply_hyperparameters(job.hyperparameters, spec, base_lr)
            job.labels.update(oft.labels_for(spec, base_lr))
            request_id = REQUEST_ID.sub("-", idempotency_key)[:64]
            created = (
                await self.trainer.CreateFineTuneJob(
                    trainer_pb2.CreateFineTuneJobRequest(job=job, request_id=request_id),
                    timeout=GRPC_TIMEOUT_S,
                )
            ).job
        except grpc.aio.AioRpcError as err:
            fields = {
                "job.hyperparameters." + k: "hyperparameters"
                for k in ("epochs", "batch_size", "learning_rate")
            }
            raise from_rpc(
                err, "trainer-svc", {**fields, "job.adapter_name": "suffix", "job.base_model": "model"}
            ) from None
        log.info(
            "fine-tuning job %s created: %s on %s as %s", created.id, spec.method, base_model, adapter_name
        )
        return await self.job_object(created, await self.status_of(created))

    async def _base_models(self) -> dict[str, trainer_pb2.BaseModel]:
        try:
            listing = await self.trainer.ListBaseModels(
                trainer_pb2.ListBaseModelsRequest(page_size=1000), timeout=GRPC_TIMEOUT_S
            )
        except grpc.aio.AioRpcError as err:
            raise from_rpc(err, "trainer-svc") from None
        return {m.name: m for m in listing.base_models}

    async def _resolve_model(self, model: str) -> tuple[str, str, str]:
        """(base model, init adapter, default adapter name) for the job's ``model``; 404 if unknown."""
        bare = model[len(self.prefix) :] if model.startswith(self.prefix) else None
        if bare is not None:
            match = ADAPTER_MODEL.match(bare)
            if match:
                name, version = match.group(1), int(match.group(2))
                try:
                    adapter = (
                        await self.trainer.GetAdapter(
                            trainer_pb2.GetAdapterRequest(name=name, version=version), timeout=GRPC_TIMEOUT_S
                        )
                    ).adapter
                    return adapter.base_model, f"{name}/v{version}", name
                except grpc.aio.AioRpcError as err:
                    if err.code() != grpc.StatusCode.NOT_FOUND:
                        raise from_rpc(err, "trainer-svc") from None
            raise oft.RequestError(
                f"The model `{model}` does not exist: no published adapter of that name.",
                "model",
                "model_not_found",
                404,
            )
        registered = await self._base_models()
        if model in registered:
            return model, "", oft.default_adapter_name(model)
        # A Hugging Face id (what vLLM serves, e.g. google/gemma-3-270m) names the entry registered
        # under it, when exactly one is.
        same_id = sorted(name for name, m in registered.items() if m.hf_id == model)
        if len(same_id) > 1:
            raise oft.RequestError(
                f"The model `{model}` is the Hugging Face id of several base models "
                f"({', '.join(same_id)}): name one of them.",
                "model",
                "ambiguous_model",
                400,
            )
        if same_id:
            return same_id[0], "", oft.default_adapter_name(same_id[0])
        listed = [f"{n} ({m.hf_id})" if m.hf_id and m.hf_id != n else n for n, m in registered.items()]
        raise oft.RequestError(
            f"The model `{model}` does not exist or cannot be fine-tuned here. Base models: "
            f"{', '.join(listed) or 'none registered'}; or a fine-tuned model {self.prefix}<name>-v<n>.",
            "model",
            "model_not_found",
            404,
        )

    async def get_job(self, job_id: str) -> trainer_pb2.FineTuneJob:
        if JOB_ID.match(job_id):
            try:
                reply = await self.trainer.GetFineTuneJob(
                    trainer_pb2.GetFineTuneJobRequest(job_id=job_id), timeout=GRPC_TIMEOUT_S
                )
                return reply.job
            except grpc.aio.AioRpcError as err:
                if err.code() not in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT):
                    raise from_rpc(err, "trainer-svc") from None
        raise oft.RequestError(
            f"No such fine-tuning job: {job_id}", "fine_tuning_job_id", "fine_tuning_job_not_found", 404
        )

    async def list_jobs(self, query: dict[str, str]) -> dict[str, Any]:
        limit = _limit(query, 20, 1000)
        wanted = {
            k[len("metadata[") : -1]: v
            for k, v in query.items()
            if k.startswith("metadata[") and k.endswith("]")
        }
        jobs: list[trainer_pb2.FineTuneJob] = []
        token = ""
        try:
            while True:
                reply = await self.trainer.ListFineTuneJobs(
                    trainer_pb2.ListFineTuneJobsRequest(page_size=1000, page_token=token),
                    timeout=GRPC_TIMEOUT_S,
                )
                jobs.extend(reply.jobs)
                token = reply.next_page_token
                if not token:
                    break
        except grpc.aio.AioRpcError as err:
            raise from_rpc(err, "trainer-svc") from None
        if wanted:
            jobs = [j for j in jobs if all(j.labels.get(oft.L_METADATA + k) == v for k, v in wanted.items())]
        ids = [j.id for j in jobs]
        after = query.get("after")
        start = ids.index(after) + 1 if after in ids else 0
        if after and after not in ids:
            raise oft.RequestError(f"after: no fine-tuning job {after!r} in this list", "after")
        chunk = jobs[start : start + limit]
        data = [await self.job_object(j, await self.status_of(j)) for j in chunk]
        return {"object": "list", "data": data, "has_more": start + limit < len(jobs)}

    async def cancel_job(self, job_id: str) -> dict[str, Any]:
        job = await self.get_job(job_id)
        if job.state in oft.TERMINAL:
            done = {
                common_pb2.JOB_STATE_SUCCEEDED: "Job has already completed",
                common_pb2.JOB_STATE_FAILED: "Job has already failed",
                common_pb2.JOB_STATE_CANCELLED: "Job has already been cancelled",
            }[job.state]
            raise oft.RequestError(f"{done}: {job_id}", None, "job_not_cancellable", 400)
        try:
            reply = await self.trainer.CancelFineTuneJob(
                trainer_pb2.CancelFineTuneJobRequest(job_id=job_id), timeout=GRPC_TIMEOUT_S + 10
            )
        except grpc.aio.AioRpcError as err:
            raise from_rpc(err, "trainer-svc") from None
        job = reply.job
        # Cancel is best effort: a job still stopping is shown as cancelled, as OpenAI shows it.
        status = "cancelled" if job.state not in oft.TERMINAL else await self.status_of(job)
        return await self.job_object(job, status)

    async def list_events(self, job_id: str, query: dict[str, str]) -> dict[str, Any]:
        job = await self.get_job(job_id)
        status = await self.status_of(job)
        history = await self.history(job)
        items = oft.events(job, history, status=status, prefix=self.prefix, now=int(time.time()))
        page = oft.page(items, query.get("after"), _limit(query, 20, 1000))
        return {"object": "list", "data": page["data"], "has_more": page["has_more"]}

    async def list_checkpoints(self, job_id: str, query: dict[str, str]) -> dict[str, Any]:
        job = await self.get_job(job_id)
        status = await self.status_of(job)
        found = await asyncio.to_thread(self._checkpoints, job.id)
        items = []
        history = await self.history(job) if status == "succeeded" else []
        final_step = int(job.progress.step) if status == "succeeded" else None
        for step, created_at, state in found:
            if final_step is not None and step >= final_step:
                continue
            entry = _entry_at(state, step)
            items.append(oft.checkpoint(job, step, created_at, entry, f"{job.id}:ckpt-step-{step}"))
        if final_step is not None:
            model = oft.fine_tuned_model(job, self.prefix) or ""
            entry = _entry_at(history, final_step)
            items.append(oft.checkpoint(job, final_step, oft.seconds(job.end_time) or 0, entry, model))
        items.reverse()  # newest first
        return oft.page(items, query.get("after"), _limit(query, 10, 1000))

    # ------------------------------------------------------------------ job state

    async def status_of(self, job: trainer_pb2.FineTuneJob) -> str:
        """OpenAI's status; SUCCEEDED becomes ``succeeded`` once the model server serves the adapter."""
        if job.state != common_pb2.JOB_STATE_SUCCEEDED:
            return oft.STATUS.get(job.state, "running")
        name = f"{job.adapter.name}-v{job.adapter.version}"
        if name in self._served:
            return "succeeded"
        ended = oft.seconds(job.end_time) or 0
        if time.time() - ended > self.settings.fine_tuning_ready_wait_s:
            return "succeeded"
        try:
            session = await self.fast.session()
            async with session.get(
                self.fast.upstream + "/models", timeout=aiohttp.ClientTimeout(total=5)
            ) as reply:
                listing = await reply.json(content_type=None) if reply.status == 200 else {}
        except (aiohttp.ClientError, TimeoutError, ValueError) as err:
            log.warning("cannot list the model server's adapters: %s", err)
            listing = {}
        for model in listing.get("data", []) if isinstance(listing, dict) else []:
            if isinstance(model, dict) and isinstance(model.get("id"), str):
                self._served.add(model["id"])
        return "succeeded" if name in self._served else "running"

    async def job_object(self, job: trainer_pb2.FineTuneJob, status: str) -> dict[str, Any]:
        tokens = await self._trained_tokens(job) if status == "succeeded" else None
        return oft.job_object(
            job, status=status, prefix=self.prefix, trained_tokens=tokens, now=int(time.time())
        )

    async def _trained_tokens(self, job: trainer_pb2.FineTuneJob) -> int | None:
        """TRAIN tokens of the dataset times the epochs trained (the dataset's own count)."""
        if job.dataset_id not in self._tokens:
            try:
                raw = await asyncio.to_thread(
                    self.store.get_bytes, f"datasets/{job.dataset_id}/manifest.json"
                )
                stats = json.loads(raw).get("token_stats") or {}
                self._tokens[job.dataset_id] = int(stats.get("total_train_tokens") or 0)
            except (ObjectNotFoundError, ValueError):
                return None
        epochs = job.progress.epoch or job.hyperparameters.epochs or 1.0
        return round(self._tokens[job.dataset_id] * epochs)

    async def history(self, job: trainer_pb2.FineTuneJob) -> list[dict[str, Any]]:
        """The Trainer's log history: the published adapter's, else the newest checkpoint's."""
        if job.adapter.object_prefix:
            key = job.adapter.object_prefix + "training_log.json"
            if key not in self._history:
                try:
                    self._history[key] = json.loads(await asyncio.to_thread(self.store.get_bytes, key))
                except (ObjectNotFoundError, ValueError):
                    return []
            return self._history[key]
        found = await asyncio.to_thread(self._checkpoints, job.id)
        return found[-1][2] if found else []

    def _checkpoints(self, job_id: str) -> list[tuple[int, int, list[dict[str, Any]]]]:
        """(step, unix time, log history) of every complete checkpoint of the job, oldest first. Blocking."""
        prefix = f"{CHECKPOINTS_PREFIX}{job_id}/"
        found = []
        for info in self.store.list(prefix):
            match = re.match(r"checkpoint-(\d+)/" + re.escape(COMPLETE_MARKER) + "$", info.key[len(prefix) :])
            if not match:
                continue
            step = int(match.group(1))
            try:
                state = json.loads(self.store.get_bytes(f"{prefix}checkpoint-{step}/trainer_state.json"))
                history = state.get("log_history") or []
            except (ObjectNotFoundError, ValueError):  # pruned meanwhile, or no state file
                history = []
            found.append((step, int(info.last_modified.timestamp()), history))
        return sorted(found, key=lambda f: f[0])


def _entry_at(history: list[dict[str, Any]], step: int) -> dict[str, Any] | None:
    """The training log entry of ``step`` (with an evaluation at that step merged in)."""
    entry: dict[str, Any] = {}
    for item in history:
        if int(item.get("step", -1)) == step and ("loss" in item or "eval_loss" in item):
            entry.update({k: v for k, v in item.items() if k in ("loss", "eval_loss", "mean_token_accuracy")})
    return entry or None


def _limit(query: dict[str, str], default: int, most: int) -> int:
    raw = query.get("limit")
    if raw is None:
        return default
    if not raw.isdigit() or not 1 <= int(raw) <= most:
        raise oft.RequestError(f"limit must be an integer between 1 and {most}", "limit")
    return int(raw)
