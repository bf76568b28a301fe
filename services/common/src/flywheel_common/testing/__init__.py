"""Pytest fixtures with real components, shared by every test suite in the repository."""
