"""``python -m flywheel_sandbox`` / ``flywheel-sandbox-runner``: run the sandbox runner."""

import sys

from flywheel_common.server import run_service
from flywheel_sandbox.service import NAME, build_app
from flywheel_sandbox.settings import SandboxSettings


def main() -> int:
    return run_service(NAME, SandboxSettings, build_app)


if __name__ == "__main__":
    sys.exit(main())
