"""Flywheel gateway: one OpenAI-compatible endpoint in front of the model server and hosted APIs."""
