"""Flywheel agent orchestrator (`flywheel.orchestrator.v1.OrchestratorService`)."""
