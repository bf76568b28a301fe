"""``python -m flywheel_trainer`` / ``flywheel-trainer-svc``: run the trainer.

``python -m flywheel_trainer run-job`` instead trains one job inside its Kubernetes Job's pod
(:mod:`flywheel_trainer.podjob`).
"""

import sys

from flywheel_common.server import run_service
from flywheel_trainer.service import NAME, build_app
from flywheel_trainer.settings import TrainerSettings


def main() -> int:
    if sys.argv[1:2] == ["run-job"]:
        from flywheel_trainer import podjob

        return podjob.main()
    return run_service(NAME, TrainerSettings, build_app)


if __name__ == "__main__":
    sys.exit(main())
