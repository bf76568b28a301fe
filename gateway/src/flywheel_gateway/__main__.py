"""``python -m flywheel_gateway config``: print the LiteLLM proxy configuration.

Running the proxy itself (and adapter sync) arrives with issue #8.
"""

from __future__ import annotations

import argparse
import sys

from flywheel_common.settings import SettingsError, load_settings
from flywheel_gateway.config import render_config
from flywheel_gateway.settings import GatewaySettings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="flywheel-gateway", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("config", help="print the LiteLLM config generated from FLYWHEEL_GATEWAY_* settings")
    args = parser.parse_args(argv)
    try:
        settings = load_settings(GatewaySettings)
    except SettingsError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.command == "config":
        sys.stdout.write(render_config(settings))
    return 0


if __name__ == "__main__":
    sys.exit(main())
