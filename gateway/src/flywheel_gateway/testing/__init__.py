"""Test support: a tiny OpenAI-compatible upstream with vLLM's runtime LoRA endpoints."""
