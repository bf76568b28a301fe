"""Flywheel trainer (`flywheel.trainer.v1.TrainerService`)."""
