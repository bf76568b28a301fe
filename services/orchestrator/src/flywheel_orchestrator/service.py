"""The gRPC surface of the agent orchestrator.

Thin transport: the servicer maps protobuf messages to the domain code (suites.py, runs.py,
evaluations.py, loops.py) and back.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc

from flywheel.orchestrator.v1 import alias_pb2 as apb
from flywheel.orchestrator.v1 import orchestrator_pb2 as opb
from flywheel.orchestrator.v1 import orchestrator_pb2_grpc, suite_pb2
from flywheel_common.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound, shown
from flywheel_common.paging import offset_page
from flywheel_common.runtime import Dependencies
from flywheel_common.server import GrpcApp, ServiceBinding
from flywheel_orchestrator import skills as skill_docs
from flywheel_orchestrator.aliases import AliasManager
from flywheel_orchestrator.evaluations import EvaluationManager
from flywheel_orchestrator.loops import LoopManager
from flywheel_orchestrator.model import ModelClient
from flywheel_orchestrator.runs import RunManager
from flywheel_orchestrator.sandbox import RunLimits, SandboxClient
from flywheel_orchestrator.settings import OrchestratorSettings
from flywheel_orchestrator.skillopt import SkillOptManager
from flywheel_orchestrator.suite_check import MAX_FILES, check_suite, manifest_for
from flywheel_orchestrator.suites import NAME_RE, SuiteCatalog, write_object_store

NAME = "orchestrator"
#: Problems named in the message of a failed ImportSuite (all of them come with validate_only).
PROBLEMS_IN_MESSAGE = 5
DESCRIPTOR = opb.DESCRIPTOR.services_by_name["OrchestratorService"]


class Orchestrator:
    """Everything the servicer needs, opened at start-up and closed at shutdown."""

    def __init__(self, settings: OrchestratorSettings, deps: Dependencies) -> None:
        self.settings = settings
        self.deps = deps
        self.catalog = SuiteCatalog(settings.suite_dirs)
        self._suites_lock = asyncio.Lock()
        self.models = ModelClient(
            settings.base_url,
            settings.gateway_api_key.get_secret_value(),
            max_retries=settings.model_max_retries,
            timeout_s=settings.model_timeout_s,
            concurrency=settings.model_concurrency,
            identity_ttl_s=settings.model_identity_ttl_s,
        )
        self.sandbox = SandboxClient(
            settings.sandbox_address,
            call_timeout_s=settings.sandbox_timeout_s,
            limits=RunLimits(settings.test_wall_time_s, settings.test_cpu_time_s, settings.test_memory_mb),
        )
        self.runs = RunManager(
            settings, lambda: deps.store, self._bus, self.catalog, self.models, self.sandbox
        )
        self.evaluations = EvaluationManager(lambda: deps.store, self._bus, self.runs)
        self.aliases = AliasManager(
            lambda: deps.store, self._bus, self.models, canary_check_s=settings.alias_canary_check_s
        )
        self.runs.alias_skill = self.aliases.served_skill  # runs of an alias play its skill too
        self.skillopts = SkillOptManager(lambda: deps.store, self._bus, self.runs, self.models)
        self.loops = LoopManager(
            settings,
            lambda: deps.store,
            self._bus,
            self.runs,
            self.evaluations,
            self.models,
            self.aliases,
            self.skillopts,
        )

    def _bus(self):
        return self.deps.bus if self.deps.want_events else None

    async def refresh_suites(self, *, force: bool = False) -> None:
        """Load the suites again if a listing changed (``force``: in any case), off the event loop."""
        async with self._suites_lock:
            await asyncio.to_thread(self.catalog.reload if force else self.catalog.refresh)

    async def start(self) -> None:
        self.catalog.store = self.deps.store
        self.catalog.reload()
        await self.runs.start()
        await self.evaluations.start()
        await self.aliases.start()
        await self.skillopts.start()  # before the loops: a joint loop resumes waiting on one
        await self.loops.start()

    async def stop(self) -> None:
        await self.skillopts.stop()
        await self.loops.stop()
        await self.aliases.stop()
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
        catalog = self.core.catalog
        await self.core.refresh_suites()
        listed = [(n, catalog.suites[n].to_proto()) for n in catalog.suites]
        listed += [(f.name, f.to_proto()) for f in catalog.failures.values()]
        suites = [s for _, s in sorted(listed, key=lambda pair: (pair[0], pair[1].source))]
        chunk, token = offset_page(suites, request.page_size, request.page_token)
        return opb.ListSuitesResponse(suites=chunk, next_page_token=token)

    async def GetSuite(
        self, request: opb.GetSuiteRequest, context: grpc.aio.ServicerContext
    ) -> opb.GetSuiteResponse:
        if not request.suite:
            raise InvalidArgument("suite", "is required")
        await self.core.refresh_suites()
        suite = self.core.catalog.get(request.suite)
        if suite is None:
            failure = self.core.catalog.failure(request.suite)
            if failure is not None:
                raise FailedPrecondition(
                    f"suite {shown(request.suite)} failed to load from {failure.source}: {failure.error}"
                )
            known = ", ".join(sorted(self.core.catalog.suites)) or "none"
            raise NotFound(f"suite {shown(request.suite)} does not exist (known: {known})")
        return opb.GetSuiteResponse(suite=suite.to_proto())

    async def ImportSuite(
        self, request: opb.ImportSuiteRequest, context: grpc.aio.ServicerContext
    ) -> opb.ImportSuiteResponse:
        if not request.files:
            raise InvalidArgument("files", "is empty: send every file of the suite (see SUITES.md)")
        if len(request.files) > MAX_FILES:
            raise InvalidArgument("files", f"{len(request.files)} files; a suite may hold {MAX_FILES}")
        files: dict[str, bytes] = {}
        for i, f in enumerate(request.files):
            if f.path in files:
                raise InvalidArgument(f"files[{i}].path", f"{shown(f.path)} appears twice")
            files[f.path] = f.content
        name = request.name or _manifest_name(files)
        if not name:
            raise InvalidArgument("name", "is required when the files hold no suite.toml naming the suite")
        if not NAME_RE.match(name):
            raise InvalidArgument("name", f"{shown(name)} must match {NAME_RE.pattern}")
        manifest = manifest_for(name, files)
        if manifest is not None:
            files["suite.toml"] = manifest
        result = await asyncio.to_thread(check_suite, files, name=name, source=f"suites/{name}/")
        reply = opb.ImportSuiteResponse(
            problems=[
                suite_pb2.SuiteProblem(path=p.path, message=p.message, warning=p.warning)
                for p in result.problems
            ]
        )
        if request.validate_only:
            if result.suite is not None:
                reply.suite.CopyFrom(result.suite.to_proto())
            return reply
        errors = result.errors
        if errors or result.suite is None:
            first = "; ".join(str(p) for p in errors[:PROBLEMS_IN_MESSAGE])
            more = (
                f" (and {len(errors) - PROBLEMS_IN_MESSAGE} more)"
                if len(errors) > PROBLEMS_IN_MESSAGE
                else ""
            )
            raise InvalidArgument(
                "files",
                f"suite {name!r} has {len(errors)} problem{'s' if len(errors) != 1 else ''}, nothing was "
                f"imported: {first}{more}; ImportSuite with validate_only lists them all",
            )
        catalog = self.core.catalog
        await self.core.refresh_suites()
        existing = catalog.get(name)
        if existing is not None and not request.replace:
            raise AlreadyExists(
                f"suite {name!r} already exists (from {existing.source}); set replace to replace it"
            )
        store = self.core.deps.store
        await asyncio.to_thread(write_object_store, store, name, files)
        await self.core.refresh_suites(force=True)
        loaded = catalog.get(name)
        if loaded is None or loaded.source != f"suites/{name}/":  # another source won: cannot happen today
            failure = catalog.failure(name)
            raise FailedPrecondition(
                f"suite {name!r} was stored but did not load: {failure.error if failure else 'unknown reason'}"
            )
        reply.suite.CopyFrom(loaded.to_proto())
        return reply

    async def ReloadSuites(
        self, request: opb.ReloadSuitesRequest, context: grpc.aio.ServicerContext
    ) -> opb.ReloadSuitesResponse:
        await self.core.refresh_suites(force=True)
        catalog = self.core.catalog
        failed = sorted(catalog.failures.values(), key=lambda f: (f.name, f.source))
        return opb.ReloadSuitesResponse(
            suite_count=len(catalog.suites), failed=[f.to_proto() for f in failed]
        )

    # ---------------------------------------------------------------------------- runs

    async def CreateRun(
        self, request: opb.CreateRunRequest, context: grpc.aio.ServicerContext
    ) -> opb.CreateRunResponse:
        if not request.HasField("run"):
            raise InvalidArgument("run", "is required")
        await self.core.refresh_suites()  # a suite another replica imported is seen here too
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
        await self.core.refresh_suites()
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
        await self.core.refresh_suites()
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

    # ---------------------------------------------------------------------------- aliases

    async def SetAlias(
        self, request: apb.SetAliasRequest, context: grpc.aio.ServicerContext
    ) -> apb.SetAliasResponse:
        return apb.SetAliasResponse(alias=await self.core.aliases.set(request))

    async def GetAlias(
        self, request: apb.GetAliasRequest, context: grpc.aio.ServicerContext
    ) -> apb.GetAliasResponse:
        return apb.GetAliasResponse(alias=await self.core.aliases.get(request.name))

    async def ListAliases(
        self, request: apb.ListAliasesRequest, context: grpc.aio.ServicerContext
    ) -> apb.ListAliasesResponse:
        return apb.ListAliasesResponse(aliases=await self.core.aliases.listing(request.show_deleted))

    async def RollbackAlias(
        self, request: apb.RollbackAliasRequest, context: grpc.aio.ServicerContext
    ) -> apb.RollbackAliasResponse:
        if request.to_revision < 0:
            raise InvalidArgument("to_revision", "must be >= 0 (0 means the target before the current one)")
        return apb.RollbackAliasResponse(alias=await self.core.aliases.rollback(request))

    async def DeleteAlias(
        self, request: apb.DeleteAliasRequest, context: grpc.aio.ServicerContext
    ) -> apb.DeleteAliasResponse:
        return apb.DeleteAliasResponse(alias=await self.core.aliases.delete(request))

    # ---------------------------------------------------------------------------- skills

    async def CreateSkill(
        self, request: opb.CreateSkillRequest, context: grpc.aio.ServicerContext
    ) -> opb.CreateSkillResponse:
        if not request.HasField("skill"):
            raise InvalidArgument("skill", "is required")
        sk = request.skill
        skill_docs.check_text(sk.text, "skill.text")
        if sk.parent_id:
            await asyncio.to_thread(self.core.runs.skills.get, sk.parent_id)
        stored, created = await asyncio.to_thread(
            self.core.runs.skills.put, sk.text, name=sk.name, parent_id=sk.parent_id
        )
        return opb.CreateSkillResponse(skill=stored, created=created)

    async def GetSkill(
        self, request: opb.GetSkillRequest, context: grpc.aio.ServicerContext
    ) -> opb.GetSkillResponse:
        if not request.skill_id:
            raise InvalidArgument("skill_id", "is required")
        return opb.GetSkillResponse(
            skill=await asyncio.to_thread(self.core.runs.skills.get, request.skill_id)
        )

    async def ListSkills(
        self, request: opb.ListSkillsRequest, context: grpc.aio.ServicerContext
    ) -> opb.ListSkillsResponse:
        found = await asyncio.to_thread(self.core.runs.skills.list)
        listed = []
        for sk in found:
            if request.optimization_id and sk.optimization_id != request.optimization_id:
                continue
            sk.ClearField("text")
            listed.append(sk)
        chunk, token = offset_page(listed, request.page_size, request.page_token)
        return opb.ListSkillsResponse(skills=chunk, next_page_token=token)

    async def CreateSkillOptimization(
        self, request: opb.CreateSkillOptimizationRequest, context: grpc.aio.ServicerContext
    ) -> opb.CreateSkillOptimizationResponse:
        if not request.HasField("optimization"):
            raise InvalidArgument("optimization", "is required")
        await self.core.refresh_suites()
        o = await self.core.skillopts.create(request.optimization, request.request_id)
        return opb.CreateSkillOptimizationResponse(optimization=o)

    async def GetSkillOptimization(
        self, request: opb.GetSkillOptimizationRequest, context: grpc.aio.ServicerContext
    ) -> opb.GetSkillOptimizationResponse:
        if not request.optimization_id:
            raise InvalidArgument("optimization_id", "is required")
        return opb.GetSkillOptimizationResponse(optimization=self.core.skillopts.get(request.optimization_id))

    async def ListSkillOptimizations(
        self, request: opb.ListSkillOptimizationsRequest, context: grpc.aio.ServicerContext
    ) -> opb.ListSkillOptimizationsResponse:
        chunk, token = self.core.skillopts.page(request)
        return opb.ListSkillOptimizationsResponse(optimizations=chunk, next_page_token=token)

    async def CancelSkillOptimization(
        self, request: opb.CancelSkillOptimizationRequest, context: grpc.aio.ServicerContext
    ) -> opb.CancelSkillOptimizationResponse:
        if not request.optimization_id:
            raise InvalidArgument("optimization_id", "is required")
        o = await self.core.skillopts.cancel(request.optimization_id)
        return opb.CancelSkillOptimizationResponse(optimization=o)

    async def WatchSkillOptimization(
        self, request: opb.WatchSkillOptimizationRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[opb.WatchSkillOptimizationResponse]:
        if not request.optimization_id:
            raise InvalidArgument("optimization_id", "is required")
        async for item in self.core.skillopts.watch(request.optimization_id):
            yield opb.WatchSkillOptimizationResponse(optimization=item)


def _manifest_name(files: dict[str, bytes]) -> str:
    """The `name` of the files' suite.toml, or "" (its problems are reported by the check)."""
    import tomllib

    try:
        doc = tomllib.loads(files.get("suite.toml", b"").decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError, RecursionError):
        return ""
    name = doc.get("name")
    return name if isinstance(name, str) else ""


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
