"""The gRPC surface of the dataset builder.

Thin transport: the servicer validates requests (``validation.py``), hands builds to the
:class:`~flywheel_dataset.jobs.BuildManager` and reads datasets back from the object store.
"""

from __future__ import annotations

import asyncio
import json
import re
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from flywheel.dataset.v1 import dataset_pb2, dataset_pb2_grpc
from flywheel_common.errors import InvalidArgument, NotFound
from flywheel_common.jobs import TERMINAL
from flywheel_common.objectstore import ObjectNotFoundError
from flywheel_common.paging import offset_page
from flywheel_common.runtime import Dependencies
from flywheel_common.server import GrpcApp, ServiceBinding
from flywheel_dataset.build import manifest_to_dataset
from flywheel_dataset.imports import import_dataset
from flywheel_dataset.jobs import BuildManager, grpc_source_factory
from flywheel_dataset.recipes import RECIPES
from flywheel_dataset.settings import DatasetSettings
from flywheel_dataset.tokens import load_counter
from flywheel_dataset.validation import resolve_build

NAME = "dataset-svc"
DESCRIPTOR = dataset_pb2.DESCRIPTOR.services_by_name["DatasetService"]
DATASET_ID = re.compile(r"^ds-[0-9a-f]{16}$")
WATCH_INTERVAL_S = 1.0  # the contract: at most about one progress snapshot a second
WATCH_POLL_S = 0.1  # how often a watch looks at the build


def recipe_message(name: str) -> dataset_pb2.Recipe:
    recipe = RECIPES[name]
    return dataset_pb2.Recipe(
        name=recipe.name,
        description=recipe.description,
        kind=recipe.kind,
        parameters=[
            dataset_pb2.RecipeParameter(
                name=p.name,
                type=p.type,
                default_value=p.default,
                description=p.description,
                allowed_values=p.allowed,
            )
            for p in recipe.params
        ],
        formats=recipe.formats,
        task_kinds=recipe.task_kinds,
    )


def _strip_nulls(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_strip_nulls(v) for v in value]
    return value


class DatasetService(dataset_pb2_grpc.DatasetServiceServicer):
    """``flywheel.dataset.v1.DatasetService``."""

    def __init__(self, settings: DatasetSettings, deps: Dependencies, manager: BuildManager) -> None:
        self.settings = settings
        self.deps = deps
        self.manager = manager

    async def ListRecipes(self, request: Any, context: Any) -> dataset_pb2.ListRecipesResponse:
        names, token = offset_page(sorted(RECIPES), request.page_size, request.page_token)
        return dataset_pb2.ListRecipesResponse(
            recipes=[recipe_message(n) for n in names], next_page_token=token
        )

    async def CreateDatasetBuild(self, request: Any, context: Any) -> dataset_pb2.CreateDatasetBuildResponse:
        build = resolve_build(request.build, self.settings.default_base_model)
        if request.validate_only:
            return dataset_pb2.CreateDatasetBuildResponse(build=build)
        created = await self.manager.create(build, request.request_id)
        return dataset_pb2.CreateDatasetBuildResponse(build=created)

    async def GetDatasetBuild(self, request: Any, context: Any) -> dataset_pb2.GetDatasetBuildResponse:
        if not request.build_id:
            raise InvalidArgument("build_id", "required")
        return dataset_pb2.GetDatasetBuildResponse(build=self.manager.get(request.build_id))

    async def ListDatasetBuilds(self, request: Any, context: Any) -> dataset_pb2.ListDatasetBuildsResponse:
        builds, token = self.manager.page(request)
        return dataset_pb2.ListDatasetBuildsResponse(builds=builds, next_page_token=token)

    async def CancelDatasetBuild(self, request: Any, context: Any) -> dataset_pb2.CancelDatasetBuildResponse:
        if not request.build_id:
            raise InvalidArgument("build_id", "required")
        return dataset_pb2.CancelDatasetBuildResponse(build=await self.manager.cancel(request.build_id))

    async def WatchDatasetBuild(
        self, request: Any, context: Any
    ) -> AsyncIterator[dataset_pb2.WatchDatasetBuildResponse]:
        if not request.build_id:
            raise InvalidArgument("build_id", "required")
        last: dataset_pb2.DatasetBuild | None = None
        sent_at = 0.0
        loop = asyncio.get_running_loop()
        while True:
            build = self.manager.get(request.build_id)
            # A state change goes out at once; progress alone at most once per WATCH_INTERVAL_S.
            state_changed = last is None or build.state != last.state
            if state_changed or (build != last and loop.time() - sent_at >= WATCH_INTERVAL_S):
                yield dataset_pb2.WatchDatasetBuildResponse(build=build)
                last, sent_at = build, loop.time()
            if build.state in TERMINAL:
                return
            await asyncio.sleep(WATCH_POLL_S)

    def _load_dataset(self, dataset_id: str) -> dataset_pb2.Dataset:
        if not dataset_id:
            raise InvalidArgument("dataset_id", "required")
        if not DATASET_ID.match(dataset_id):
            raise InvalidArgument("dataset_id", f"{dataset_id!r} is not a dataset id (ds-<16 hex>)")
        key = f"datasets/{dataset_id}/manifest.json"
        try:
            data = self.deps.store.get_bytes(key)
        except ObjectNotFoundError:
            raise NotFound(f"dataset {dataset_id!r} does not exist") from None
        dataset = manifest_to_dataset(data)
        dataset.manifest.key = key
        dataset.manifest.size_bytes = len(data)
        return dataset

    async def GetDataset(self, request: Any, context: Any) -> dataset_pb2.GetDatasetResponse:
        dataset = await asyncio.to_thread(self._load_dataset, request.dataset_id)
        return dataset_pb2.GetDatasetResponse(dataset=dataset)

    async def ListDatasets(self, request: Any, context: Any) -> dataset_pb2.ListDatasetsResponse:
        def load_all() -> list[dataset_pb2.Dataset]:
            out = []
            for info in self.deps.store.list("datasets/"):
                if info.key.endswith("/manifest.json") and info.key.count("/") == 2:
                    dataset = manifest_to_dataset(self.deps.store.get_bytes(info.key))
                    dataset.manifest.key = info.key
                    dataset.manifest.size_bytes = info.size
                    out.append(dataset)
            return out

        datasets = [
            d
            for d in await asyncio.to_thread(load_all)
            if (not request.recipe or d.recipe == request.recipe)
            and (not request.loop_id or d.loop_id == request.loop_id)
        ]
        datasets.sort(key=lambda d: (d.create_time.ToNanoseconds(), d.id), reverse=True)
        chunk, token = offset_page(datasets, request.page_size, request.page_token)
        return dataset_pb2.ListDatasetsResponse(datasets=chunk, next_page_token=token)

    async def PreviewDataset(self, request: Any, context: Any) -> dataset_pb2.PreviewDatasetResponse:
        if request.count < 0 or request.count > 100:
            raise InvalidArgument("count", f"must be between 0 and 100, got {request.count}")
        count = request.count or 5
        split = request.split or dataset_pb2.DATASET_SPLIT_TRAIN
        dataset = await asyncio.to_thread(self._load_dataset, request.dataset_id)
        files = [f for f in dataset.files if f.split == split]
        if request.format:
            files = [f for f in files if f.format == request.format]
        elif files:
            first = files[0].format
            files = [f for f in files if f.format == first]
        if not files:
            if request.format and request.format not in {f.format for f in dataset.files}:
                raise InvalidArgument(
                    "format",
                    f"dataset {dataset.id} was not written in {dataset_pb2.OutputFormat.Name(request.format)}",
                )
            return dataset_pb2.PreviewDatasetResponse(examples=[], total_count=0)
        files.sort(key=lambda f: f.file_format)  # JSONL first: it is shown exactly as stored

        def read() -> list[str]:
            chosen = files[0]
            with self.deps.store.open(chosen.object.key) as fh:
                if chosen.file_format == dataset_pb2.FILE_FORMAT_JSONL:
                    lines = []
                    for raw in fh:
                        lines.append(raw.decode("utf-8").rstrip("\n"))
                        if len(lines) >= count:
                            break
                    return lines
                table = pq.read_table(fh)
                rows = table.slice(0, count).to_pylist()
                return [json.dumps(_strip_nulls(r), ensure_ascii=False, separators=(",", ":")) for r in rows]

        examples = await asyncio.to_thread(read)
        return dataset_pb2.PreviewDatasetResponse(examples=examples, total_count=files[0].example_count)

    async def ImportDataset(self, request: Any, context: Any) -> dataset_pb2.ImportDatasetResponse:
        base = request.target_base_model or self.settings.default_base_model

        def run() -> dataset_pb2.Dataset:
            with tempfile.TemporaryDirectory(prefix="import-", dir=self.settings.work_dir) as tmp:
                counter = load_counter(self.deps.store, base, Path(tmp))
                return import_dataset(self.deps.store, request, base, counter)

        return dataset_pb2.ImportDatasetResponse(dataset=await asyncio.to_thread(run))


def build_app(settings: DatasetSettings) -> GrpcApp:
    """The service's gRPC app, with the shared resources it needs opened at start-up."""
    deps = Dependencies(settings, NAME, events=True, objects=True)
    manager = BuildManager(
        lambda: deps.store,
        lambda: deps.bus,
        grpc_source_factory(settings.trajectory_address, settings.export_timeout_s),
        workers=settings.max_concurrent_builds,
        price_usd_per_million_tokens=settings.price_usd_per_million_tokens,
        decontamination_ngram=settings.decontamination_ngram,
        work_dir=settings.work_dir,
    )
    servicer = DatasetService(settings, deps, manager)
    app = GrpcApp(
        NAME,
        settings,
        [ServiceBinding(servicer, dataset_pb2_grpc.add_DatasetServiceServicer_to_server, DESCRIPTOR)],
    )
    deps.attach(app)
    app.on_startup.append(manager.start)
    app.on_shutdown.append(manager.stop)
    return app
