"""``python -m flywheel_trainer`` / ``flywheel-trainer-svc``: run the trainer."""

import sys

from flywheel_common.server import run_service
from flywheel_trainer.service import NAME, build_app
from flywheel_trainer.settings import TrainerSettings


def main() -> int:
    return run_service(NAME, TrainerSettings, build_app)


if __name__ == "__main__":
    sys.exit(main())
