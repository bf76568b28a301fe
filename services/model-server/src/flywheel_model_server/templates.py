"""Chat templates: the tokenizer's own, an adapter's, or Flywheel's documented default.

Precedence for a chat request: the adapter's template (the trainer stores the template it
trained with next to every adapter), then the base model's tokenizer template, then
:data:`DEFAULT_CHAT_TEMPLATE`. The default is the trainer's (``flywheel_trainer.catalog``), the
one it writes into base models that ship none, so that a base model imported from GGUF is
prompted here exactly as it was trained::

    <|system|>\\nYou are terse.<|end|>\\n<|user|>\\nHi<|end|>\\n<|assistant|>\\n

The model ends its turn by writing ``<|end|>``; that marker is plain text, not a special token,
so for any template that contains it, ``<|end|>`` is an implicit stop sequence of chat requests
(finish_reason ``stop``, not shown in the answer); so are the role headers of such templates.
"""

from __future__ import annotations

import json
from pathlib import Path

#: Kept identical to ``flywheel_trainer.catalog.DEFAULT_CHAT_TEMPLATE`` (a team convention; the
#: model server does not depend on the trainer's distribution). The ``{% generation %}`` markers
#: only matter for training (assistant-only loss); rendering ignores them.
DEFAULT_CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{- '<|' + message['role'] + '|>\\n' -}}"
    "{%- if message['role'] == 'assistant' -%}"
    "{% generation %}{{- message['content'] + '<|end|>\\n' -}}{% endgeneration %}"
    "{%- else -%}"
    "{{- message['content'] + '<|end|>\\n' -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|assistant|>\\n' -}}{%- endif -%}"
)

#: What the default template writes about the tools a request offers (after the system message).
#: Hermes' layout (the one vLLM's ``hermes`` tool-call parser reads): one JSON signature per line
#: inside ``<tools>``, and every call as its own ``<tool_call>`` block holding one JSON object.
TOOLS_BLOCK = (
    "{{- '# Tools\\n\\nYou can call functions to help with the request. Their signatures, one JSON "
    "object per line:\\n<tools>\\n' -}}"
    "{%- for tool in tools -%}{{- tool | tojson -}}{{- '\\n' -}}{%- endfor -%}"
    "{{- '</tools>\\n\\nTo call a function, answer with one block per call:\\n<tool_call>\\n"
    '{"name": <function name>, "arguments": <arguments as a JSON object>}\\n</tool_call>\' -}}'
)

#: The default template with tool calling: identical output to :data:`DEFAULT_CHAT_TEMPLATE` for a
#: conversation without tools and without tool calls (a test checks it), so prompts that models were
#: trained on do not move. With ``tools`` it adds :data:`TOOLS_BLOCK` to the system message (or a
#: system message of its own); an assistant message's ``tool_calls`` are written the way the model
#: is asked to write them; ``tool`` results are ``<|tool|>`` turns like any other role.
DEFAULT_TOOL_CHAT_TEMPLATE = (
    "{%- if tools and (messages | length == 0 or messages[0]['role'] != 'system') -%}"
    "{{- '<|system|>\\n' -}}" + TOOLS_BLOCK + "{{- '<|end|>\\n' -}}"
    "{%- endif -%}"
    "{%- for message in messages -%}"
    "{{- '<|' + message['role'] + '|>\\n' -}}"
    "{%- if message['role'] == 'assistant' -%}"
    "{% generation %}{{- message['content'] -}}"
    "{%- if message.get('tool_calls') -%}"
    "{%- for call in message['tool_calls'] -%}"
    "{%- if message['content'] or not loop.first -%}{{- '\\n' -}}{%- endif -%}"
    "{%- set arguments = call['function']['arguments'] -%}"
    "{{- '<tool_call>\\n{\"name\": ' + (call['function']['name'] | tojson) + ', \"arguments\": ' -}}"
    "{{- (arguments if arguments is string else (arguments | tojson)) + '}\\n</tool_call>' -}}"
    "{%- endfor -%}"
    "{%- endif -%}"
    "{{- '<|end|>\\n' -}}{% endgeneration %}"
    "{%- else -%}"
    "{{- message['content'] -}}"
    "{%- if loop.first and tools and message['role'] == 'system' -%}{{- '\\n\\n' -}}"
    + TOOLS_BLOCK
    + "{%- endif -%}"
    "{{- '<|end|>\\n' -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|assistant|>\\n' -}}{%- endif -%}"
)

#: Plain-text end-of-turn markers that become implicit stop sequences when a template uses them.
END_OF_TURN_MARKERS = ("<|end|>",)


#: The role headers of templates built like the default one (``'<|' + message['role'] + '|>'``).
#: A model that writes one has started a turn that is not its own — a base model does this
#: over and over (measured: Gemma 3 270M answered 512 tokens of ``<|assistant|>`` lines, 30 s on
#: two cores, for every turn) — so they end the answer like the end-of-turn marker does.
ROLE_HEADERS = ("<|system|>", "<|user|>", "<|assistant|>", "<|tool|>")
ROLE_HEADER_PATTERN = "'<|' + message['role'] + '|>"


def implicit_stops(template: str) -> list[str]:
    stops = [marker for marker in END_OF_TURN_MARKERS if marker in template]
    if ROLE_HEADER_PATTERN in template:
        stops.extend(ROLE_HEADERS)
    return stops


def folder_chat_template(folder: Path) -> str | None:
    """The chat template saved in a tokenizer folder (``chat_template.jinja`` or tokenizer_config.json)."""
    jinja = folder / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    config = folder / "tokenizer_config.json"
    if config.is_file():
        try:
            template = json.loads(config.read_text(encoding="utf-8")).get("chat_template")
        except (json.JSONDecodeError, AttributeError):
            return None
        if isinstance(template, str) and template:
            return template
    return None
