"""``python -m flywheel_gateway serve``: the LiteLLM proxy (with our layer in front) until SIGTERM/SIGINT.

The real LiteLLM proxy app from the pinned release runs in this process, loaded the way
``litellm --config`` loads it (``CONFIG_FILE_PATH`` pointing at the generated config, read by
its start-up hook), wrapped by :class:`~flywheel_gateway.app.GatewayApp` and served by uvicorn on
uvloop + httptools with one worker. The ready file (JSON: pid, port) is written once LiteLLM's
start-up has finished and the socket accepts requests.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import tempfile
from pathlib import Path

import uvicorn

from flywheel_common.server import write_ready_file
from flywheel_gateway.config import build_config, render_config
from flywheel_gateway.settings import GatewaySettings

NAME = "gateway"
log = logging.getLogger("flywheel.gateway")


def bind(host: str, port: int) -> socket.socket:
    """Bind ourselves so that port 0 works and the real port can go into the ready file."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    return sock


def prepare_litellm_env(settings: GatewaySettings) -> Path:
    """Write the config and set the variables LiteLLM reads at import and start-up; returns the config path."""
    # No network here or in many clusters: use the model-cost map shipped in the wheel instead of
    # fetching it from GitHub at import (which otherwise retries for ~10 s).
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    os.environ.setdefault("LITELLM_LOG", "ERROR")
    os.environ.setdefault("DISABLE_SCHEMA_UPDATE", "True")
    # The config references the key by name (os.environ/…); make sure the name is set even when the
    # settings came from elsewhere than the environment.
    os.environ["FLYWHEEL_GATEWAY_MASTER_KEY"] = settings.master_key.get_secret_value()
    folder = settings.config_dir or Path(tempfile.mkdtemp(prefix="flywheel-gateway-"))
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "litellm-config.yaml"
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(render_config(settings))
    os.replace(tmp, path)
    os.environ["CONFIG_FILE_PATH"] = str(path)
    return path


def build_gateway(settings: GatewaySettings):
    """The ASGI app: LiteLLM's proxy app (imported only now, after its environment is set) wrapped by ours."""
    prepare_litellm_env(settings)
    from litellm.proxy.proxy_server import app as litellm_app

    from flywheel_gateway.aliases import AliasService
    from flywheel_gateway.app import GatewayApp
    from flywheel_gateway.fast_path import resolve_callbacks

    names = build_config(settings).get("litellm_settings", {}).get("callbacks", [])
    return GatewayApp(
        settings,
        litellm_app,
        resolve_callbacks(names),
        AliasService.from_environment(settings),
        fine_tuning=True,
    )


def _report_sync_end(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("adapter sync stopped: %s", task.exception(), exc_info=task.exception())


async def serve(settings: GatewaySettings) -> None:
    sock = bind(settings.host, settings.port)
    port = sock.getsockname()[1]
    gateway = build_gateway(settings)
    config = uvicorn.Config(
        gateway,
        log_config=None,
        access_log=False,
        http="httptools",
        lifespan="on",
        backlog=2048,
        timeout_graceful_shutdown=int(settings.grace_period_s),
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started and not task.done():  # noqa: ASYNC110 - uvicorn offers only a flag
        await asyncio.sleep(0.02)
    if server.started and gateway.aliases is not None:
        await gateway.aliases.start()  # the table is read once before the replica says it is ready
    sync_task = None
    if server.started and settings.adapter_sync:
        from flywheel_gateway.adapter_sync import run_adapter_sync

        sync_task = asyncio.create_task(run_adapter_sync(stop=task))
        sync_task.add_done_callback(_report_sync_end)
    if server.started and settings.ready_file is not None:
        write_ready_file(settings.ready_file, NAME, port)
    log.info("%s serving on %s:%d", NAME, settings.host, port, extra={"port": port})
    try:
        await task
    finally:
        if sync_task is not None:
            sync_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await sync_task
        await gateway.close()
        if settings.ready_file is not None:
            with contextlib.suppress(FileNotFoundError):
                settings.ready_file.unlink()
        log.info("%s stopped", NAME)


def run(settings: GatewaySettings) -> int:
    try:
        import uvloop

        uvloop.run(serve(settings))
    except ImportError:
        asyncio.run(serve(settings))
    except OSError as err:
        print(f"error: {NAME} cannot start: {err}")
        return 1
    return 0
