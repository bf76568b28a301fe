"""The gRPC surface of the trainer.

Thin transport: the servicer maps protobuf messages to :class:`~flywheel_trainer.jobs.JobManager`
(jobs), :mod:`flywheel_trainer.adapters` (published adapters), :mod:`flywheel_trainer.catalog`
(base models) and :mod:`flywheel_trainer.registry` (registering one) and back.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp

from flywheel.trainer.v1 import trainer_pb2, trainer_pb2_grpc
from flywheel_common.errors import InvalidArgument, NotFound
from flywheel_common.objectstore import InvalidKeyError
from flywheel_common.paging import offset_page
from flywheel_common.runtime import Dependencies
from flywheel_common.server import GrpcApp, ServiceBinding
from flywheel_trainer import adapters, catalog, registry
from flywheel_trainer.jobs import JobManager
from flywheel_trainer.settings import TrainerSettings

NAME = "trainer-svc"
DESCRIPTOR = trainer_pb2.DESCRIPTOR.services_by_name["TrainerService"]


class TrainerService(trainer_pb2_grpc.TrainerServiceServicer):
    """``flywheel.trainer.v1.TrainerService``."""

    def __init__(self, settings: TrainerSettings, deps: Dependencies) -> None:
        self.settings = settings
        self.deps = deps
        self.manager = JobManager(settings, lambda: deps.store, lambda: deps.bus)
        self._register_locks: dict[str, asyncio.Lock] = {}

    async def start(self) -> None:
        await self.manager.start()

    async def stop(self) -> None:
        await self.manager.stop()

    async def CreateFineTuneJob(self, request: Any, context: Any) -> trainer_pb2.CreateFineTuneJobResponse:
        job = await self.manager.create(request.job, request.request_id, request.validate_only)
        return trainer_pb2.CreateFineTuneJobResponse(job=job)

    async def GetFineTuneJob(self, request: Any, context: Any) -> trainer_pb2.GetFineTuneJobResponse:
        return trainer_pb2.GetFineTuneJobResponse(job=self.manager.get(request.job_id))

    async def ListFineTuneJobs(self, request: Any, context: Any) -> trainer_pb2.ListFineTuneJobsResponse:
        jobs, token = self.manager.page(request)
        return trainer_pb2.ListFineTuneJobsResponse(jobs=jobs, next_page_token=token)

    async def CancelFineTuneJob(self, request: Any, context: Any) -> trainer_pb2.CancelFineTuneJobResponse:
        return trainer_pb2.CancelFineTuneJobResponse(job=await self.manager.cancel(request.job_id))

    async def WatchFineTuneJob(
        self, request: Any, context: Any
    ) -> AsyncIterator[trainer_pb2.WatchFineTuneJobResponse]:
        async for item in self.manager.watch(request.job_id):
            yield item

    async def ListAdapters(self, request: Any, context: Any) -> trainer_pb2.ListAdaptersResponse:
        found = [
            a
            for a in await asyncio.to_thread(adapters.load_all, self.deps.store)
            if (not request.name or a.name == request.name)
            and (not request.base_model or a.base_model == request.base_model)
        ]
        chunk, token = offset_page(found, request.page_size, request.page_token)
        return trainer_pb2.ListAdaptersResponse(adapters=chunk, next_page_token=token)

    async def GetAdapter(self, request: Any, context: Any) -> trainer_pb2.GetAdapterResponse:
        if not request.name:
            raise InvalidArgument("name", "required: the adapter name")
        if request.version < 0:
            raise InvalidArgument("version", f"must be >= 0, got {request.version}")
        versions = [
            a for a in await asyncio.to_thread(adapters.load_all, self.deps.store) if a.name == request.name
        ]
        if request.version:
            versions = [a for a in versions if a.version == request.version]
        if not versions:
            what = f"{request.name}/v{request.version}" if request.version else request.name
            raise NotFound(f"no published adapter {what}")
        return trainer_pb2.GetAdapterResponse(adapter=max(versions, key=lambda a: a.version))

    async def ListBaseModels(self, request: Any, context: Any) -> trainer_pb2.ListBaseModelsResponse:
        models = await asyncio.to_thread(catalog.list_base_models, self.deps.store)
        chunk, token = offset_page(models, request.page_size, request.page_token)
        return trainer_pb2.ListBaseModelsResponse(
            base_models=[_base_model(info) for info in chunk], next_page_token=token
        )

    async def RegisterBaseModel(self, request: Any, context: Any) -> trainer_pb2.RegisterBaseModelResponse:
        hf_id = registry.check_names(request.name, request.hf_id)
        source = registry.pick_source(
            prefix=request.source_prefix,
            folder=request.source_folder,
            gguf_key=request.source_gguf_key,
            gguf_path=request.source_gguf_path,
        )
        registry.check_local(source, self.settings.model_roots)
        lock = self._register_locks.setdefault(request.name, asyncio.Lock())
        async with lock:  # one registration of a name at a time (this service is one replica)
            try:
                info, created = await asyncio.to_thread(
                    registry.register,
                    self.deps.store,
                    source,
                    request.name,
                    hf_id,
                    request.description,
                    self.settings.state_dir / "registry-work",
                )
            except InvalidKeyError as err:
                raise InvalidArgument(source.field, str(err)) from None
        return trainer_pb2.RegisterBaseModelResponse(base_model=_base_model(info), created=created)


def _base_model(info: catalog.BaseModelInfo) -> trainer_pb2.BaseModel:
    model = trainer_pb2.BaseModel(
        name=info.name,
        description=info.description,
        source=info.prefix,
        architecture=info.architecture,
        parameter_count=info.parameter_count,
        max_position_embeddings=info.max_position_embeddings,
        default_chat_template=info.default_chat_template,
        default_target_modules=info.default_target_modules,
        hf_id=info.hf_id,
        content_digest=info.content_digest,
    )
    if info.create_time:
        ts = Timestamp()
        ts.FromJsonString(info.create_time.replace("+00:00", "Z"))
        model.create_time.CopyFrom(ts)
    return model


def build_app(settings: TrainerSettings) -> GrpcApp:
    """The service's gRPC app, with the shared resources it needs opened at start-up."""
    deps = Dependencies(settings, NAME, events=True, objects=True)
    servicer = TrainerService(settings, deps)
    app = GrpcApp(
        NAME,
        settings,
        [ServiceBinding(servicer, trainer_pb2_grpc.add_TrainerServiceServicer_to_server, DESCRIPTOR)],
    )
    deps.attach(app)
    # After deps.attach: started once the store and bus are open, stopped before they close.
    app.on_startup.append(servicer.start)
    app.on_shutdown.append(servicer.stop)
    return app
