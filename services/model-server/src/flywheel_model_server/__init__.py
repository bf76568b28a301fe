"""Flywheel embedded model server (the default model server where vLLM is not available)."""
