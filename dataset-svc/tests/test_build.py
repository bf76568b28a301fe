"""Whole builds in-process: splits by task, hygiene counts, manifest, determinism and retry.

The trajectory source here is an in-memory stand-in for ExportTrajectories (the service tests
use a real gRPC server); the object store is the real filesystem backend.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
from dataset_fixtures import (
    PATCH,
    ListSource,
    assistant,
    build_now,
    make_build,
    problem,
    repo_run,
    sys_,
    trajectory,
    user,
)

from flywheel.common.v1 import common_pb2
from flywheel.dataset.v1 import dataset_pb2 as dpb
from flywheel.trajectory.v1 import trajectory_pb2 as tpb
from flywheel_common.objectstore.fs import FilesystemObjectStore
from flywheel_dataset.build import BuildCancelled


def read_jsonl(store: FilesystemObjectStore, key: str) -> list[dict]:
    return [json.loads(line) for line in store.get_bytes(key).decode().splitlines()]


@pytest.fixture
def store(tmp_path: Path) -> FilesystemObjectStore:
    s = FilesystemObjectStore(tmp_path / "objects")
    s.ensure_ready()
    return s


def many_tasks(n: int = 30) -> list[tpb.Trajectory]:
    return [repo_run(f"t{i}-{a}", f"task_{i}", attempt=a) for i in range(n) for a in range(2)]


def test_no_task_appears_on_two_sides(store: FilesystemObjectStore) -> None:
    build = make_build(
        split=dpb.SplitConfig(train_ratio=0.6, validation_ratio=0.2, test_ratio=0.2),
        hygiene=dpb.HygieneConfig(near_duplicate_threshold=1.0),  # the fixture tasks differ by one word
    )
    dataset = build_now(store, build, ListSource(many_tasks()))
    tasks_by_split = {}
    for f in dataset.files:
        records = read_jsonl(store, f.object.key)
        assert len(records) == f.example_count
        tasks_by_split[f.split] = {r["messages"][1]["content"].split()[2] for r in records}
    assert set(tasks_by_split) == {
        dpb.DATASET_SPLIT_TRAIN,
        dpb.DATASET_SPLIT_VALIDATION,
        dpb.DATASET_SPLIT_TEST,
    }
    sides = list(tasks_by_split.values())
    assert all(not (a & b) for i, a in enumerate(sides) for b in sides[i + 1 :])
    assert sum(len(s) for s in sides) == 30
    # The two rollouts of a task are identical, so the second one's steps are exact duplicates.
    assert dataset.hygiene_stats.exact_duplicates_removed == 30 * 3
    assert sum(s.example_count for s in dataset.splits) == 30 * 3
    assert {s.split: s.task_count for s in dataset.splits} == {k: len(v) for k, v in tasks_by_split.items()}


def test_near_duplicates_and_decontamination_counts(store: FilesystemObjectStore) -> None:
    words = " ".join(f"word{i}" for i in range(200))
    near_a = trajectory("na", "near_a", [sys_(), user(words), assistant('{"x": 1}')])
    near_b = trajectory(
        "nb", "near_b", [sys_(), user(words.replace("word100", "changed")), assistant('{"x": 1}')]
    )
    held = problem("secret_task")
    eval_test = repo_run(
        "e1", "secret_task", suite="heldout", split=common_pb2.TASK_SPLIT_TEST, run_id="run-eval"
    )
    in_source = repo_run("e2", "secret_task", suite="heldout", split=common_pb2.TASK_SPLIT_TEST)
    copied = repo_run("c1", "copy", suite="repo-bugs")
    copied.steps[1].content = "Please solve this: " + held
    clean = repo_run("k1", "clean_task")
    clean.steps[1].content = "Make the parser accept trailing commas in JSON arrays and objects."
    source = ListSource([near_a, near_b, eval_test, in_source, copied, clean])
    build = make_build(hygiene=dpb.HygieneConfig(decontaminate_suites=["heldout"]))
    dataset = build_now(store, build, source)
    stats = dataset.hygiene_stats
    assert stats.near_duplicates_removed == 1
    assert stats.exact_duplicates_removed == 0
    assert stats.decontaminated_by_task_id == 1  # e2; e1 is not in run-1
    assert stats.decontaminated_by_content == 3  # every step of c1 has the copied problem in context
    assert sum(s.example_count for s in dataset.splits) == 1 + 3  # near_a + clean's three steps
    assert dataset.trajectory_count == 5

    keep = make_build(hygiene=dpb.HygieneConfig(near_duplicate_threshold=1.0, keep_exact_duplicates=True))
    kept = build_now(store, keep, ListSource([near_a, near_b]))
    assert kept.hygiene_stats.near_duplicates_removed == 0
    assert sum(s.example_count for s in kept.splits) == 2


def test_manifest_lineage_and_stats(store: FilesystemObjectStore) -> None:
    fails = [
        trajectory("f1", "p1", [user(problem("p1")), assistant("x")], resolved=False, patch=PATCH),
        trajectory(
            "f2",
            "p2",
            [user(problem("p2")), assistant("x")],
            resolved=False,
            failure=tpb.FAILURE_CATEGORY_SANDBOX_ERROR,
        ),
    ]
    trajectories = [*many_tasks(3), *fails]
    build = make_build(max_seq_length=50, formats=[dpb.OUTPUT_FORMAT_CHAT_MESSAGES, dpb.OUTPUT_FORMAT_ALPACA])
    dataset = build_now(store, build, ListSource(trajectories))
    assert dataset.id.startswith("ds-") and len(dataset.id) == 19
    ids = store.get_bytes(dataset.trajectory_ids.key).decode().split()
    assert ids == sorted(t.id for t in trajectories)
    assert dataset.failure_categories == {
        "RESOLVED": 6,
        "FAILURE_CATEGORY_TESTS_FAILED": 1,
        "FAILURE_CATEGORY_SANDBOX_ERROR": 1,
    }
    assert dataset.filter_reasons == {"infrastructure_failure": 1}
    manifest = json.loads(store.get_bytes(f"datasets/{dataset.id}/manifest.json"))
    assert manifest["id"] == dataset.id and manifest["recipe"] == "step_sft"
    assert manifest["parameters"]["require_valid_tool_call"] == "true"
    assert manifest["token_count_method"] == "approximate"
    # What the trainer reads (trainer-svc catalog.dataset_info): the kind and split -> file name.
    assert manifest["kind"] == "DATASET_KIND_SFT"
    assert manifest["files"]["train"] == "train.chat_messages.jsonl"
    assert len(manifest["dataset_files"]) == len(dataset.files)
    assert manifest["preview"] and "messages" in manifest["preview"][0]
    stats = dataset.token_stats
    assert (
        0 < stats.mean <= stats.p95 <= stats.max and stats.max_seq_length == 50 and stats.over_max_length > 0
    )
    assert dataset.cost_estimate.tokens_per_epoch == stats.total_train_tokens > 0
    assert {(f.format, f.file_format) for f in dataset.files} >= {
        (dpb.OUTPUT_FORMAT_CHAT_MESSAGES, dpb.FILE_FORMAT_JSONL),
        (dpb.OUTPUT_FORMAT_ALPACA, dpb.FILE_FORMAT_JSONL),
    }


def test_real_tokenizer_from_the_object_store(store: FilesystemObjectStore, tmp_path: Path) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel({"[UNK]": 0, "the": 1}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(tmp_path / "tokenizer.json"))
    store.put("base-models/tiny/tokenizer.json", (tmp_path / "tokenizer.json").read_bytes())
    from flywheel_dataset.tokens import load_counter

    counter = load_counter(store, "tiny", tmp_path)
    assert counter.exact and counter.name == "tiny"
    assert counter.count("the cat sat") == 3
    fallback = load_counter(store, "missing", tmp_path)
    assert not fallback.exact and "approximate" in fallback.name and fallback.count("abcdefgh") == 2


def test_interrupted_build_retried_gives_the_same_dataset(
    store: FilesystemObjectStore, tmp_path: Path
) -> None:
    trajectories = many_tasks(12)
    build = make_build("step_sft", file_formats=[dpb.FILE_FORMAT_JSONL, dpb.FILE_FORMAT_PARQUET])
    cancel = threading.Event()

    def stop_half_way(n: int) -> None:
        if n == len(trajectories) // 2:
            cancel.set()

    with pytest.raises(BuildCancelled):
        build_now(store, build, ListSource(trajectories, stop_half_way), cancel)
    assert not list(store.list("datasets/"))  # nothing published by the interrupted build

    first = build_now(store, build, ListSource(trajectories))
    files_first = {f.object.key: store.get_bytes(f.object.key) for f in first.files}
    # A fresh store and the store's order reversed: the same id and byte-identical files.
    other = FilesystemObjectStore(tmp_path / "other")
    other.ensure_ready()
    second = build_now(other, build, ListSource(list(reversed(trajectories))))
    assert second.id == first.id
    assert {f.object.key: other.get_bytes(f.object.key) for f in second.files} == files_first
    # Retrying into the same store reuses the published dataset.
    again = build_now(store, build, ListSource(trajectories))
    assert again.id == first.id and again.build_id == first.build_id


def test_the_trainer_reads_what_the_builder_writes(store: FilesystemObjectStore) -> None:
    """The contract with trainer-svc, checked with the trainer's own reader (catalog.py)."""
    from flywheel_trainer.catalog import check_rows, dataset_info, read_jsonl

    split = dpb.SplitConfig(train_ratio=0.5, validation_ratio=0.5)
    sft = build_now(store, make_build(split=split), ListSource(many_tasks(10)))
    info = dataset_info(store, sft.id)
    assert info.kind == "SFT" and info.train_key == f"datasets/{sft.id}/train.chat_messages.jsonl"
    assert info.validation_key == f"datasets/{sft.id}/validation.chat_messages.jsonl"
    check_rows(read_jsonl(store, info.train_key), info.kind, info.train_key)

    good = repo_run("g", "sum_list")
    bad = trajectory(
        "b",
        "sum_list",
        [sys_(), user(problem("sum_list")), assistant("{oops", parse_error=True)],
        resolved=False,
    )
    dpo = build_now(
        store, make_build("dpo_steps", split=dpb.SplitConfig(train_ratio=1.0)), ListSource([good, bad])
    )
    info = dataset_info(store, dpo.id)
    assert info.kind == "PREFERENCE" and info.train_key.endswith("/train.trl_preference.jsonl")
    check_rows(read_jsonl(store, info.train_key), info.kind, info.train_key)


def test_parquet_with_conflicting_tool_schemas(tmp_path: Path) -> None:
    """Free-form tool schemas that share no Arrow type fall back to JSON text, still loadable."""
    import pyarrow.parquet as pq

    from flywheel_dataset.build import jsonl_to_parquet

    def row(default: object) -> str:
        tool = {"type": "function", "function": {"name": "f", "parameters": {"default": default}}}
        return json.dumps({"messages": [{"role": "user", "content": "x"}], "tools": [tool]})

    src = tmp_path / "a.jsonl"
    src.write_text(row(1) + "\n" + row({"nested": True}) + "\n")
    jsonl_to_parquet(src, tmp_path / "a.parquet", batch_rows=1)
    table = pq.read_table(tmp_path / "a.parquet")
    assert table.schema.metadata[b"flywheel.tools_as_json"] == b"true"
    assert json.loads(table.column("tools")[1].as_py())[0]["function"]["parameters"] == {
        "default": {"nested": True}
    }

    same = tmp_path / "b.jsonl"
    same.write_text(row(1) + "\n" + row(2) + "\n")
    jsonl_to_parquet(same, tmp_path / "b.parquet", batch_rows=1)
    assert pq.read_table(tmp_path / "b.parquet").column("tools")[1].as_py()[0]["function"]["parameters"] == {
        "default": 2
    }


def test_a_build_without_train_examples_fails_and_says_why(store: FilesystemObjectStore) -> None:
    from flywheel_dataset.build import EmptyDataset

    with pytest.raises(EmptyDataset, match="the source matched no trajectories"):
        build_now(store, make_build(), ListSource([]))
    failed = repo_run("f", "sum_list", resolved=False)
    with pytest.raises(EmptyDataset, match=r"no TRAIN examples from 1 trajectories .*not_resolved=1"):
        build_now(store, make_build(parameters={"require_resolved": "true"}), ListSource([failed]))
    assert not list(store.list("datasets/"))
