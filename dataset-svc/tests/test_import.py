"""ImportDataset: OpenAI fine-tuning JSONL → a dataset the trainer reads, bad lines named."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from flywheel.dataset.v1 import dataset_pb2 as dpb
from flywheel_common.errors import InvalidArgument, NotFound
from flywheel_common.objectstore import FilesystemObjectStore
from flywheel_dataset.imports import import_dataset
from flywheel_dataset.tokens import TokenCounter
from flywheel_trainer.catalog import check_rows, dataset_info, read_jsonl

CHAT = [
    {
        "messages": [
            {"role": "developer", "content": "Answer briefly."},
            {
                "role": "user",
                "content": [{"type": "text", "text": "Capital of "}, {"type": "text", "text": "France?"}],
            },
            {"role": "assistant", "content": "Paris.", "weight": 1},
        ]
    },
    {
        "messages": [
            {"role": "user", "content": "List files"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {"id": "c1", "type": "function", "function": {"name": "ls", "arguments": "{}"}}
                ],
            },
            {"role": "tool", "tool_call_id": "c1", "content": "a.py"},
            {"role": "assistant", "content": "a.py"},
        ],
        "tools": [{"type": "function", "function": {"name": "ls", "parameters": {"type": "object"}}}],
    },
]
DPO = [
    {
        "input": {"messages": [{"role": "user", "content": "Capital of France?"}]},
        "preferred_output": [{"role": "assistant", "content": "Paris."}],
        "non_preferred_output": [{"role": "assistant", "content": "Lyon."}],
    }
]
COUNTER = TokenCounter(None, "approximate")


def jsonl(rows: list[object]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


@pytest.fixture
def store(tmp_path: Path) -> FilesystemObjectStore:
    s = FilesystemObjectStore(tmp_path / "objects")
    s.ensure_ready()
    return s


def run(store: FilesystemObjectStore, body: bytes, **kw: object) -> dpb.Dataset:
    store.put("uploads/f.jsonl", body, overwrite=True)
    request = dpb.ImportDatasetRequest(train_object_key="uploads/f.jsonl", train_name="file-abc", **kw)
    return import_dataset(store, request, "tiny", COUNTER)


def test_chat_file_becomes_an_sft_dataset_the_trainer_reads(store: FilesystemObjectStore) -> None:
    dataset = run(store, jsonl(CHAT))
    assert dataset.kind == dpb.DATASET_KIND_SFT and dataset.recipe == "import"
    assert dataset.splits[0].example_count == 2 and dataset.token_stats.total_train_tokens > 0
    info = dataset_info(store, dataset.id)
    rows = read_jsonl(store, info.train_key)
    check_rows(rows, info.kind, info.train_key)
    first = rows[0]["messages"]
    assert first[0] == {"role": "system", "content": "Answer briefly."}
    assert first[1]["content"] == "Capital of France?" and "weight" not in first[2]
    assert rows[1]["tools"][0]["function"]["name"] == "ls" and rows[1]["messages"][1]["content"] == ""
    # the same bytes again: the same dataset, nothing rewritten
    assert run(store, jsonl(CHAT)).id == dataset.id


def test_openai_dpo_file_becomes_trl_preference_rows(store: FilesystemObjectStore) -> None:
    dataset = run(store, jsonl(DPO), kind=dpb.DATASET_KIND_PREFERENCE)
    info = dataset_info(store, dataset.id)
    rows = read_jsonl(store, info.train_key)
    check_rows(rows, info.kind, info.train_key)
    assert rows == [
        {
            "prompt": [{"role": "user", "content": "Capital of France?"}],
            "chosen": [{"role": "assistant", "content": "Paris."}],
            "rejected": [{"role": "assistant", "content": "Lyon."}],
        }
    ]


def test_validate_only_writes_nothing(store: FilesystemObjectStore) -> None:
    dataset = run(store, jsonl(CHAT), validate_only=True)
    assert not store.exists(f"datasets/{dataset.id}/manifest.json")


@pytest.mark.parametrize(
    ("body", "kind", "expected"),
    [
        (jsonl(CHAT[:1]) + b'{"messages": [\n', 0, "file-abc line 2: not valid JSON"),
        (jsonl(CHAT[:1]) + jsonl([{"prompt": "x"}]), 0, "file-abc line 2: 'messages' is missing"),
        (jsonl([{"text": "hello"}]), 0, "file-abc line 1: not a fine-tuning example"),
        (
            jsonl([{"messages": [{"role": "user", "content": "hi"}]}]),
            0,
            "line 1: messages: no assistant message",
        ),
        (
            jsonl([{"messages": [{"role": "robot", "content": "hi"}]}]),
            0,
            "line 1: messages[0].role: must be one of",
        ),
        (jsonl(CHAT[:1]), dpb.DATASET_KIND_PREFERENCE, "line 1: 'input' is missing"),
        (b"\n\n", 0, "file-abc has no examples"),
        (b"\xff\xfe", 0, "not UTF-8"),
    ],
)
def test_a_bad_line_is_named(store: FilesystemObjectStore, body: bytes, kind: int, expected: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        run(store, body, kind=kind)
    assert err.value.field == "train_object_key"
    assert expected in str(err.value)


def test_missing_object_is_not_found(store: FilesystemObjectStore) -> None:
    with pytest.raises(NotFound):
        import_dataset(
            store, dpb.ImportDatasetRequest(train_object_key="uploads/none.jsonl"), "tiny", COUNTER
        )
