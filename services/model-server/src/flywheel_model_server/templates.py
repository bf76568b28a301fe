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
