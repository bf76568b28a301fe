"""Output record layouts: one function per OutputFormat, Example → JSON-ready dict.

Layouts (what the trainer and hosted fine-tuning APIs read):

- CHAT_MESSAGES: ``{"messages": [...], "tools": [...]}`` (``tools`` only when the trajectory
  offered native tools) — OpenAI / Together chat fine-tuning and TRL's conversational SFT.
- CHATML: ``{"text": "<|im_start|>role\\n…<|im_end|>\\n…"}`` — TRL's language-modeling SFT.
- ALPACA: ``{"instruction", "input", "output"}``.
- SHAREGPT: ``{"conversations": [{"from": "system|human|gpt|tool", "value"}]}``.
- TOGETHER_DPO: ``{"input": {"messages"}, "preferred_output": [msg], "non_preferred_output": [msg]}``.
- TRL_PREFERENCE: ``{"prompt": [msgs], "chosen": [msg], "rejected": [msg]}`` — TRL's
  conversational preference format, read as-is by DPOTrainer.
- GRPO_TOKENS: one assistant turn's token ids, behaviour log-probs and advantage (``rl.py``) —
  the trainer's GRPO jobs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flywheel.dataset.v1 import dataset_pb2 as dpb
from flywheel_dataset.examples import Example
from flywheel_dataset.messages import Message, message_text

Record = dict[str, Any]

# Short names used in object keys and on the command line.
FORMAT_NAMES = {
    dpb.OUTPUT_FORMAT_CHAT_MESSAGES: "chat_messages",
    dpb.OUTPUT_FORMAT_CHATML: "chatml",
    dpb.OUTPUT_FORMAT_ALPACA: "alpaca",
    dpb.OUTPUT_FORMAT_SHAREGPT: "sharegpt",
    dpb.OUTPUT_FORMAT_TOGETHER_DPO: "together_dpo",
    dpb.OUTPUT_FORMAT_TRL_PREFERENCE: "trl_preference",
    dpb.OUTPUT_FORMAT_GRPO_TOKENS: "grpo_tokens",
}
SPLIT_NAMES = {
    dpb.DATASET_SPLIT_TRAIN: "train",
    dpb.DATASET_SPLIT_VALIDATION: "validation",
    dpb.DATASET_SPLIT_TEST: "test",
}
FILE_EXTENSIONS = {dpb.FILE_FORMAT_JSONL: "jsonl", dpb.FILE_FORMAT_PARQUET: "parquet"}


def chatml_text(messages: list[Message]) -> str:
    """ChatML rendering; tool calls are appended to the assistant text as a JSON list."""
    return "".join(f"<|im_start|>{m['role']}\n{message_text(m)}<|im_end|>\n" for m in messages)


def _chat_messages(example: Example) -> Record:
    record: Record = {"messages": example.messages}
    if example.tools:
        record["tools"] = example.tools
    return record


def _chatml(example: Example) -> Record:
    return {"text": chatml_text(example.messages)}


def _alpaca(example: Example) -> Record:
    target = message_text(example.messages[-1])
    if example.instruction is not None:
        return {"instruction": example.instruction, "input": example.input or "", "output": target}
    # A conversation: the instruction is the system prompt and the task, the input is the rest
    # of the context as a transcript.
    context = example.messages[:-1]
    head = [m for m in context[:2] if m["role"] in ("system", "user")]
    if not head or head[-1]["role"] != "user":
        head = [m for m in context[:1] if m["role"] == "user"]
    rest = context[len(head) :]
    instruction = "\n\n".join(m["content"] for m in head)
    transcript = "\n\n".join(f"[{m['role']}]\n{message_text(m)}" for m in rest)
    return {"instruction": instruction, "input": transcript, "output": target}


_SHAREGPT_ROLES = {"system": "system", "user": "human", "assistant": "gpt", "tool": "tool"}


def _sharegpt(example: Example) -> Record:
    return {
        "conversations": [
            {"from": _SHAREGPT_ROLES[m["role"]], "value": message_text(m)} for m in example.messages
        ]
    }


def _together_dpo(example: Example) -> Record:
    prompt: Record = {"messages": example.messages}
    if example.tools:
        prompt["tools"] = example.tools
    return {
        "input": prompt,
        "preferred_output": [example.chosen],
        "non_preferred_output": [example.rejected],
    }


def _grpo_tokens(example: Example) -> Record:
    assert example.record is not None  # RL recipes make their records themselves
    return example.record


def _trl_preference(example: Example) -> Record:
    return {"prompt": example.messages, "chosen": [example.chosen], "rejected": [example.rejected]}


FORMATTERS: dict[dpb.OutputFormat, Callable[[Example], Record]] = {
    dpb.OUTPUT_FORMAT_CHAT_MESSAGES: _chat_messages,
    dpb.OUTPUT_FORMAT_CHATML: _chatml,
    dpb.OUTPUT_FORMAT_ALPACA: _alpaca,
    dpb.OUTPUT_FORMAT_SHAREGPT: _sharegpt,
    dpb.OUTPUT_FORMAT_TOGETHER_DPO: _together_dpo,
    dpb.OUTPUT_FORMAT_TRL_PREFERENCE: _trl_preference,
    dpb.OUTPUT_FORMAT_GRPO_TOKENS: _grpo_tokens,
}


def render(example: Example, output_format: dpb.OutputFormat) -> Record:
    return FORMATTERS[output_format](example)


def object_name(split: dpb.DatasetSplit, output_format: dpb.OutputFormat, file_format: dpb.FileFormat) -> str:
    """File name inside ``datasets/<id>/``: ``<split>.<format>.<jsonl|parquet>``."""
    return f"{SPLIT_NAMES[split]}.{FORMAT_NAMES[output_format]}.{FILE_EXTENSIONS[file_format]}"
