"""One dataset build, start to finish, as plain synchronous code (the service runs it in a thread).

Pipeline and why it is shaped so:

1. **Evaluation tasks** of the decontamination suites are read from the trajectory store (the
   suite's TEST-split trajectories: their task ids and first user messages).
2. **Read** the source once, streaming: the union of its run ids or filter and its captured
   traffic entries, each trajectory once (``captured.py``). Each trajectory is appended,
   serialized, to one of ``BUCKETS`` spill files chosen by a hash of its task, and only its id
   is kept (lineage).
3. **Order**: bucket by bucket, trajectories are grouped by task (sorted by suite, task id,
   attempt, id) and fed to the recipe. Memory holds one bucket, and the order no longer depends
   on the order the store returned, so the same trajectories always give the same dataset.
4. **Per example**: decontamination by content, exact and near-duplicate removal, split by
   task, rendering in every format, token counting; records are streamed to local files.
5. **Publish**: Parquet files are converted from the JSONL ones; the dataset id is a hash of the
   inputs (recipe, resolved parameters, split, hygiene, formats, tokenizer settings and the
   sorted trajectory ids); files go to ``datasets/<id>/`` and the manifest goes last, so a
   manifest means a complete dataset. If the manifest already exists (a retried build), nothing
   is rewritten and the existing dataset is returned.
"""

from __future__ import annotations

import hashlib
import json
import logging
import struct
import tempfile
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Protocol

import pyarrow as pa
import pyarrow.parquet as pq
from google.protobuf import json_format
from google.protobuf.timestamp_pb2 import Timestamp

from flywheel.common.v1 import common_pb2
from flywheel.dataset.v1 import dataset_pb2 as dpb
from flywheel.trajectory.v1 import trajectory_pb2 as tpb
from flywheel_common.objectstore import ObjectStore
from flywheel_dataset.captured import FeedbackReader, SourceReader
from flywheel_dataset.examples import Counts, Example
from flywheel_dataset.formats import SPLIT_NAMES, chatml_text, object_name, render
from flywheel_dataset.hygiene import Decontaminator, Deduplicator, exact_key, split_of
from flywheel_dataset.messages import problem_statement
from flywheel_dataset.recipes import Recipe
from flywheel_dataset.tokens import LengthStats, TokenCounter

log = logging.getLogger("flywheel.dataset.build")

BUCKETS = 64
PREVIEW_EXAMPLES = 3
SPLITS = (dpb.DATASET_SPLIT_TRAIN, dpb.DATASET_SPLIT_VALIDATION, dpb.DATASET_SPLIT_TEST)


class BuildCancelled(Exception):
    """The build was asked to stop."""


class EmptyDataset(Exception):
    """The build would publish no TRAIN example; the message says where everything went."""


class TrajectorySource(Protocol):
    """Where trajectories come from (the trajectory store's ExportTrajectories)."""

    def export(self, query: tpb.TrajectoryFilter) -> Iterator[tpb.Trajectory]: ...


@dataclass
class BuildSpec:
    """A validated build request in plain terms (see ``validation.py``)."""

    build_id: str
    recipe: Recipe
    parameters: dict[str, str]
    parsed: dict[str, Any]
    source: dpb.DatasetSource
    split: dpb.SplitConfig
    hygiene: dpb.HygieneConfig
    formats: list[dpb.OutputFormat]
    file_formats: list[dpb.FileFormat]
    target_base_model: str
    max_seq_length: int
    loop_id: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    create_time: Timestamp | None = None

    @property
    def threshold(self) -> float:
        return (
            self.hygiene.near_duplicate_threshold
            if self.hygiene.HasField("near_duplicate_threshold")
            else 0.9
        )


@dataclass
class Progress:
    """Counters the service shows while the build runs (updated by the build thread)."""

    trajectories_read: int = 0
    trajectories_total: int = 0
    examples_written: int = 0
    fraction: float = 0.0


@dataclass
class BuildContext:
    store: ObjectStore
    source: TrajectorySource
    tokenizer: Callable[[Path], TokenCounter]
    price_usd_per_million_tokens: float = 0.48
    decontamination_ngram: int = 13
    cancel: threading.Event = field(default_factory=threading.Event)
    progress: Progress = field(default_factory=Progress)


def dataset_id(
    spec: BuildSpec, counter_name: str, trajectory_ids: list[str], verdicts: dict[str, str] | None = None
) -> str:
    """``ds-<16 hex>`` from everything that decides the dataset's content.

    ``verdicts`` (captured call id → feedback verdict) count too, since feedback can arrive
    after a call was stored; a build without captured calls hashes as it always did.
    """
    digest = hashlib.sha256()
    header = {
        "recipe": spec.recipe.name,
        "parameters": spec.parameters,
        "split": [
            spec.split.train_ratio,
            spec.split.validation_ratio,
            spec.split.test_ratio,
            spec.split.seed,
        ],
        "hygiene": [
            spec.hygiene.keep_exact_duplicates,
            spec.threshold,
            sorted(spec.hygiene.decontaminate_suites),
        ],
        "formats": spec.formats,
        "file_formats": spec.file_formats,
        "tokenizer": counter_name,
        "max_seq_length": spec.max_seq_length,
    }
    digest.update(json.dumps(header, sort_keys=True).encode())
    for tid in sorted(trajectory_ids):
        digest.update(b"\x00" + tid.encode())
    for tid, verdict in sorted((verdicts or {}).items()):
        digest.update(b"\x01" + tid.encode() + b"=" + verdict.encode())
    return "ds-" + digest.hexdigest()[:16]


# ------------------------------------------------------------------------------------ spill files


def _bucket(trajectory: tpb.Trajectory) -> int:
    key = f"{trajectory.task.suite}\x00{trajectory.task.task_id}".encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=4).digest(), "big") % BUCKETS


def _read_bucket(path: Path) -> list[tpb.Trajectory]:
    out: list[tpb.Trajectory] = []
    if not path.exists():
        return out
    with path.open("rb") as fh:
        while header := fh.read(4):
            (size,) = struct.unpack(">I", header)
            out.append(tpb.Trajectory.FromString(fh.read(size)))
    return out


def _dumps(record: dict[str, Any]) -> str:
    return json.dumps(record, ensure_ascii=False, separators=(",", ":"))


# --------------------------------------------------------------------------------------- the build


class Builder:
    def __init__(self, spec: BuildSpec, ctx: BuildContext, workdir: Path) -> None:
        self.spec = spec
        self.ctx = ctx
        self.workdir = workdir
        self.counts = Counts()
        self.trajectory_ids: list[str] = []
        self.reader = SourceReader(spec.source, ctx.source.export, FeedbackReader(ctx.store))
        self.decontaminator = Decontaminator(ctx.decontamination_ngram)
        self.dedup = Deduplicator(spec.hygiene.keep_exact_duplicates, spec.threshold)
        self.split_counts: Counter[dpb.DatasetSplit] = Counter()
        self.split_tasks: dict[dpb.DatasetSplit, set[tuple[str, str]]] = {s: set() for s in SPLITS}
        self.lengths = LengthStats()
        self.preview: list[dict[str, Any]] = []
        self._files: dict[tuple[dpb.DatasetSplit, dpb.OutputFormat], IO[str]] = {}
        self.counter: TokenCounter | None = None

    def _check_cancel(self) -> None:
        if self.ctx.cancel.is_set():
            raise BuildCancelled(f"build {self.spec.build_id} was cancelled")

    # -- stages

    def load_eval_tasks(self) -> None:
        for suite in self.spec.hygiene.decontaminate_suites:
            self.decontaminator.suites.add(suite)
            query = tpb.TrajectoryFilter(suite=suite, split=common_pb2.TASK_SPLIT_TEST)
            for trajectory in self.ctx.source.export(query):
                self._check_cancel()
                key = (trajectory.task.suite, trajectory.task.task_id)
                if key not in self.decontaminator.task_keys:
                    self.decontaminator.add_task(*key, problem_statement(trajectory))

    def spill(self) -> None:
        buckets = self.workdir / "buckets"
        buckets.mkdir()
        handles: dict[int, IO[bytes]] = {}
        progress = self.ctx.progress
        try:
            for trajectory in self.reader:
                self._check_cancel()
                self.trajectory_ids.append(trajectory.id)
                progress.trajectories_read += 1
                task = trajectory.task
                if self.decontaminator.active and self.decontaminator.is_test_task(
                    task.suite, task.task_id, task.split
                ):
                    self.decontaminator.by_task_id += 1
                    continue
                b = _bucket(trajectory)
                fh = handles.get(b)
                if fh is None:
                    fh = handles[b] = (buckets / f"{b:02d}.bin").open("ab")
                data = trajectory.SerializeToString()
                fh.write(struct.pack(">I", len(data)))
                fh.write(data)
        finally:
            for fh in handles.values():
                fh.close()
        progress.trajectories_total = progress.trajectories_read

    def ordered(self) -> Iterator[tpb.Trajectory]:
        """Every spilled trajectory, bucket by bucket, grouped and sorted by task."""
        for b in range(BUCKETS):
            path = self.workdir / "buckets" / f"{b:02d}.bin"
            group = _read_bucket(path)
            path.unlink(missing_ok=True)
            group.sort(key=lambda t: (t.task.suite, t.task.task_id, t.attempt, t.id))
            self.ctx.progress.fraction = 0.1 + 0.75 * (b + 1) / BUCKETS
            yield from group

    def consume(self, examples: Iterable[Example]) -> None:
        spec = self.spec
        split_cfg = spec.split
        seed = split_cfg.seed or "flywheel"
        counter = self.counter
        assert counter is not None
        current = None
        for n, example in enumerate(examples):
            if n % 256 == 0:
                self._check_cancel()
            if example.trajectory_id != current:
                current = example.trajectory_id
                self.decontaminator.new_trajectory()
            texts = example.messages
            if example.chosen is not None:
                assert example.rejected is not None  # a preference example has both answers
                texts = [*example.messages, example.chosen, example.rejected]
            if self.decontaminator.overlaps(texts):
                self.decontaminator.by_content += 1
                continue
            records = [render(example, f) for f in spec.formats]
            lines = [_dumps(r) for r in records]
            # RL samples are never de-duplicated: identical episodes of a group are legitimate.
            if example.record is None:
                verdict = self.dedup.check(exact_key(lines[0].encode()), example.similarity_text or lines[0])
                if verdict is not None:
                    continue
            split = split_of(
                seed, example.suite, example.task_id, split_cfg.train_ratio, split_cfg.validation_ratio
            )
            for fmt, line in zip(spec.formats, lines, strict=True):
                fh = self._files.get((split, fmt))
                if fh is None:
                    path = self.workdir / "out" / object_name(split, fmt, dpb.FILE_FORMAT_JSONL)
                    fh = self._files[(split, fmt)] = path.open("w", encoding="utf-8")
                fh.write(line)
                fh.write("\n")
            self.split_counts[split] += 1
            self.split_tasks[split].add(example.task_key)
            self.counts.pair_types[example.pair_type] += 1
            self.lengths.add(self._tokens(example, counter), split == dpb.DATASET_SPLIT_TRAIN)
            if split == dpb.DATASET_SPLIT_TRAIN and len(self.preview) < PREVIEW_EXAMPLES:
                self.preview.append(records[0])
            self.ctx.progress.examples_written += 1

    def _tokens(self, example: Example, counter: TokenCounter) -> int:
        if example.record is not None:
            return example.token_count  # token ids already: nothing to tokenise
        if example.chosen is None:
            return counter.count(chatml_text(example.messages))
        assert example.rejected is not None  # a preference example has both answers
        prompt = counter.count(chatml_text(example.messages))
        return prompt + max(
            counter.count(chatml_text([example.chosen])), counter.count(chatml_text([example.rejected]))
        )

    def close_files(self) -> None:
        for fh in self._files.values():
            fh.close()

    # -- run

    def run(self) -> dpb.Dataset:
        spec, ctx = self.spec, self.ctx
        (self.workdir / "out").mkdir()
        self.counter = ctx.tokenizer(self.workdir)
        self.load_eval_tasks()
        ctx.progress.fraction = 0.02
        self.spill()
        ctx.progress.fraction = 0.1
        try:
            self.consume(spec.recipe.run(self.ordered(), spec.parsed, self.counts))
        finally:
            self.close_files()
        self._check_cancel()
        if not self.split_counts[dpb.DATASET_SPLIT_TRAIN]:
            raise EmptyDataset(self._empty_reason())
        ds_id = dataset_id(spec, self.counter.name, self.trajectory_ids, self.reader.verdicts)
        prefix = f"datasets/{ds_id}/"
        manifest_key = prefix + "manifest.json"
        if ctx.store.exists(manifest_key):
            log.info("dataset %s already published; build %s reuses it", ds_id, spec.build_id)
            return manifest_to_dataset(ctx.store.get_bytes(manifest_key))
        files = self._files_to_publish(prefix)
        ctx.progress.fraction = 0.95
        ids_key = prefix + "trajectory_ids.txt"
        ids_body = "".join(f"{i}\n" for i in sorted(self.trajectory_ids)).encode()
        ids_info = ctx.store.put(ids_key, ids_body, content_type="text/plain", overwrite=True)
        dataset = self._dataset(
            ds_id,
            files,
            common_pb2.ObjectRef(key=ids_key, size_bytes=ids_info.size, sha256=ids_info.sha256 or ""),
        )
        body = manifest_json(dataset, self.preview, self.counter, self.counts, self.reader.lineage())
        info = ctx.store.put(manifest_key, body, content_type="application/json", overwrite=True)
        dataset.manifest.CopyFrom(
            common_pb2.ObjectRef(key=manifest_key, size_bytes=info.size, sha256=info.sha256 or "")
        )
        ctx.progress.fraction = 1.0
        return dataset

    def _empty_reason(self) -> str:
        read = len(self.trajectory_ids)
        total = sum(self.split_counts.values())
        if not read:
            return "the source matched no trajectories"
        reasons = ", ".join(f"{k}={v}" for k, v in sorted(self.counts.filter_reasons.items())) or "none"
        removed = (
            f"exact duplicates {self.dedup.exact_removed}, near duplicates {self.dedup.near_removed}, "
            f"decontaminated {self.decontaminator.by_task_id} trajectories + {self.decontaminator.by_content} examples"
        )
        where = f"{total} examples in other splits; change build.split" if total else "no examples at all"
        return f"no TRAIN examples from {read} trajectories ({where}); filtered: {reasons}; {removed}"

    def _files_to_publish(self, prefix: str) -> list[dpb.DatasetFile]:
        files = []
        for split in SPLITS:
            for fmt in self.spec.formats:
                jsonl = self.workdir / "out" / object_name(split, fmt, dpb.FILE_FORMAT_JSONL)
                if not jsonl.exists():
                    continue
                for file_format in self.spec.file_formats:
                    name = object_name(split, fmt, file_format)
                    path = self.workdir / "out" / name
                    if file_format == dpb.FILE_FORMAT_PARQUET:
                        jsonl_to_parquet(jsonl, path)
                    content_type = (
                        "application/x-ndjson"
                        if file_format == dpb.FILE_FORMAT_JSONL
                        else "application/vnd.apache.parquet"
                    )
                    with path.open("rb") as fh:
                        info = self.ctx.store.put(
                            prefix + name, fh, content_type=content_type, overwrite=True
                        )
                    files.append(
                        dpb.DatasetFile(
                            split=split,
                            format=fmt,
                            file_format=file_format,
                            object=common_pb2.ObjectRef(
                                key=prefix + name, size_bytes=info.size, sha256=info.sha256 or ""
                            ),
                            example_count=self.split_counts[split],
                        )
                    )
        return files

    def _dataset(
        self, ds_id: str, files: list[dpb.DatasetFile], ids_ref: common_pb2.ObjectRef
    ) -> dpb.Dataset:
        spec = self.spec
        summary = self.lengths.summary(spec.max_seq_length)
        assert self.counter is not None
        dataset = dpb.Dataset(
            id=ds_id,
            build_id=spec.build_id,
            recipe=spec.recipe.name,
            parameters=spec.parameters,
            kind=spec.recipe.kind,
            source=spec.source,
            trajectory_count=len(self.trajectory_ids),
            trajectory_ids=ids_ref,
            split=spec.split,
            hygiene=spec.hygiene,
            splits=[
                dpb.SplitStats(
                    split=s, example_count=self.split_counts[s], task_count=len(self.split_tasks[s])
                )
                for s in SPLITS
            ],
            files=files,
            filter_reasons=dict(self.counts.filter_reasons),
            failure_categories=dict(self.counts.failure_categories),
            hygiene_stats=dpb.HygieneStats(
                exact_duplicates_removed=self.dedup.exact_removed,
                near_duplicates_removed=self.dedup.near_removed,
                decontaminated_by_task_id=self.decontaminator.by_task_id,
                decontaminated_by_content=self.decontaminator.by_content,
            ),
            token_stats=dpb.TokenStats(
                tokenizer=self.counter.name,
                mean=summary["mean"],
                p95=int(summary["p95"]),
                max=int(summary["max"]),
                total_train_tokens=self.lengths.train_tokens,
                max_seq_length=spec.max_seq_length,
                over_max_length=int(summary["over_max_length"]),
            ),
            cost_estimate=dpb.CostEstimate(
                tokens_per_epoch=self.lengths.train_tokens,
                usd_per_epoch=round(
                    self.lengths.train_tokens / 1e6 * self.ctx.price_usd_per_million_tokens, 6
                ),
                price_basis=f"{self.ctx.price_usd_per_million_tokens} USD per 1M training tokens (builder settings)",
            ),
            loop_id=spec.loop_id,
            labels=spec.labels,
        )
        if spec.create_time is not None:
            dataset.create_time.CopyFrom(spec.create_time)
        if self.counts.rl is not None:
            stats = self.counts.rl.stats()
            policy = stats.pop("policy")
            dataset.rl_stats.CopyFrom(dpb.RlStats(**stats))
            if policy is not None:
                dataset.rl_stats.policy.CopyFrom(policy)
        return dataset


def run_build(spec: BuildSpec, ctx: BuildContext, tmp_root: str | None = None) -> dpb.Dataset:
    with tempfile.TemporaryDirectory(prefix=f"{spec.build_id}-", dir=tmp_root) as tmp:
        return Builder(spec, ctx, Path(tmp)).run()


# ---------------------------------------------------------------------------------------- files


def jsonl_to_parquet(jsonl: Path, parquet: Path, batch_rows: int = 2048) -> None:
    """Convert in two streaming passes: unify the schema of every batch, then write with it.

    One pass with the first batch's schema would fail on a later record with a field the first
    ones lacked (e.g. the first tool call of a split); unifying first keeps memory at one batch.
    Tool JSON schemas are free-form: when two of them give one key two Arrow types (``"default":
    1`` and ``"default": "x"``), no common schema exists, and the ``tools`` column is written as
    JSON text instead (and said so in the file's metadata, ``flywheel.tools_as_json``).
    """

    def batches(tools_as_text: bool) -> Iterator[list[dict[str, Any]]]:
        batch = []
        with jsonl.open(encoding="utf-8") as fh:
            for line in fh:
                record = json.loads(line)
                if tools_as_text:
                    _tools_to_text(record)
                batch.append(record)
                if len(batch) >= batch_rows:
                    yield batch
                    batch = []
        if batch:
            yield batch

    tools_as_text = False
    try:
        schema = pa.unify_schemas(
            [pa.Table.from_pylist(b).schema for b in batches(False)], promote_options="permissive"
        )
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
        tools_as_text = True
        schema = pa.unify_schemas(
            [pa.Table.from_pylist(b).schema for b in batches(True)], promote_options="permissive"
        )
        schema = schema.with_metadata({"flywheel.tools_as_json": "true"})
    with pq.ParquetWriter(parquet, schema) as writer:
        for batch in batches(tools_as_text):
            writer.write_table(pa.Table.from_pylist(batch, schema=schema))


def _tools_to_text(record: dict[str, Any]) -> None:
    if "tools" in record:
        record["tools"] = json.dumps(record["tools"], ensure_ascii=False)
    inner = record.get("input")
    if isinstance(inner, dict) and "tools" in inner:
        inner["tools"] = json.dumps(inner["tools"], ensure_ascii=False)


# ------------------------------------------------------------------------------------- manifest


#: The layout the trainer reads for each kind (see trainer-svc catalog.py): chat-messages JSONL
#: for SFT, TRL prompt/chosen/rejected JSONL for preference datasets.
TRAINER_FORMATS = {
    dpb.DATASET_KIND_SFT: dpb.OUTPUT_FORMAT_CHAT_MESSAGES,
    dpb.DATASET_KIND_PREFERENCE: dpb.OUTPUT_FORMAT_TRL_PREFERENCE,
    dpb.DATASET_KIND_RL: dpb.OUTPUT_FORMAT_GRPO_TOKENS,
}


def trainer_files(dataset: dpb.Dataset) -> dict[str, str]:
    """``{"train": "train.chat_messages.jsonl", "validation": …}``: the files the trainer trains on."""
    wanted = TRAINER_FORMATS.get(dataset.kind)
    return {
        SPLIT_NAMES[f.split]: f.object.key.rsplit("/", 1)[1]
        for f in dataset.files
        if f.format == wanted and f.file_format == dpb.FILE_FORMAT_JSONL
    }


def manifest_json(
    dataset: dpb.Dataset,
    preview: list[dict[str, Any]],
    counter: TokenCounter,
    counts: Counts,
    lineage: dict[str, Any] | None = None,
) -> bytes:
    """The manifest: the Dataset message as JSON plus preview examples and notes.

    One departure from the message's JSON form, for the trainer: ``files`` maps a split name to
    the file it trains on (``{"train": "train.chat_messages.jsonl"}``, names relative to
    ``datasets/<id>/``), and the message's list of DatasetFile is under ``dataset_files``.
    ``source_lineage`` says how many trajectories each source contributed (see ``captured.py``).
    """
    body = json_format.MessageToDict(dataset, preserving_proto_field_name=True)
    body["dataset_files"] = body.pop("files", [])
    body["files"] = trainer_files(dataset)
    body["token_count_method"] = "tokenizer" if counter.exact else "approximate"
    body["example_types"] = dict(counts.pair_types)
    body["preview"] = preview
    if lineage is not None:
        body["source_lineage"] = lineage
    return (json.dumps(body, ensure_ascii=False, indent=2, sort_keys=True) + "\n").encode()


_EXTRA_KEYS = ("token_count_method", "example_types", "preview", "source_lineage")


def manifest_to_dataset(data: bytes) -> dpb.Dataset:
    body = json.loads(data)
    for key in _EXTRA_KEYS:
        body.pop(key, None)
    body["files"] = body.pop("dataset_files", [])
    return json_format.ParseDict(body, dpb.Dataset(), ignore_unknown_fields=True)
