"""Tool calls without a model: the Hermes parser (vLLM's semantics), streaming, the templates."""

from __future__ import annotations

import json

import pytest

from flywheel_model_server import toolcalls
from flywheel_model_server.templates import DEFAULT_CHAT_TEMPLATE, DEFAULT_TOOL_CHAT_TEMPLATE, implicit_stops

CALL_A = '<tool_call>\n{"name": "read_file", "arguments": {"rel_path": "a.py"}}\n</tool_call>'
CALL_B = '<tool_call>\n{"name": "grep", "arguments": {"pattern": "déjà vu"}}\n</tool_call>'
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "read_file",
            "description": "Read a file",
            "parameters": {"type": "object", "properties": {"rel_path": {"type": "string"}}},
        },
    }
]


def test_one_call() -> None:
    parsed = toolcalls.parse(CALL_A)
    assert parsed.called and parsed.content is None
    (call,) = parsed.calls
    assert call["type"] == "function" and call["id"].startswith("chatcmpl-tool-")
    assert call["function"] == {"name": "read_file", "arguments": '{"rel_path": "a.py"}'}


def test_several_calls_and_text_before() -> None:
    parsed = toolcalls.parse("Let me look.\n" + CALL_A + "\n" + CALL_B)
    assert parsed.called and parsed.content == "Let me look.\n"
    assert [c["function"]["name"] for c in parsed.calls] == ["read_file", "grep"]
    # Arguments are re-serialised as vLLM does: json.dumps(..., ensure_ascii=False).
    assert parsed.calls[1]["function"]["arguments"] == '{"pattern": "déjà vu"}'
    assert len({c["id"] for c in parsed.calls}) == 2


def test_unclosed_last_call_runs_to_the_end() -> None:
    parsed = toolcalls.parse(CALL_A + '<tool_call>\n{"name": "grep", "arguments": {"pattern": "x"}}')
    assert parsed.called and [c["function"]["name"] for c in parsed.calls] == ["read_file", "grep"]


@pytest.mark.parametrize(
    "text",
    [
        CALL_A
        + '<tool_call>\n{"name": "grep", "arguments": {"pattern": </tool_call>',  # bad JSON in one block
        '<tool_call>\n{"arguments": {}}\n</tool_call>',  # no name
        '<tool_call>\n{"name": "grep"}\n</tool_call>',  # no arguments
        "<tool_call>\n[1, 2]\n</tool_call>",  # not an object
        '<tool_call>\n{"name": 3, "arguments": {}}\n</tool_call>',  # name not a string
    ],
)
def test_malformed_calls_leave_the_whole_answer_as_content(text: str) -> None:
    parsed = toolcalls.parse(text)
    assert not parsed.called and parsed.calls == [] and parsed.content == text


def test_no_call() -> None:
    assert toolcalls.parse("just text") == toolcalls.Parsed(False, [], "just text")


def _stream(pieces: list[str], forced: str = "") -> tuple[str, list[dict]]:
    stream = toolcalls.StreamFilter(forced)
    content = "".join(stream.feed(piece) for piece in pieces)
    rest, calls = stream.finish()
    return content + rest, calls


@pytest.mark.parametrize(
    "text",
    [
        "plain answer with < and <tool but no call",
        "Thinking first. " + CALL_A,
        CALL_A + "\n" + CALL_B,
        "prefix " + CALL_A + '<tool_call>{"broken": ',
    ],
)
def test_streaming_gives_the_same_answer_as_the_whole(text: str) -> None:
    whole = toolcalls.parse(text)
    for size in (1, 3, 7):  # token-sized pieces, cutting the tags anywhere
        content, calls = _stream([text[i : i + size] for i in range(0, len(text), size)])
        assert (content or None) == whole.content
        assert [c["function"] for c in calls] == [c["function"] for c in whole.calls]


def test_streaming_never_sends_part_of_a_tag_as_content() -> None:
    stream = toolcalls.StreamFilter()
    assert stream.feed("Hi <tool") == "Hi "
    assert stream.feed("_c") == ""
    assert stream.feed("all>\n{") == ""
    assert stream.feed("x") == ""


def test_call_deltas_name_first_then_arguments() -> None:
    calls = toolcalls.parse(CALL_A + CALL_B).calls
    deltas = toolcalls.call_deltas(calls)
    assert deltas[0] == {
        "index": 0,
        "id": calls[0]["id"],
        "type": "function",
        "function": {"name": "read_file"},
    }
    assert deltas[1] == {"index": 0, "function": {"arguments": '{"rel_path": "a.py"}'}}
    assert deltas[2]["index"] == 1 and deltas[2]["function"] == {"name": "grep"}


def test_forced_starts() -> None:
    assert toolcalls.forced_start("auto") == toolcalls.forced_start("none") == ""
    assert toolcalls.forced_start("required") == "<tool_call>\n"
    named = toolcalls.forced_start("function:read_file")
    completed = toolcalls.parse(named + '{"rel_path": "a.py"}}\n</tool_call>')
    assert completed.called and completed.calls[0]["function"]["name"] == "read_file"


# ------------------------------------------------------------------------------------------ templates


def _render(template: str, messages: list[dict], tools: list[dict] | None = None) -> str:
    """What apply_chat_template(tokenize=False) renders (the same function)."""
    from transformers.utils.chat_template_utils import render_jinja_template

    rendered, _ = render_jinja_template(
        [messages], tools=tools, chat_template=template, add_generation_prompt=True
    )
    return rendered[0]


CONVERSATIONS = [
    [{"role": "user", "content": "hi"}],
    [{"role": "system", "content": "be terse"}, {"role": "user", "content": "hi"}],
    [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
        {"role": "user", "content": "and?"},
    ],
]


@pytest.mark.parametrize("messages", CONVERSATIONS)
def test_tool_template_renders_like_the_default_without_tools(messages: list[dict]) -> None:
    assert _render(DEFAULT_TOOL_CHAT_TEMPLATE, messages) == _render(DEFAULT_CHAT_TEMPLATE, messages)
    assert implicit_stops(DEFAULT_TOOL_CHAT_TEMPLATE) == implicit_stops(DEFAULT_CHAT_TEMPLATE)


def test_tool_template_writes_tools_calls_and_results() -> None:
    messages = [
        {"role": "system", "content": "be terse"},
        {"role": "user", "content": "fix it"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {
                    "id": "c1",
                    "type": "function",
                    "function": {"name": "read_file", "arguments": '{"rel_path": "a.py"}'},
                },
                {
                    "id": "c2",
                    "type": "function",
                    "function": {"name": "grep", "arguments": {"pattern": "déjà vu"}},
                },
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "x = 1"},
    ]
    text = _render(DEFAULT_TOOL_CHAT_TEMPLATE, messages, TOOLS)
    assert text.startswith("<|system|>\nbe terse\n\n# Tools\n")
    assert "<tools>\n" + json.dumps(TOOLS[0], ensure_ascii=False) + "\n</tools>" in text
    # The calls are written exactly as the parser reads them, so a model that learns the format
    # from its history writes calls the parser accepts.
    assert "<|assistant|>\n" + CALL_A + "\n" + CALL_B + "<|end|>\n" in text
    assert toolcalls.parse(CALL_A + "\n" + CALL_B).called
    assert text.endswith("<|tool|>\nx = 1<|end|>\n<|assistant|>\n")
    # Without a system message the tools get one of their own.
    alone = _render(DEFAULT_TOOL_CHAT_TEMPLATE, [{"role": "user", "content": "hi"}], TOOLS)
    assert alone.startswith("<|system|>\n# Tools\n") and "<|end|>\n<|user|>\nhi<|end|>\n" in alone


def test_templates_without_tool_support_get_the_conversation_folded() -> None:
    # A template that insists on alternating user/assistant turns (as Gemma 3's does).
    strict = (
        "{% for m in messages %}{% if (m['role'] == 'user') != (loop.index0 % 2 == 0) %}"
        "{{ raise_exception('roles must alternate') }}{% endif %}"
        "<{{ m['role'] }}>{{ m['content'] }}</{{ m['role'] }}>{% endfor %}<assistant>"
    )
    assert not toolcalls.template_knows_tools(strict)
    assert toolcalls.template_knows_tools(DEFAULT_TOOL_CHAT_TEMPLATE)
    messages = [
        {"role": "system", "content": "be terse"},
        {"role": "user", "content": "fix it"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {"function": {"name": "read_file", "arguments": '{"rel_path": "a.py"}'}},
                {"function": {"name": "grep", "arguments": '{"pattern": "déjà vu"}'}},
            ],
        },
        {"role": "tool", "content": "x = 1"},
        {"role": "tool", "content": "no match"},
    ]
    folded = toolcalls.fold_tools(messages, TOOLS)
    assert [m["role"] for m in folded] == ["system", "user", "assistant", "user"]
    assert "<tools>" in folded[0]["content"] and folded[0]["content"].startswith("be terse\n\n# Tools")
    assert folded[2]["content"] == CALL_A + "\n" + CALL_B
    assert (
        folded[3]["content"]
        == "<tool_response>\nx = 1\n</tool_response>\n<tool_response>\nno match\n</tool_response>"
    )
    _render(strict, folded[1:])  # renders: the roles alternate
