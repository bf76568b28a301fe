"""The gRPC surface of the trainer.

Thin transport: the servicer maps protobuf messages to :class:`~flywheel_trainer.jobs.JobManager`
(jobs, adapters) and :mod:`flywheel_trainer.catalog` (base models) and back.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp

from flywheel.trainer.v1 import trainer_pb2, trainer_pb2_grpc
from flywheel_common.errors import InvalidArgument, NotFound
from flywheel_common.runtime import Dependencies
from flywheel_common.server import GrpcApp, ServiceBinding, fill_unimplemented
from flywheel_trainer import catalog
from flywheel_trainer.jobs import JobManager, page_bounds
from flywheel_trainer.settings import TrainerSettings

NAME = "trainer-svc"
DESCRIPTOR = trainer_pb2.DESCRIPTOR.services_by_name["TrainerService"]


class TrainerService(trainer_pb2_grpc.TrainerServiceServicer):
    """``flywheel.trainer.v1.TrainerService``."""

    def __init__(self, settings: TrainerSettings, deps: Dependencies) -> None:
        self.settings = settings
        self.deps = deps
        self._manager: JobManager | None = None

    @property
    def manager(self) -> JobManager:
        assert self._manager is not None, "the job manager starts with the service"
        return self._manager

    async def start(self) -> None:
        self._manager = JobManager(self.settings, self.deps.store, self.deps.bus)
        await self._manager.start()

    async def stop(self) -> None:
        if self._manager is not None:
            await self._manager.stop()

    async def CreateFineTuneJob(self, request: Any, context: Any) -> trainer_pb2.CreateFineTuneJobResponse:
        job = await self.manager.create(request.job, request.request_id, request.validate_only)
        return trainer_pb2.CreateFineTuneJobResponse(job=job)

    async def GetFineTuneJob(self, request: Any, context: Any) -> trainer_pb2.GetFineTuneJobResponse:
        return trainer_pb2.GetFineTuneJobResponse(job=self.manager.get(request.job_id))

    async def ListFineTuneJobs(self, request: Any, context: Any) -> trainer_pb2.ListFineTuneJobsResponse:
        return self.manager.list(request)

    async def CancelFineTuneJob(self, request: Any, context: Any) -> trainer_pb2.CancelFineTuneJobResponse:
        return trainer_pb2.CancelFineTuneJobResponse(job=await self.manager.cancel(request.job_id))

    async def WatchFineTuneJob(
        self, request: Any, context: Any
    ) -> AsyncIterator[trainer_pb2.WatchFineTuneJobResponse]:
        async for item in self.manager.watch(request.job_id):
            yield item

    async def ListAdapters(self, request: Any, context: Any) -> trainer_pb2.ListAdaptersResponse:
        fp = hashlib.sha256(f"{request.name}|{request.base_model}".encode()).hexdigest()[:12]
        offset, size = page_bounds(request.page_size, request.page_token, fp)
        adapters = [
            a
            for a in await asyncio.to_thread(self.manager.load_adapters)
            if (not request.name or a.name == request.name)
            and (not request.base_model or a.base_model == request.base_model)
        ]
        reply = trainer_pb2.ListAdaptersResponse(adapters=adapters[offset : offset + size])
        if offset + size < len(adapters):
            reply.next_page_token = f"{offset + size}:{fp}"
        return reply

    async def GetAdapter(self, request: Any, context: Any) -> trainer_pb2.GetAdapterResponse:
        if not request.name:
            raise InvalidArgument("name", "required: the adapter name")
        if request.version < 0:
            raise InvalidArgument("version", f"must be >= 0, got {request.version}")
        versions = [a for a in await asyncio.to_thread(self.manager.load_adapters) if a.name == request.name]
        if request.version:
            versions = [a for a in versions if a.version == request.version]
        if not versions:
            what = f"{request.name}/v{request.version}" if request.version else request.name
            raise NotFound(f"no published adapter {what}")
        return trainer_pb2.GetAdapterResponse(adapter=max(versions, key=lambda a: a.version))

    async def ListBaseModels(self, request: Any, context: Any) -> trainer_pb2.ListBaseModelsResponse:
        offset, size = page_bounds(request.page_size, request.page_token, "base-models")
        models = await asyncio.to_thread(catalog.list_base_models, self.deps.store)
        reply = trainer_pb2.ListBaseModelsResponse()
        for info in models[offset : offset + size]:
            model = reply.base_models.add(
                name=info.name,
                description=info.description,
                source=info.prefix,
                architecture=info.architecture,
                parameter_count=info.parameter_count,
                max_position_embeddings=info.max_position_embeddings,
                default_chat_template=info.default_chat_template,
                default_target_modules=info.default_target_modules,
            )
            if info.create_time:
                ts = Timestamp()
                ts.FromJsonString(info.create_time.replace("+00:00", "Z"))
                model.create_time.CopyFrom(ts)
        if offset + size < len(models):
            reply.next_page_token = f"{offset + size}:base-models"
        return reply


fill_unimplemented(TrainerService, DESCRIPTOR, "issue #7")


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
