"""Flywheel dataset builder (`flywheel.dataset.v1.DatasetService`)."""
