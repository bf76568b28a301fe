"""``python -m flywheel_orchestrator`` / ``flywheel-orchestrator``: run the agent orchestrator."""

import sys

from flywheel_common.server import run_service
from flywheel_orchestrator.service import NAME, build_app
from flywheel_orchestrator.settings import OrchestratorSettings


def main() -> int:
    return run_service(NAME, OrchestratorSettings, build_app)


if __name__ == "__main__":
    sys.exit(main())
