"""Every output format loads with `datasets` (JSONL and Parquet); the SFT layouts TRL reads
(chat messages with native tool calls, ChatML text) pass SFTTrainer's preprocessing, and the
preference layout passes DPOTrainer's, on a tiny randomly initialised Llama with a BPE tokenizer
trained here (no weights are downloaded)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
from dataset_fixtures import (
    SYSTEM,
    ListSource,
    assistant,
    build_now,
    call,
    make_build,
    problem,
    repo_run,
    result,
    sys_,
    trajectory,
    user,
)

from flywheel.common.v1 import common_pb2
from flywheel.dataset.v1 import dataset_pb2 as dpb
from flywheel.trajectory.v1 import trajectory_pb2 as tpb
from flywheel_common.objectstore.fs import FilesystemObjectStore

datasets = pytest.importorskip("datasets", reason="test extra of dataset-svc")  # installed by make install
trl = pytest.importorskip("trl", reason="test extra of dataset-svc")

CHAT_TEMPLATE = (
    "{%- if tools %}<|im_start|>system\nTools: {{ tools | tojson }}<|im_end|>\n{% endif %}"
    "{%- for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content or '' }}"
    "{%- if m.tool_calls %}{{ m.tool_calls | tojson }}{% endif %}<|im_end|>\n{% endfor %}"
    "{%- if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def native_run(tid: str, task: str) -> tpb.Trajectory:
    steps = [
        sys_("agent"),
        user(f"Fix {task}: it crashes on empty input."),
        tpb.Step(
            role=tpb.ROLE_ASSISTANT,
            tool_calls=[
                tpb.ToolCall(id=f"call_{tid}", name="read_file", arguments_json='{"rel_path": "a.py"}')
            ],
        ),
        tpb.Step(
            role=tpb.ROLE_TOOL,
            tool_call_id=f"call_{tid}",
            content="print(1)",
            tool_result=tpb.ToolResult(status=1),
        ),
        tpb.Step(role=tpb.ROLE_ASSISTANT, content=f"Done with {task}."),
    ]
    t = trajectory(tid, task, steps, protocol=common_pb2.TOOL_PROTOCOL_NATIVE)
    t.tools.append(
        tpb.ToolDefinition(
            name="read_file",
            description="Read a file",
            parameters_json_schema='{"type": "object", "properties": {"rel_path": {"type": "string"}}}',
        )
    )
    return t


def dpo_runs(task: str) -> list[tpb.Trajectory]:
    bad = trajectory(
        f"{task}-bad",
        task,
        [
            sys_(),
            user(problem(task)),
            assistant("{oops", parse_error=True),
            user("not JSON"),
            assistant(call("list_files", rel_dir=".")),
            result("x"),
        ],
        resolved=False,
    )
    return [repo_run(f"{task}-good", task), bad]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[object, object]:
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    corpus = [
        SYSTEM,
        problem("sum_list"),
        call("list_files", rel_dir="."),
        "[tool_result] def return tools",
    ] * 3
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(
        corpus,
        trainers.BpeTrainer(
            vocab_size=400,
            special_tokens=["<pad>", "<|im_start|>", "<|im_end|>"],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        ),
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe, pad_token="<pad>", eos_token="<|im_end|>", bos_token="<|im_start|>"
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=4096,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    return LlamaForCausalLM(config), tokenizer


def _local(store: FilesystemObjectStore, key: str, tmp: Path) -> str:
    path = tmp / key.replace("/", "_")
    path.write_bytes(store.get_bytes(key))
    return str(path)


def _load(path: str) -> object:
    kind = "parquet" if path.endswith(".parquet") else "json"
    return datasets.load_dataset(kind, data_files=path, split="train")


@pytest.fixture(scope="module")
def built(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[FilesystemObjectStore, dpb.Dataset, dpb.Dataset, Path]:
    tmp = tmp_path_factory.mktemp("formats")
    store = FilesystemObjectStore(tmp / "objects")
    store.ensure_ready()
    both = [dpb.FILE_FORMAT_JSONL, dpb.FILE_FORMAT_PARQUET]
    no_split = dpb.SplitConfig(train_ratio=1.0)
    sft = build_now(
        store,
        make_build(
            "step_sft",
            formats=list(dpb.OutputFormat.values())[1:5],
            file_formats=both,
            split=no_split,
            hygiene=dpb.HygieneConfig(near_duplicate_threshold=1.0),
        ),
        ListSource([native_run("n1", "alpha"), native_run("n2", "beta"), repo_run("j1", "gamma")]),
    )
    dpo = build_now(
        store,
        make_build(
            "dpo_steps",
            formats=[dpb.OUTPUT_FORMAT_TRL_PREFERENCE, dpb.OUTPUT_FORMAT_TOGETHER_DPO],
            file_formats=both,
            split=no_split,
        ),
        ListSource([*dpo_runs("sum_list"), *dpo_runs("mean")]),
    )
    return store, sft, dpo, tmp


def test_every_format_loads_with_datasets(built: tuple) -> None:
    store, sft, dpo, tmp = built
    assert len(sft.files) == 8 and len(dpo.files) == 4
    expected_columns = {
        dpb.OUTPUT_FORMAT_CHAT_MESSAGES: {"messages", "tools"},
        dpb.OUTPUT_FORMAT_CHATML: {"text"},
        dpb.OUTPUT_FORMAT_ALPACA: {"instruction", "input", "output"},
        dpb.OUTPUT_FORMAT_SHAREGPT: {"conversations"},
        dpb.OUTPUT_FORMAT_TRL_PREFERENCE: {"prompt", "chosen", "rejected"},
        dpb.OUTPUT_FORMAT_TOGETHER_DPO: {"input", "preferred_output", "non_preferred_output"},
    }
    for f in [*sft.files, *dpo.files]:
        ds = _load(_local(store, f.object.key, tmp))
        assert len(ds) == f.example_count > 0, f.object.key
        assert set(ds.column_names) == expected_columns[f.format], f.object.key
    chat = _load(_local(store, f"datasets/{sft.id}/train.chat_messages.parquet", tmp))
    native = [row for row in chat if row["tools"]]
    assert native and native[0]["tools"][0]["function"]["name"] == "read_file"
    calls = [m for row in native for m in row["messages"] if m["tool_calls"]]
    assert calls[0]["tool_calls"][0]["function"] == {"name": "read_file", "arguments": '{"rel_path": "a.py"}'}


@pytest.mark.slow
def test_trl_sft_and_dpo_preprocessing_accept_the_files(built: tuple, tiny: tuple, tmp_path: Path) -> None:
    from trl import DPOConfig, DPOTrainer, SFTConfig, SFTTrainer

    store, sft, dpo, tmp = built
    model, tokenizer = tiny
    for name in ("chat_messages.jsonl", "chatml.parquet", "chat_messages.parquet", "chatml.jsonl"):
        ds = _load(_local(store, f"datasets/{sft.id}/train.{name}", tmp))
        args = SFTConfig(
            output_dir=str(tmp_path / "sft"),
            max_length=512,
            report_to=[],
            max_steps=1,
            per_device_train_batch_size=2,
            use_cpu=True,
        )
        trainer = SFTTrainer(model=model, args=args, train_dataset=ds, processing_class=tokenizer)
        processed = trainer.train_dataset
        assert "input_ids" in processed.column_names and len(processed) == len(ds)
        first = tokenizer.decode(processed[0]["input_ids"])
        assert "<|im_start|>assistant" in first
    trainer.train()  # one optimisation step on the last one: the batches collate

    for name in ("trl_preference.jsonl", "trl_preference.parquet"):
        ds = _load(_local(store, f"datasets/{dpo.id}/train.{name}", tmp))
        args = DPOConfig(
            output_dir=str(tmp_path / "dpo"),
            max_length=512,
            report_to=[],
            max_steps=1,
            per_device_train_batch_size=2,
            use_cpu=True,
        )
        trainer = DPOTrainer(
            model=model,
            ref_model=copy.deepcopy(model),
            args=args,
            train_dataset=ds,
            processing_class=tokenizer,
        )
        columns = set(trainer.train_dataset.column_names)
        assert {"prompt_ids", "chosen_ids", "rejected_ids"} <= columns, columns
        assert len(trainer.train_dataset) == len(ds)
    trainer.train()
