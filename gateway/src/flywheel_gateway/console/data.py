"""What the console shows, read from the services' own gRPC APIs (and adapter manifests in the store).

The console keeps no state of its own: every page is built from the List/Get RPCs at the time it
is asked for, and live views stream the services' Watch RPCs. A service that cannot be reached
makes its pages say so (:class:`Unreachable`); it never fails the gateway.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.protobuf import json_format
from google.protobuf.message import Message

from flywheel.dataset.v1 import dataset_pb2 as dpb
from flywheel.dataset.v1.dataset_pb2_grpc import DatasetServiceStub
from flywheel.orchestrator.v1 import alias_pb2 as apb
from flywheel.orchestrator.v1 import orchestrator_pb2 as opb
from flywheel.orchestrator.v1.orchestrator_pb2_grpc import OrchestratorServiceStub
from flywheel.trainer.v1 import trainer_pb2 as trpb
from flywheel.trainer.v1.trainer_pb2_grpc import TrainerServiceStub
from flywheel.trajectory.v1 import trajectory_pb2 as tpb
from flywheel.trajectory.v1.trajectory_pb2_grpc import TrajectoryServiceStub
from flywheel_common.objectstore import ObjectStore
from flywheel_gateway.channels import ServiceChannels
from flywheel_gateway.settings import GatewaySettings

log = logging.getLogger("flywheel.gateway.console")

#: Deadline of one unary call made for a page (seconds).
CALL_TIMEOUT_S = 10.0


class Unreachable(Exception):
    """A service did not answer a page's call: the page shows this instead of its data."""

    def __init__(self, service: str, address: str, err: grpc.RpcError) -> None:
        code = err.code().name if isinstance(err, grpc.aio.AioRpcError) else "UNAVAILABLE"
        detail = err.details() if isinstance(err, grpc.aio.AioRpcError) else str(err)
        super().__init__(f"{service} at {address}: {code}: {detail}")
        self.code = code
        self.not_found = code == "NOT_FOUND"


def as_dict(message: Message) -> dict[str, Any]:
    """A message as JSON-ready data, field names as in the proto (what the templates and charts read)."""
    return json_format.MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )


@dataclass
class ServiceAddresses:
    """``host:port`` of the four services the console reads (from :class:`GatewaySettings`)."""

    orchestrator: str = "127.0.0.1:50051"
    trainer: str = "127.0.0.1:50055"
    dataset: str = "127.0.0.1:50054"
    trajectory: str = "127.0.0.1:50053"

    @classmethod
    def of(cls, settings: GatewaySettings) -> ServiceAddresses:
        return cls(
            orchestrator=settings.orchestrator_address,
            trainer=settings.trainer_address,
            dataset=settings.dataset_address,
            trajectory=settings.trajectory_address,
        )


@dataclass
class Backends:
    """Stubs for the four services the console reads, on the gateway's shared channels."""

    addresses: ServiceAddresses
    store: ObjectStore | None = None
    channels: ServiceChannels = field(default_factory=ServiceChannels)
    page_size: int = 50

    def _channel(self, name: str) -> grpc.aio.Channel:
        return self.channels.get(getattr(self.addresses, name))

    @property
    def orchestrator(self) -> OrchestratorServiceStub:
        return OrchestratorServiceStub(self._channel("orchestrator"))

    @property
    def trainer(self) -> TrainerServiceStub:
        return TrainerServiceStub(self._channel("trainer"))

    @property
    def dataset(self) -> DatasetServiceStub:
        return DatasetServiceStub(self._channel("dataset"))

    @property
    def trajectory(self) -> TrajectoryServiceStub:
        return TrajectoryServiceStub(self._channel("trajectory"))

    async def close(self) -> None:
        await self.channels.close()

    async def call(self, service: str, method: str, request: Message) -> Any:
        """One unary call; an RPC error becomes :class:`Unreachable` naming the service and address."""
        stub = getattr(self, service)
        try:
            return await getattr(stub, method)(request, timeout=CALL_TIMEOUT_S)
        except grpc.RpcError as err:
            raise Unreachable(service, getattr(self.addresses, service), err) from err

    # ------------------------------------------------------------------ listings

    async def runs(self) -> list[dict[str, Any]]:
        reply = await self.call("orchestrator", "ListRuns", opb.ListRunsRequest(page_size=self.page_size))
        return [as_dict(r) for r in reply.runs]

    async def evaluations(self) -> list[dict[str, Any]]:
        req = opb.ListEvaluationsRequest(page_size=self.page_size)
        return [as_dict(e) for e in (await self.call("orchestrator", "ListEvaluations", req)).evaluations]

    async def loops(self) -> list[dict[str, Any]]:
        req = opb.ListLoopsRequest(page_size=self.page_size)
        return [as_dict(lp) for lp in (await self.call("orchestrator", "ListLoops", req)).loops]

    async def aliases(self) -> list[dict[str, Any]]:
        reply = await self.call("orchestrator", "ListAliases", apb.ListAliasesRequest())
        return [as_dict(a) for a in reply.aliases]

    async def datasets(self) -> list[dict[str, Any]]:
        req = dpb.ListDatasetsRequest(page_size=self.page_size)
        return [as_dict(d) for d in (await self.call("dataset", "ListDatasets", req)).datasets]

    async def jobs(self) -> list[dict[str, Any]]:
        req = trpb.ListFineTuneJobsRequest(page_size=self.page_size)
        return [as_dict(j) for j in (await self.call("trainer", "ListFineTuneJobs", req)).jobs]

    async def adapters(self) -> list[dict[str, Any]]:
        req = trpb.ListAdaptersRequest(page_size=self.page_size)
        return [as_dict(a) for a in (await self.call("trainer", "ListAdapters", req)).adapters]

    async def skill_optimizations(self) -> list[dict[str, Any]]:
        req = opb.ListSkillOptimizationsRequest(page_size=self.page_size)
        reply = await self.call("orchestrator", "ListSkillOptimizations", req)
        return [as_dict(o) for o in reply.optimizations]

    # ------------------------------------------------------------------ one resource

    async def skill_optimization(self, optimization_id: str) -> dict[str, Any]:
        req = opb.GetSkillOptimizationRequest(optimization_id=optimization_id)
        return as_dict((await self.call("orchestrator", "GetSkillOptimization", req)).optimization)

    async def skill(self, skill_id: str) -> dict[str, Any]:
        req = opb.GetSkillRequest(skill_id=skill_id)
        return as_dict((await self.call("orchestrator", "GetSkill", req)).skill)

    async def run(self, run_id: str) -> dict[str, Any]:
        return as_dict((await self.call("orchestrator", "GetRun", opb.GetRunRequest(run_id=run_id))).run)

    async def episodes(self, run_id: str) -> list[dict[str, Any]]:
        """Every stored trajectory of a run (summaries), all pages."""
        out: list[dict[str, Any]] = []
        token = ""
        while True:
            req = tpb.ListTrajectoriesRequest(
                filter=tpb.TrajectoryFilter(run_ids=[run_id]), page_size=200, page_token=token
            )
            reply = await self.call("trajectory", "ListTrajectories", req)
            out.extend(as_dict(t) for t in reply.trajectories)
            token = reply.next_page_token
            if not token or len(out) >= 2000:
                return out

    async def trajectory_of(self, trajectory_id: str) -> dict[str, Any]:
        req = tpb.GetTrajectoryRequest(trajectory_id=trajectory_id)
        return as_dict((await self.call("trajectory", "GetTrajectory", req)).trajectory)

    async def evaluation(self, evaluation_id: str) -> dict[str, Any]:
        req = opb.GetEvaluationRequest(evaluation_id=evaluation_id)
        return as_dict((await self.call("orchestrator", "GetEvaluation", req)).evaluation)

    async def loop(self, loop_id: str) -> dict[str, Any]:
        return as_dict((await self.call("orchestrator", "GetLoop", opb.GetLoopRequest(loop_id=loop_id))).loop)

    async def alias(self, name: str) -> dict[str, Any]:
        """An alias with its history, as GetAlias gives it."""
        return as_dict((await self.call("orchestrator", "GetAlias", apb.GetAliasRequest(name=name))).alias)

    async def dataset_of(self, dataset_id: str) -> dict[str, Any]:
        req = dpb.GetDatasetRequest(dataset_id=dataset_id)
        return as_dict((await self.call("dataset", "GetDataset", req)).dataset)

    async def preview(self, dataset_id: str, count: int = 5) -> tuple[list[Any], int]:
        """The first ``count`` TRAIN examples (parsed JSON where they are JSON) and the split's size."""
        req = dpb.PreviewDatasetRequest(dataset_id=dataset_id, count=count)
        reply = await self.call("dataset", "PreviewDataset", req)
        return [_parsed(e) for e in reply.examples], reply.total_count

    async def job(self, job_id: str) -> dict[str, Any]:
        req = trpb.GetFineTuneJobRequest(job_id=job_id)
        return as_dict((await self.call("trainer", "GetFineTuneJob", req)).job)

    async def history(self, job: dict[str, Any]) -> list[dict[str, Any]]:
        """A finished job's logged steps, from its adapter's manifest (the same history the trainer's
        loss-curve PNG is drawn from); empty while it runs (the live stream brings its points)."""
        prefix = (job.get("adapter") or {}).get("object_prefix")
        if not prefix or self.store is None:
            return []
        try:
            raw = await asyncio.to_thread(self.store.get_bytes, prefix.rstrip("/") + "/manifest.json")
        except Exception as err:  # a missing or unreadable manifest leaves the chart to the stream
            log.info("no training history for %s: %s", job.get("id"), err)
            return []
        try:
            history = json.loads(raw).get("metrics", {}).get("history", [])
        except (ValueError, AttributeError):
            return []
        return [h for h in history if isinstance(h, dict) and "step" in h]

    # ------------------------------------------------------------------ live streams

    async def watch(self, kind: str, resource_id: str) -> AsyncIterator[dict[str, Any]]:
        """The Watch RPC of ``kind`` as plain events: ``{"type": <the update's field>, "data": …}`` —
        ``run``/``evaluation``/``loop``/``job`` (a snapshot), ``episode`` or ``log``."""
        if kind == "run":
            stream = self.orchestrator.WatchRun(opb.WatchRunRequest(run_id=resource_id))
        elif kind == "evaluation":
            stream = self.orchestrator.WatchEvaluation(opb.WatchEvaluationRequest(evaluation_id=resource_id))
        elif kind == "loop":
            stream = self.orchestrator.WatchLoop(opb.WatchLoopRequest(loop_id=resource_id))
        elif kind == "skill":
            req = opb.WatchSkillOptimizationRequest(optimization_id=resource_id)
            async for update in self.orchestrator.WatchSkillOptimization(req):
                yield {"type": "optimization", "data": as_dict(update.optimization)}
            return
        elif kind == "job":
            stream = self.trainer.WatchFineTuneJob(trpb.WatchFineTuneJobRequest(job_id=resource_id))
        else:
            raise ValueError(f"nothing to watch of kind {kind!r}")
        try:
            async for update in stream:
                which = update.WhichOneof("update")
                if which is not None:
                    yield {"type": which, "data": as_dict(getattr(update, which))}
        finally:
            stream.cancel()


def _parsed(example: str) -> Any:
    try:
        return json.loads(example)
    except ValueError:
        return example
