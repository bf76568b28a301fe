"""The gateway's web console (``/console``): see :mod:`flywheel_gateway.console.app`."""

from flywheel_gateway.console.app import ConsoleApp

__all__ = ["ConsoleApp"]
