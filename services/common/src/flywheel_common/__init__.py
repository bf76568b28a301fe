"""Flywheel shared library."""
