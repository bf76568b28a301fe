"""Datasets imported from user files (``ImportDataset``): OpenAI fine-tuning JSONL, no build.

The gateway's OpenAI-compatible ``/v1/fine_tuning/jobs`` hands every uploaded training file to
this module. Each line is checked and normalised into the layout the trainer reads
(``build.TRAINER_FORMATS``):

- **SFT**, OpenAI chat fine-tuning: ``{"messages": [{"role", "content", "tool_calls"?,
  "tool_call_id"?, "name"?}], "tools"?: [...]}`` with at least one assistant message. A content
  list of text parts is joined into one string, role ``developer`` becomes ``system`` (the chat
  templates know ``system``), and OpenAI's per-message ``weight`` and the row's
  ``parallel_tool_calls`` are dropped (the trainer learns every assistant turn).
- **PREFERENCE**, OpenAI DPO: ``{"input": {"messages", "tools"?}, "preferred_output": [msg],
  "non_preferred_output": [msg]}`` becomes TRL's ``{"prompt", "chosen", "rejected"}``; TRL rows
  are accepted as they are.
- **RL**: ``OUTPUT_FORMAT_GRPO_TOKENS`` records (token ids, behaviour log-probs, advantage).

The first bad line fails the whole import with ``INVALID_ARGUMENT`` naming the file, the line
number and what is wrong (``train_object_key: file-abc line 3: not valid JSON (…)``). The dataset
id is a hash of the kind, the target tokenizer and both files' bytes, so importing the same files
again returns the same dataset without writing anything.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from google.protobuf import json_format
from google.protobuf.timestamp_pb2 import Timestamp

from flywheel.common.v1 import common_pb2
from flywheel.dataset.v1 import dataset_pb2 as dpb
from flywheel_common.errors import InvalidArgument, NotFound, shown
from flywheel_common.objectstore import InvalidKeyError, ObjectNotFoundError, ObjectStore
from flywheel_dataset.build import TRAINER_FORMATS, manifest_to_dataset, trainer_files
from flywheel_dataset.formats import chatml_text, object_name
from flywheel_dataset.tokens import TokenCounter

RECIPE = "import"
ROLES = frozenset({"system", "developer", "user", "assistant", "tool"})
KIND_NAMES = {
    dpb.DATASET_KIND_SFT: "an SFT (chat 'messages')",
    dpb.DATASET_KIND_PREFERENCE: "a preference (DPO)",
    dpb.DATASET_KIND_RL: "an RL (GRPO token)",
}
#: Examples kept in the manifest's preview.
PREVIEW = 3
#: Lines longer than this are refused (a file of one giant line is not a fine-tuning file).
MAX_LINE_BYTES = 8 * 1024 * 1024


class LineError(ValueError):
    """What is wrong with one line (the caller adds the file and the line number)."""


@dataclass
class ParsedFile:
    """One file's examples, normalised to the trainer's layout."""

    kind: dpb.DatasetKind
    records: list[dict[str, Any]] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)


# ------------------------------------------------------------------------------------- detection


def detect_kind(row: Any) -> dpb.DatasetKind:
    """The dataset kind one example looks like; 0 when none."""
    if not isinstance(row, dict):
        return dpb.DATASET_KIND_UNSPECIFIED
    if "messages" in row:
        return dpb.DATASET_KIND_SFT
    if {"preferred_output", "non_preferred_output"} & row.keys() or {"chosen", "rejected"} & row.keys():
        return dpb.DATASET_KIND_PREFERENCE
    if "completion_token_ids" in row:
        return dpb.DATASET_KIND_RL
    return dpb.DATASET_KIND_UNSPECIFIED


# ------------------------------------------------------------------------------------- messages


def _text(content: Any, where: str) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for i, part in enumerate(content):
            if (
                not isinstance(part, dict)
                or part.get("type") != "text"
                or not isinstance(part.get("text"), str)
            ):
                raise LineError(
                    f"{where}.content[{i}]: only text parts are supported ({{'type': 'text', 'text': …}})"
                )
            parts.append(part["text"])
        return "".join(parts)
    raise LineError(
        f"{where}.content: must be a string or a list of text parts, got {type(content).__name__}"
    )


def normalise_message(msg: Any, where: str) -> dict[str, Any]:
    """One OpenAI chat message, checked, in the form the trainer's chat templates render."""
    if not isinstance(msg, dict):
        raise LineError(f"{where}: must be an object with 'role' and 'content'")
    role = msg.get("role")
    if role not in ROLES:
        raise LineError(f"{where}.role: must be one of {', '.join(sorted(ROLES))}, got {shown(role)}")
    out: dict[str, Any] = {"role": "system" if role == "developer" else role}
    calls = msg.get("tool_calls")
    if calls is not None:
        if role != "assistant" or not isinstance(calls, list) or not calls:
            raise LineError(f"{where}.tool_calls: only an assistant message has tool_calls, a non-empty list")
        for i, call in enumerate(calls):
            fn = call.get("function") if isinstance(call, dict) else None
            if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
                raise LineError(f"{where}.tool_calls[{i}]: needs 'function' with a 'name'")
        out["tool_calls"] = calls
    content = msg.get("content")
    if content is None:
        if calls is None:
            raise LineError(
                f"{where}.content: missing (only an assistant message with tool_calls may omit it)"
            )
        out["content"] = ""
    else:
        out["content"] = _text(content, where)
    for key in ("tool_call_id", "name"):
        if isinstance(msg.get(key), str):
            out[key] = msg[key]
    return out


def _messages(value: Any, where: str, *, need_assistant: bool) -> list[dict[str, Any]]:
    if not isinstance(value, list) or not value:
        raise LineError(f"{where}: must be a non-empty list of messages")
    msgs = [normalise_message(m, f"{where}[{i}]") for i, m in enumerate(value)]
    if need_assistant and not any(m["role"] == "assistant" for m in msgs):
        raise LineError(f"{where}: no assistant message to learn from")
    return msgs


def _tools(row: dict[str, Any], where: str) -> list[Any] | None:
    tools = row.get("tools")
    if tools is None:
        return None
    if not isinstance(tools, list) or not all(isinstance(t, dict) for t in tools):
        raise LineError(f"{where}: must be a list of tool objects")
    return tools


# ------------------------------------------------------------------------------------- examples


def sft_record(row: dict[str, Any]) -> dict[str, Any]:
    if "messages" not in row:
        raise LineError("'messages' is missing (an SFT example is {\"messages\": [...]})")
    record: dict[str, Any] = {"messages": _messages(row["messages"], "messages", need_assistant=True)}
    tools = _tools(row, "tools")
    if tools:
        record["tools"] = tools
    return record


def preference_record(row: dict[str, Any]) -> dict[str, Any]:
    if "prompt" in row and "chosen" in row and "rejected" in row:  # TRL's own layout
        return {
            "prompt": _messages(row["prompt"], "prompt", need_assistant=False),
            "chosen": _messages(row["chosen"], "chosen", need_assistant=True),
            "rejected": _messages(row["rejected"], "rejected", need_assistant=True),
        }
    for key in ("input", "preferred_output", "non_preferred_output"):
        if key not in row:
            raise LineError(
                f'\'{key}\' is missing (a DPO example is {{"input": {{"messages": [...]}}, '
                '"preferred_output": [...], "non_preferred_output": [...]}})'
            )
    given = row["input"]
    if not isinstance(given, dict) or "messages" not in given:
        raise LineError("input: must be an object with 'messages'")
    record: dict[str, Any] = {
        "prompt": _messages(given["messages"], "input.messages", need_assistant=False),
        "chosen": _messages(row["preferred_output"], "preferred_output", need_assistant=True),
        "rejected": _messages(row["non_preferred_output"], "non_preferred_output", need_assistant=True),
    }
    tools = _tools(given, "input.tools")
    if tools:
        record["tools"] = tools
    return record


def rl_record(row: dict[str, Any]) -> dict[str, Any]:
    for part in ("prompt_token_ids", "completion_token_ids"):
        ids = row.get(part)
        if not isinstance(ids, list) or not ids or not all(isinstance(i, int) and i >= 0 for i in ids):
            raise LineError(f"'{part}' must be a non-empty list of token ids")
    logprobs = row.get("behaviour_logprobs")
    if not isinstance(logprobs, list) or not all(isinstance(v, int | float) for v in logprobs):
        raise LineError("'behaviour_logprobs' must be a list of numbers")
    if len(logprobs) != len(row["completion_token_ids"]):
        raise LineError(
            f"{len(logprobs)} behaviour_logprobs for {len(row['completion_token_ids'])} completion tokens"
        )
    if not isinstance(row.get("advantage"), int | float):
        raise LineError("'advantage' must be a number")
    return row


CHECKS = {
    dpb.DATASET_KIND_SFT: sft_record,
    dpb.DATASET_KIND_PREFERENCE: preference_record,
    dpb.DATASET_KIND_RL: rl_record,
}


def _token_text(kind: dpb.DatasetKind, record: dict[str, Any]) -> str:
    if kind == dpb.DATASET_KIND_SFT:
        return chatml_text(record["messages"])
    prompt = chatml_text(record["prompt"])
    return prompt + max(chatml_text(record["chosen"]), chatml_text(record["rejected"]), key=len)


def parse_file(
    data: bytes, name: str, param: str, kind: dpb.DatasetKind, counter: TokenCounter
) -> ParsedFile:
    """Every example of one JSONL file, checked; ``kind`` 0 = the first example's kind.

    Raises :class:`InvalidArgument` on ``param`` naming ``name``, the line and the problem.
    """

    def fail(line: int, problem: str) -> InvalidArgument:
        return InvalidArgument(param, f"{name} line {line}: {problem}")

    parsed = ParsedFile(kind)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise InvalidArgument(param, f"{name} is not UTF-8 text (byte {err.start})") from None
    for number, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        if len(line) > MAX_LINE_BYTES:
            raise fail(number, f"longer than {MAX_LINE_BYTES} bytes")
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise fail(number, f"not valid JSON ({err.msg} at column {err.colno})") from None
        if not isinstance(row, dict):
            raise fail(number, f"must be a JSON object, got {type(row).__name__}")
        if parsed.kind == 0:
            parsed.kind = detect_kind(row)
            if parsed.kind == 0:
                raise fail(
                    number,
                    "not a fine-tuning example: expected 'messages' (SFT), 'input' / "
                    "'preferred_output' / 'non_preferred_output' (DPO) or 'completion_token_ids' (GRPO)",
                )
        try:
            record = CHECKS[parsed.kind](row)
        except LineError as err:
            raise fail(number, f"{err} ({KIND_NAMES[parsed.kind]} example expected)") from None
        parsed.records.append(record)
        if parsed.kind == dpb.DATASET_KIND_RL:
            parsed.tokens.append(len(record["prompt_token_ids"]) + len(record["completion_token_ids"]))
        else:
            parsed.tokens.append(counter.count(_token_text(parsed.kind, record)))
    if not parsed.records:
        raise InvalidArgument(param, f"{name} has no examples")
    return parsed


# ------------------------------------------------------------------------------------- import


def import_id(kind: dpb.DatasetKind, base_model: str, train: bytes, validation: bytes | None) -> str:
    digest = hashlib.sha256()
    for part in (str(kind).encode(), base_model.encode(), train, validation or b""):
        digest.update(hashlib.sha256(part).digest())
    digest.update(b"validation" if validation is not None else b"")
    return "ds-" + digest.hexdigest()[:16]


def _read(store: ObjectStore, key: str, param: str) -> bytes:
    if not key:
        raise InvalidArgument(param, "required")
    try:
        return store.get_bytes(key)
    except InvalidKeyError as err:
        raise InvalidArgument(param, f"{shown(key)} is not an object key: {err}") from None
    except ObjectNotFoundError:
        raise NotFound(f"{param}: no object {shown(key)} in the object store") from None


def import_dataset(
    store: ObjectStore, request: dpb.ImportDatasetRequest, base_model: str, counter: TokenCounter
) -> dpb.Dataset:
    """Check, normalise and (unless ``validate_only``) write the dataset. Blocking."""
    if request.kind not in (0, *CHECKS):
        raise InvalidArgument("kind", f"{request.kind} is not SFT, PREFERENCE or RL")
    train_raw = _read(store, request.train_object_key, "train_object_key")
    train = parse_file(
        train_raw, request.train_name or request.train_object_key, "train_object_key", request.kind, counter
    )
    validation = None
    val_raw = None
    if request.validation_object_key:
        val_raw = _read(store, request.validation_object_key, "validation_object_key")
        name = request.validation_name or request.validation_object_key
        validation = parse_file(val_raw, name, "validation_object_key", train.kind, counter)
    ds_id = import_id(train.kind, base_model, train_raw, val_raw)
    prefix = f"datasets/{ds_id}/"
    manifest_key = prefix + "manifest.json"
    if not request.validate_only and store.exists(manifest_key):
        existing = manifest_to_dataset(store.get_bytes(manifest_key))
        existing.manifest.key = manifest_key
        return existing
    output = TRAINER_FORMATS[train.kind]
    splits = [(dpb.DATASET_SPLIT_TRAIN, train)] + (
        [(dpb.DATASET_SPLIT_VALIDATION, validation)] if validation else []
    )
    lengths = sorted(n for _, part in splits for n in part.tokens)
    p95 = lengths[min(len(lengths) - 1, -(-95 * len(lengths) // 100) - 1)]
    created = Timestamp()
    created.GetCurrentTime()
    dataset = dpb.Dataset(
        id=ds_id,
        recipe=RECIPE,
        parameters={
            "train_object_key": request.train_object_key,
            "validation_object_key": request.validation_object_key,
        },
        kind=train.kind,
        splits=[
            dpb.SplitStats(split=split, example_count=len(part.records), task_count=len(part.records))
            for split, part in splits
        ],
        token_stats=dpb.TokenStats(
            tokenizer=counter.name,
            mean=sum(lengths) / len(lengths),
            p95=p95,
            max=lengths[-1],
            total_train_tokens=sum(train.tokens),
        ),
        labels=dict(request.labels),
        create_time=created,
    )
    bodies = {}
    for split, part in splits:
        key = prefix + object_name(split, output, dpb.FILE_FORMAT_JSONL)
        bodies[key] = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in part.records).encode()
        dataset.files.append(
            dpb.DatasetFile(
                split=split,
                format=output,
                file_format=dpb.FILE_FORMAT_JSONL,
                object=common_pb2.ObjectRef(
                    key=key, size_bytes=len(bodies[key]), sha256=hashlib.sha256(bodies[key]).hexdigest()
                ),
                example_count=len(part.records),
            )
        )
    if request.validate_only:
        return dataset
    for key, body in bodies.items():
        store.put(key, body, content_type="application/x-ndjson", overwrite=True)
    manifest = json_format.MessageToDict(dataset, preserving_proto_field_name=True)
    manifest["dataset_files"] = manifest.pop("files", [])
    manifest["files"] = trainer_files(dataset)
    manifest["token_count_method"] = "tokenizer" if counter.exact else "approximate"
    manifest["preview"] = train.records[:PREVIEW]
    raw = (json.dumps(manifest, ensure_ascii=False, indent=2, sort_keys=True) + "\n").encode()
    info = store.put(manifest_key, raw, content_type="application/json", overwrite=True)  # last
    dataset.manifest.CopyFrom(
        common_pb2.ObjectRef(key=manifest_key, size_bytes=info.size, sha256=info.sha256 or "")
    )
    return dataset
