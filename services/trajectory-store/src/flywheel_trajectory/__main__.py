"""``python -m flywheel_trajectory`` / ``flywheel-trajectory-store``: run the trajectory store."""

import sys

from flywheel_common.server import run_service
from flywheel_trajectory.service import NAME, build_app
from flywheel_trajectory.settings import TrajectorySettings


def main() -> int:
    return run_service(NAME, TrajectorySettings, build_app)


if __name__ == "__main__":
    sys.exit(main())
