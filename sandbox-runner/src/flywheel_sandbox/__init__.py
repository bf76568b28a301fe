"""Flywheel sandbox runner (`flywheel.sandbox.v1.SandboxService`)."""
