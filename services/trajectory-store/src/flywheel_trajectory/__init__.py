"""Flywheel trajectory store (`flywheel.trajectory.v1.TrajectoryService`)."""
