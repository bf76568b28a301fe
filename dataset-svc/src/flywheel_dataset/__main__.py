"""``python -m flywheel_dataset`` / ``flywheel-dataset-svc``: run the dataset builder."""

import sys

from flywheel_common.server import run_service
from flywheel_dataset.service import NAME, build_app
from flywheel_dataset.settings import DatasetSettings


def main() -> int:
    return run_service(NAME, DatasetSettings, build_app)


if __name__ == "__main__":
    sys.exit(main())
