"""The gRPC surface of the agent orchestrator.

Thin transport: the servicer maps protobuf messages to the domain code (suites.py, runs.py,
evaluations.py, loops.py) and back.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc

from flywheel.orchestrator.v1 import orchestrator_pb2 as opb
from flywheel.orchestrator.v1 import orchestrator_pb2_grpc
from flywheel_common.errors import InvalidArgument, NotFound
from flywheel_common.paging import offset_page
from flywheel_common.runtime import Dependencies
from flywheel_common.server import GrpcApp, ServiceBinding
from flywheel_orchestrator.evaluations import EvaluationManager
from flywheel_orchestrator.loops import LoopManager
from flywheel_orchestrator.model import ModelClient
from flywheel_orchestrator.runs import RunManager
from flywheel_orchestrator.sandbox import SandboxClient
from flywheel_orchestrator.settings import OrchestratorSettings
from flywheel_orchestrator.suites import SuiteCatalog

NAME = "orchestrator"
DESCRIPTOR = opb.DESCRIPTOR.services_by_name["OrchestratorService"]


class Orchestrator:
    """Everything the servicer needs, opened at start-up and closed at shutdown."""

    def __init__(self, settings: OrchestratorSettings, deps: Dependencies) -> None:
        self.settings = settings
        self.deps = deps
        self.catalog = SuiteCatalog(settings.suite_dirs)
        self.models = ModelClient(
            settings.base_url,
            settings.gateway_api_key.get_secret_value(),
            max_retries=settings.model_max_retries,
            timeout_s=settings.model_timeout_s,
            concurrency=settings.model_concurrency,
        )
        self.sandbox = SandboxClient(settings.sandbox_address, call_timeout_s=settings.sandbox_timeout_s)
        self.runs = RunManager(
            settings, lambda: deps.store, self._bus, self.catalog, self.models, self.sandbox
        )
        self.evaluations = EvaluationManager(lambda: deps.store, self._bus, self.runs)
        self.loops = LoopManager(
            settings, lambda: deps.store, self._bus, self.runs, self.evaluations, self.models
        )

    def _bus(self):
        return self.deps.bus if self.deps.want_events else None

    async def start(self) -> None:
        self.catalog.store = self.deps.store
        self.catalog.reload()
        await self.runs.start()
        await self.evaluations.start()
        await self.loops.start()

    async def stop(self) -> None:
        await self.loops.stop()
        await self.evaluations.stop()
        await self.runs.stop()
        await self.sandbox.close()
        await self.models.close()


class OrchestratorService(orchestrator_pb2_grpc.OrchestratorServiceServicer):
    """``flywheel.orchestrator.v1.OrchestratorService``."""

    def __init__(self, core: Orchestrator) -> None:
        self.core = core

    # ---------------------------------------------------------------------------- suites

    async def ListSuites(
        self, request: opb.ListSuitesRequest, context: grpc.aio.ServicerContext
    ) -> opb.ListSuitesResponse:
        suites = [self.core.catalog.suites[n].to_proto() for n in sorted(self.core.catalog.suites)]
        chunk, token = offset_page(suites, request.page_size, request.page_token)
        return opb.ListSuitesResponse(suites=chunk, next_page_token=token)

    async def GetSuite(
        self, request: opb.GetSuiteRequest, context: grpc.aio.ServicerContext
    ) -> opb.GetSuiteResponse:
        if not request.suite:
            raise InvalidArgument("suite", "is required")
        suite = self.core.catalog.get(request.suite)
        if suite is None:
            known = ", ".join(sorted(self.core.catalog.suites)) or "none"
            raise NotFound(f"suite {request.suite!r} does not exist (known: {known})")
        return opb.GetSuiteResponse(suite=suite.to_proto())

    # ---------------------------------------------------------------------------- runs

    async def CreateRun(
        self, request: opb.CreateRunRequest, context: grpc.aio.ServicerContext
    ) -> opb.CreateRunResponse:
        if not request.HasField("run"):
            raise InvalidArgument("run", "is required")
        return opb.CreateRunResponse(run=await self.core.runs.create(request.run, request.request_id))

    async def GetRun(
        self, request: opb.GetRunRequest, context: grpc.aio.ServicerContext
    ) -> opb.GetRunResponse:
        if not request.run_id:
            raise InvalidArgument("run_id", "is required")
        return opb.GetRunResponse(run=self.core.runs.get(request.run_id))

    async def ListRuns(
        self, request: opb.ListRunsRequest, context: grpc.aio.ServicerContext
    ) -> opb.ListRunsResponse:
        chunk, token = self.core.runs.page(request)
        return opb.ListRunsResponse(runs=chunk, next_page_token=token)

    async def CancelRun(
        self, request: opb.CancelRunRequest, context: grpc.aio.ServicerContext
    ) -> opb.CancelRunResponse:
        if not request.run_id:
            raise InvalidArgument("run_id", "is required")
        return opb.CancelRunResponse(run=await self.core.runs.cancel(request.run_id))

    async def WatchRun(
        self, request: opb.WatchRunRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[opb.WatchRunResponse]:
        if not request.run_id:
            raise InvalidArgument("run_id", "is required")
        async for item in self.core.runs.watch(request.run_id):
            yield item

    # ---------------------------------------------------------------------------- evaluations

    async def CreateEvaluation(
        self, request: opb.CreateEvaluationRequest, context: grpc.aio.ServicerContext
    ) -> opb.CreateEvaluationResponse:
        if not request.HasField("evaluation"):
            raise InvalidArgument("evaluation", "is required")
        e = await self.core.evaluations.create(request.evaluation, request.request_id)
        return opb.CreateEvaluationResponse(evaluation=e)

    async def GetEvaluation(
        self, request: opb.GetEvaluationRequest, context: grpc.aio.ServicerContext
    ) -> opb.GetEvaluationResponse:
        if not request.evaluation_id:
            raise InvalidArgument("evaluation_id", "is required")
        return opb.GetEvaluationResponse(evaluation=self.core.evaluations.get(request.evaluation_id))

    async def ListEvaluations(
        self, request: opb.ListEvaluationsRequest, context: grpc.aio.ServicerContext
    ) -> opb.ListEvaluationsResponse:
        chunk, token = self.core.evaluations.page(request)
        return opb.ListEvaluationsResponse(evaluations=chunk, next_page_token=token)

    async def CancelEvaluation(
        self, request: opb.CancelEvaluationRequest, context: grpc.aio.ServicerContext
    ) -> opb.CancelEvaluationResponse:
        if not request.evaluation_id:
            raise InvalidArgument("evaluation_id", "is required")
        return opb.CancelEvaluationResponse(
            evaluation=await self.core.evaluations.cancel(request.evaluation_id)
        )

    async def WatchEvaluation(
        self, request: opb.WatchEvaluationRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[opb.WatchEvaluationResponse]:
        if not request.evaluation_id:
            raise InvalidArgument("evaluation_id", "is required")
        async for item in self.core.evaluations.watch(request.evaluation_id):
            yield item

    # ---------------------------------------------------------------------------- loops

    async def CreateLoop(
        self, request: opb.CreateLoopRequest, context: grpc.aio.ServicerContext
    ) -> opb.CreateLoopResponse:
        if not request.HasField("loop"):
            raise InvalidArgument("loop", "is required")
        return opb.CreateLoopResponse(loop=await self.core.loops.create(request.loop, request.request_id))

    async def GetLoop(
        self, request: opb.GetLoopRequest, context: grpc.aio.ServicerContext
    ) -> opb.GetLoopResponse:
        if not request.loop_id:
            raise InvalidArgument("loop_id", "is required")
        return opb.GetLoopResponse(loop=self.core.loops.get(request.loop_id))

    async def ListLoops(
        self, request: opb.ListLoopsRequest, context: grpc.aio.ServicerContext
    ) -> opb.ListLoopsResponse:
        chunk, token = self.core.loops.page(request)
        return opb.ListLoopsResponse(loops=chunk, next_page_token=token)

    async def CancelLoop(
        self, request: opb.CancelLoopRequest, context: grpc.aio.ServicerContext
    ) -> opb.CancelLoopResponse:
        if not request.loop_id:
            raise InvalidArgument("loop_id", "is required")
        return opb.CancelLoopResponse(loop=await self.core.loops.cancel(request.loop_id))

    async def WatchLoop(
        self, request: opb.WatchLoopRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[opb.WatchLoopResponse]:
        if not request.loop_id:
            raise InvalidArgument("loop_id", "is required")
        async for item in self.core.loops.watch(request.loop_id):
            yield item


def build_app(settings: OrchestratorSettings) -> GrpcApp:
    """The service's gRPC app, with the shared resources it needs opened at start-up."""
    deps = Dependencies(settings, NAME, events=True, objects=True)
    core = Orchestrator(settings, deps)
    servicer = OrchestratorService(core)
    app = GrpcApp(
        NAME,
        settings,
        [
            ServiceBinding(
                servicer, orchestrator_pb2_grpc.add_OrchestratorServiceServicer_to_server, DESCRIPTOR
            )
        ],
    )
    deps.attach(app)
    app.on_startup.append(core.start)
    app.on_shutdown.append(core.stop)  # hooks run in reverse: this one before the deps close
    # GrpcApp (flywheel_common.server) has no slot for it: bench/bench_orchestrator.py reads the
    # managers' per-run timings through app.core.
    app.core = core  # type: ignore[attr-defined]  # an extra attribute for the benchmark, see above
    return app
