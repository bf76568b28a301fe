"""``python -m flywheel_gateway``: the gateway's commands.

* ``config``        print the LiteLLM configuration generated from ``FLYWHEEL_GATEWAY_*``;
* ``serve``         run the LiteLLM proxy with our auth / 404 / fast-path layer (the default);
* ``adapter-sync``  run the durable consumer of ``flywheel.adapter.published``;
  ``adapter-sync --reload <name>/v<n> [--force]`` syncs one version again and exits.
"""

from __future__ import annotations

import argparse
import sys

from flywheel_common.logs import configure_logging
from flywheel_common.settings import SettingsError, load_settings
from flywheel_gateway.config import render_config
from flywheel_gateway.settings import GatewaySettings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="flywheel-gateway", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command")
    commands.add_parser("config", help="print the LiteLLM config generated from FLYWHEEL_GATEWAY_* settings")
    commands.add_parser("serve", help="run the gateway (LiteLLM proxy + our layer) until SIGTERM")
    sync = commands.add_parser("adapter-sync", help="load published adapters on every model-server replica")
    sync.add_argument("--reload", metavar="NAME/vN", help="sync this published version again, then exit")
    sync.add_argument(
        "--force",
        action="store_true",
        help="with --reload: replace the name where a replica already serves it",
    )
    args = parser.parse_args(argv)
    command = args.command or "serve"
    if command == "adapter-sync":
        from flywheel_gateway.adapter_sync import main as sync_main

        return sync_main(reload=args.reload, force=args.force)
    try:
        settings = load_settings(GatewaySettings)
    except SettingsError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if command == "config":
        sys.stdout.write(render_config(settings))
        return 0
    configure_logging("gateway", settings.log_level, settings.log_format)
    from flywheel_gateway.serve import run

    return run(settings)


if __name__ == "__main__":
    sys.exit(main())
