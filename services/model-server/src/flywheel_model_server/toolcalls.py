"""Tool calls in the Hermes format: ``<tool_call>{"name": …, "arguments": {…}}</tool_call>``.

This is the format the default chat template asks for (``templates.DEFAULT_TOOL_CHAT_TEMPLATE``)
and the one vLLM's ``hermes`` tool-call parser reads, so the chart's vLLM runs with
``--tool-call-parser hermes`` and both servers answer alike. The parsing follows that parser's
semantics:

* every ``<tool_call>…</tool_call>`` block is one call (an unclosed last block runs to the end of
  the answer), so an answer may hold several calls;
* each block must be a JSON object with ``name`` and ``arguments``; if ANY block is not, no call
  is reported and the whole answer stays ``content`` (a malformed call is never half-reported);
* ``content`` is the text before the first block (``None`` when empty); ``arguments`` is the
  arguments re-serialised with ``json.dumps(…, ensure_ascii=False)``;
* the choice's ``finish_reason`` becomes ``tool_calls`` when calls were found.

Streaming differs from vLLM's on purpose: text before the first ``<tool_call>`` streams as content
as it is generated (a possible start of the tag is held back), and the calls are sent when the
answer ends — for each call a delta with ``index``, ``id``, ``type`` and ``function.name``, then one
with its ``arguments`` — because only then is it known whether every block parses. So a streamed
answer always equals the whole one (vLLM streams argument fragments early and cannot take back a
call whose JSON later turns out malformed).

``tool_choice`` without guided decoding: ``none`` renders no tools and parses nothing; ``auto``
renders them and parses the answer; ``required`` additionally starts the answer with
``<tool_call>\\n`` (appended to the prompt), and a named function with
``<tool_call>\\n{"name": "<name>", "arguments": `` — the model continues from there. Parsing
always sees that forced start plus the generated text; if the result still does not parse it is
returned as content, with the forced start, and ``finish_reason`` is not ``tool_calls``.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass, field
from typing import Any

START = "<tool_call>"
END = "</tool_call>"
_BLOCK = re.compile(r"<tool_call>(.*?)</tool_call>|<tool_call>(.*)", re.DOTALL)


def call_id() -> str:
    """vLLM's id shape for a parsed call."""
    return f"chatcmpl-tool-{uuid.uuid4().hex}"


@dataclass
class Parsed:
    called: bool
    calls: list[dict[str, Any]] = field(default_factory=list)
    content: str | None = None


def parse(text: str) -> Parsed:
    """The calls in a whole answer, or none (and the text as content) if any block is malformed."""
    if START not in text:
        return Parsed(False, [], text)
    calls = []
    for closed, unclosed in _BLOCK.findall(text):
        try:
            obj = json.loads(closed or unclosed)
            name, arguments = obj["name"], obj["arguments"]
        except (ValueError, KeyError, TypeError):
            return Parsed(False, [], text)
        if not isinstance(name, str):
            return Parsed(False, [], text)
        calls.append(
            {
                "id": call_id(),
                "type": "function",
                "function": {"name": name, "arguments": json.dumps(arguments, ensure_ascii=False)},
            }
        )
    content = text[: text.find(START)]
    return Parsed(True, calls, content or None)


def forced_start(choice: str) -> str:
    """Text appended to the prompt so that the answer begins with a call (``required``/named)."""
    if choice == "required":
        return START + "\n"
    if choice.startswith("function:"):
        name = choice.removeprefix("function:")
        return START + "\n" + '{"name": ' + json.dumps(name) + ', "arguments": '
    return ""


def _partial_start(text: str) -> int:
    """Length of the longest end of ``text`` that could be the beginning of ``<tool_call>``."""
    for size in range(min(len(START) - 1, len(text)), 0, -1):
        if text.endswith(START[:size]):
            return size
    return 0


class StreamFilter:
    """Per choice: lets content through until a call starts, and settles the calls at the end."""

    def __init__(self, forced: str = "") -> None:
        self.text = forced
        self.sent = 0
        self.inside = START in forced

    def feed(self, delta: str) -> str:
        """The content that can be sent now."""
        self.text += delta
        if self.inside:
            return ""
        at = self.text.find(START)
        if at != -1:
            self.inside = True
            safe = at
        else:
            safe = len(self.text) - _partial_start(self.text)
        out = self.text[self.sent : safe] if safe > self.sent else ""
        self.sent = max(self.sent, safe)
        return out

    def finish(self) -> tuple[str, list[dict[str, Any]]]:
        """(content still to send, calls): the calls parsed from the whole answer, or its rest as text."""
        parsed = parse(self.text)
        if parsed.called:
            return "", parsed.calls
        return self.text[self.sent :], []


def call_deltas(calls: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Streaming deltas for whole calls: per call its id, type and name, then its arguments."""
    deltas = []
    for index, call in enumerate(calls):
        function = call["function"]
        deltas.append(
            {"index": index, "id": call["id"], "type": "function", "function": {"name": function["name"]}}
        )
        deltas.append({"index": index, "function": {"arguments": function["arguments"]}})
    return deltas


# ------------------------------------------------------------- templates without tool support


def template_knows_tools(template: str) -> bool:
    """Whether a chat template renders ``tools`` and assistant ``tool_calls`` itself."""
    return "tools" in template and "tool_calls" in template


def tools_preamble(tools: list[dict[str, Any]]) -> str:
    """What the default template writes about the tools, as plain text (for templates without tools)."""
    lines = "".join(json.dumps(tool, ensure_ascii=False) + "\n" for tool in tools)
    return (
        "# Tools\n\nYou can call functions to help with the request. Their signatures, one JSON object "
        f"per line:\n<tools>\n{lines}</tools>\n\nTo call a function, answer with one block per call:\n"
        f'{START}\n{{"name": <function name>, "arguments": <arguments as a JSON object>}}\n{END}'
    )


def fold_tools(messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None) -> list[dict[str, Any]]:
    """The conversation for a template that knows no tools (Gemma 3's, for one): the tools go into
    the system message as text, an assistant's calls become ``<tool_call>`` blocks in its content,
    and tool results become user turns in ``<tool_response>`` blocks (consecutive user turns merged,
    since such templates often insist that roles alternate)."""
    out: list[dict[str, Any]] = []
    for message in messages:
        role, content = message["role"], message.get("content") or ""
        if role == "assistant" and message.get("tool_calls"):
            blocks = []
            for call in message["tool_calls"]:
                function = call.get("function") or {}
                arguments = function.get("arguments")
                if isinstance(arguments, str):
                    try:
                        arguments = json.loads(arguments)
                    except ValueError:
                        pass
                body = json.dumps({"name": function.get("name"), "arguments": arguments}, ensure_ascii=False)
                blocks.append(f"{START}\n{body}\n{END}")
            content = "\n".join(([content] if content else []) + blocks)
            out.append({"role": "assistant", "content": content})
            continue
        if role == "tool":
            role, content = "user", f"<tool_response>\n{content}\n</tool_response>"
        if out and role == "user" and out[-1]["role"] == "user":
            out[-1] = {"role": "user", "content": out[-1]["content"] + "\n" + content}
            continue
        out.append({"role": role, "content": content})
    if tools:
        preamble = tools_preamble(tools)
        if out and out[0]["role"] == "system":
            out[0] = {"role": "system", "content": f"{out[0]['content']}\n\n{preamble}"}
        else:
            out.insert(0, {"role": "system", "content": preamble})
    return out
