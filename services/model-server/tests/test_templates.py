"""Implicit stop sequences of chat templates."""

from __future__ import annotations

from flywheel_model_server.templates import DEFAULT_CHAT_TEMPLATE, implicit_stops


def test_default_template_stops_at_end_of_turn_and_at_role_headers() -> None:
    stops = implicit_stops(DEFAULT_CHAT_TEMPLATE)
    assert stops[0] == "<|end|>"
    assert {"<|user|>", "<|assistant|>", "<|system|>", "<|tool|>"} <= set(stops)


def test_other_templates_get_no_implicit_stops() -> None:
    chatml = "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    assert implicit_stops(chatml) == []
    only_end = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}<|end|>{% endfor %}"
    assert implicit_stops(only_end) == ["<|end|>"]
