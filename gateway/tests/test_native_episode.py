"""One real native-protocol episode: the orchestrator's episode driver → the gateway (fast path) →
the embedded model server → a tool call parsed out of a real model's answer → the real sandbox.

A random tiny model never writes a tool call, and a scripted one would skip the parser. So the
model is fine-tuned here, in a few seconds on the CPU, to act like an agent on this prompt: its
tokenizer is word-level with a few whole strings as added tokens (the chat template's role
markers, and the text of one Hermes tool call), and it learns from two conversations rendered
with the server's own default chat template — the orchestrator's native system prompt, the task,
the tools — to answer the first turn with the call ``list_files {"rel_dir": "."}`` and, once a
``<|tool|>`` result follows, to answer ``done``. Everything after that is the real path: the
server renders the tools into the prompt, generates, parses the call into OpenAI ``tool_calls``;
the driver runs the tool, sends the result back as a ``tool`` message, gets the final answer and
runs the task's tests in the sandbox (they fail: the model fixes nothing; the episode is about
the protocol, not the fix).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from .conftest import MASTER_KEY, _stop
from .test_model_server import _wait

ROOT = Path(__file__).resolve().parents[2]
MINI = ROOT / "services" / "orchestrator" / "tests" / "fixtures" / "mini"
CALL = '<tool_call>\n{"name": "list_files", "arguments": {"rel_dir": "."}}\n</tool_call>'
MARKERS = ["<|system|>", "<|user|>", "<|assistant|>", "<|tool|>", "<|end|>"]
WORDS = "done the a file tests bug fix python".split()


def conversations(task: Any) -> list[tuple[list[dict], list[dict], str]]:
    """(messages, tools, answer) pairs: the first turn of the episode and the turn after the call."""
    from flywheel_orchestrator import protocol as proto

    tools = [t.to_openai() for t in proto.tools_for(task, proto.NATIVE)]
    start = [
        {"role": "system", "content": proto.system_prompt(task, proto.NATIVE)},
        {"role": "user", "content": proto.task_prompt(task)},
    ]
    call = {
        "id": "c1",
        "type": "function",
        "function": {"name": "list_files", "arguments": '{"rel_dir": "."}'},
    }
    after = [
        *start,
        {"role": "assistant", "content": "", "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "c1", "content": "calc.py\ntests/test_calc.py"},
    ]
    return [(start, tools, CALL), (after, tools, "done")]


def build_agent_model(folder: Path, task: Any) -> None:
    import torch
    from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from flywheel_model_server.templates import DEFAULT_TOOL_CHAT_TEMPLATE

    vocab = {w: i for i, w in enumerate(["<pad>", "<s>", "</s>", "<unk>", *WORDS])}
    words = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    words.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=words, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )
    tokenizer.add_tokens([AddedToken(t, normalized=False) for t in [*MARKERS, CALL]])
    tokenizer.save_pretrained(folder)  # no chat template: the server uses its documented default
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                         bos_token_id=1, eos_token_id=2, pad_token_id=0)  # fmt: skip
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    examples = []
    for messages, tools, answer in conversations(task):
        prompt = tokenizer.apply_chat_template(
            messages,
            chat_template=DEFAULT_TOOL_CHAT_TEMPLATE,
            tools=tools,
            add_generation_prompt=True,
            tokenize=False,
        )
        ids = tokenizer(prompt, add_special_tokens=False).input_ids
        target = [*tokenizer(answer, add_special_tokens=False).input_ids, tokenizer.eos_token_id]
        assert len(target) == 2, target  # the call is one token, "done" is one word
        examples.append((ids, target))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(200):
        loss = torch.zeros(())
        for ids, target in examples:
            inputs = torch.tensor([ids + target])
            labels = torch.tensor([[-100] * len(ids) + target])
            loss = loss + model(input_ids=inputs, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if loss.item() < 1e-3:
            break
    assert loss.item() < 0.05, f"the tiny agent did not learn its two answers (loss {loss.item():.3f})"
    model.save_pretrained(folder)


@pytest.fixture(scope="module")
def mini_task() -> Any:
    from flywheel_orchestrator.suites import load_folder

    return load_folder(MINI).tasks["add-bug"]


@pytest.fixture(scope="module")
def stack(
    mini_task: Any, nats_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, str]]:
    """The tuned model behind the real model server and gateway, and the real sandbox runner."""
    from flywheel_testing.processes import start_module

    root = tmp_path_factory.mktemp("native")
    build_agent_model(root / "model", mini_task)
    started: list[subprocess.Popen] = []
    try:
        ready, log = root / "ms.ready", root / "ms.log"
        env = {**os.environ, "FLYWHEEL_MODEL_SERVER_MODEL_PATH": str(root / "model"),
               "FLYWHEEL_MODEL_SERVER_BASE_MODEL": "tiny-agent", "FLYWHEEL_MODEL_SERVER_DEVICE": "cpu",
               "FLYWHEEL_MODEL_SERVER_DTYPE": "float32", "FLYWHEEL_MODEL_SERVER_TORCH_THREADS": "1",
               "FLYWHEEL_MODEL_SERVER_HOST": "127.0.0.1", "FLYWHEEL_MODEL_SERVER_PORT": "0",
               "FLYWHEEL_MODEL_SERVER_READY_FILE": str(ready), "FLYWHEEL_OBJECT_STORE_BACKEND": "fs",
               "FLYWHEEL_OBJECT_STORE_ROOT": str(root / "objects"), "FLYWHEEL_MODEL_SERVER_LOG_FORMAT": "text"}  # fmt: skip
        with open(log, "wb") as out:
            started.append(subprocess.Popen([sys.executable, "-m", "flywheel_model_server"], env=env, stdout=out,
                                            stderr=subprocess.STDOUT))  # fmt: skip
        model_server = f"http://127.0.0.1:{_wait(started[-1], ready, log)['port']}"
        deadline = time.monotonic() + 120
        while httpx.get(f"{model_server}/health/ready", timeout=5).status_code != 200:
            assert time.monotonic() < deadline and started[-1].poll() is None, log.read_text()[-3000:]
            time.sleep(0.2)
        ready, log = root / "gw.ready", root / "gw.log"
        env = {**os.environ, "FLYWHEEL_GATEWAY_MASTER_KEY": MASTER_KEY, "FLYWHEEL_GATEWAY_HOST": "127.0.0.1",
               "FLYWHEEL_GATEWAY_PORT": "0", "FLYWHEEL_GATEWAY_READY_FILE": str(ready),
               "FLYWHEEL_GATEWAY_MODEL_SERVER_URL": f"{model_server}/v1",
               "FLYWHEEL_GATEWAY_BASE_MODELS": '["tiny-agent"]', "FLYWHEEL_GATEWAY_CONFIG_DIR": str(root / "gw"),
               "FLYWHEEL_GATEWAY_LOG_FORMAT": "text"}  # fmt: skip
        with open(log, "wb") as out:
            started.append(subprocess.Popen([sys.executable, "-m", "flywheel_gateway", "serve"], env=env,
                                            stdout=out, stderr=subprocess.STDOUT))  # fmt: skip
        gateway = f"http://127.0.0.1:{_wait(started[-1], ready, log)['port']}"
        sandbox_env = {"FLYWHEEL_NATS_URL": nats_url, "FLYWHEEL_OBJECT_STORE_BACKEND": "fs",
                       "FLYWHEEL_OBJECT_STORE_ROOT": str(root / "objects")}  # fmt: skip
        sandbox, info, _ = start_module("flywheel_sandbox", "FLYWHEEL_SANDBOX_", sandbox_env, root)
        started.append(sandbox)
        yield {"model_server": model_server, "gateway": gateway, "sandbox": f"127.0.0.1:{info['port']}",
               "model": str(root / "model")}  # fmt: skip
    finally:
        for proc in reversed(started):
            _stop(proc)


async def test_native_protocol_episode_on_the_embedded_server(stack: dict[str, str], mini_task: Any) -> None:
    from flywheel.common.v1 import common_pb2
    from flywheel.orchestrator.v1 import run_pb2
    from flywheel.trajectory.v1 import trajectory_pb2 as tpb
    from flywheel_orchestrator.agent import Episode, EpisodeSpec, Limits
    from flywheel_orchestrator.model import ModelClient
    from flywheel_orchestrator.sandbox import SandboxClient

    spec = EpisodeSpec(
        trajectory_id="native-e2e",
        run_id="native-e2e",
        attempt=0,
        suite="mini",
        suite_version="1",
        task=mini_task,
        protocol=common_pb2.TOOL_PROTOCOL_NATIVE,
        test_policy=run_pb2.TEST_POLICY_END,
        limits=Limits(
            max_iterations=4,
            max_tokens=100_000,
            max_wall_time_s=180,
            max_consecutive_parse_errors=2,
            max_loop_detections=2,
            model_timeout_s=60,
        ),
        sampling=common_pb2.SamplingParams(temperature=0.0, max_tokens=8),
        teacher_kind=tpb.TEACHER_KIND_MODEL,
        policy_info=tpb.Policy(model="tiny-agent"),
    )
    models = ModelClient(f"{stack['gateway']}/v1", MASTER_KEY, max_retries=1, timeout_s=60, concurrency=1)
    sandbox = SandboxClient(stack["sandbox"])
    try:
        # record_tokens: the run setting that stores each turn's sampled ids and log-probs.
        trajectory = await Episode(spec, models.policy("tiny-agent", record_tokens=True), sandbox).run()
    finally:
        await models.close()
        await sandbox.close()
    roles = [tpb.Role.Name(step.role) for step in trajectory.steps]
    assert roles == ["ROLE_SYSTEM", "ROLE_USER", "ROLE_ASSISTANT", "ROLE_TOOL", "ROLE_ASSISTANT"], roles
    call_turn, tool_step, final = trajectory.steps[2], trajectory.steps[3], trajectory.steps[4]
    # The model's answer was parsed into an OpenAI tool call by the server, not by the driver.
    (call,) = call_turn.tool_calls
    assert call.name == "list_files" and json.loads(call.arguments_json) == {"rel_dir": "."}
    assert call.id.startswith("chatcmpl-tool-") and call_turn.finish_reason == "tool_calls"
    assert not call_turn.HasField("parse_error") and call_turn.content == ""
    # The driver ran it on the task's files and answered with a tool message for that call.
    assert tool_step.tool_call_id == call.id and tool_step.tool_result.status == tpb.TOOL_RESULT_STATUS_OK
    assert "calc" in tool_step.content
    assert final.content == "done" and not final.tool_calls and final.finish_reason == "stop"
    # It ended normally: the final tests ran in the sandbox (and fail, the model fixed nothing).
    assert trajectory.outcome.failure_category == tpb.FAILURE_CATEGORY_NO_CHANGE, trajectory.outcome

    # Token records: both model turns carry the ids the server sampled and their log-probs, and
    # they are the real thing — the text decodes from the ids, and the model, scoring the
    # stored prompt + completion ids itself, gives the stored log-probs back.
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(stack["model"])
    model = AutoModelForCausalLM.from_pretrained(stack["model"], torch_dtype=torch.float32).eval()
    for turn in (call_turn, final):
        record = turn.tokens
        prompt, ids, lps = (
            list(record.prompt_token_ids),
            list(record.completion_token_ids),
            list(record.completion_logprobs),
        )
        assert prompt and ids and len(lps) == len(ids), record
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([prompt + ids])).logits[0, len(prompt) - 1 : -1]
        rescored = torch.log_softmax(logits.float(), -1).gather(1, torch.tensor(ids)[:, None])[:, 0]
        assert torch.allclose(rescored, torch.tensor(lps), atol=1e-3), (rescored.tolist(), lps)
    assert tokenizer.decode(final.tokens.completion_token_ids, skip_special_tokens=True) == "done"
    assert tokenizer.decode(call_turn.tokens.completion_token_ids, skip_special_tokens=True) == CALL
    # The second call's prompt holds the first call's sampled ids as the chat template renders them.
    assert len(final.tokens.prompt_token_ids) > len(call_turn.tokens.prompt_token_ids)
