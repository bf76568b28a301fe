"""``python -m flywheel_model_server``: serve the HTTP API until SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import sys

import uvicorn

from flywheel_common.auth import MissingServiceToken
from flywheel_common.logs import configure_logging
from flywheel_common.server import write_ready_file
from flywheel_common.settings import SettingsError, load_settings
from flywheel_model_server.app import build_app
from flywheel_model_server.settings import ModelServerSettings

NAME = "model-server"
log = logging.getLogger("flywheel.model_server")


def bind(host: str, port: int) -> socket.socket:
    """Bind ourselves so that port 0 works and the real port can go into the ready file."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    return sock


async def serve(settings: ModelServerSettings) -> None:
    sock = bind(settings.host, settings.port)
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        build_app(settings),
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=int(settings.grace_period_s),
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started and not task.done():  # noqa: ASYNC110 - uvicorn offers only a flag
        await asyncio.sleep(0.02)
    if server.started and settings.ready_file is not None:
        write_ready_file(settings.ready_file, NAME, port)
    log.info("%s serving on %s:%d", NAME, settings.host, port, extra={"port": port})
    try:
        await task
    finally:
        if settings.ready_file is not None:
            with contextlib.suppress(FileNotFoundError):
                settings.ready_file.unlink()
        log.info("%s stopped", NAME)


def main() -> int:
    try:
        settings = load_settings(ModelServerSettings)
    except SettingsError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    configure_logging(NAME, settings.log_level, settings.log_format)
    try:
        asyncio.run(serve(settings))
    except (OSError, MissingServiceToken) as err:
        print(f"error: {NAME} cannot start: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
