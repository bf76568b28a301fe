"""Fixtures shared by every test folder in the repository.

They live in ``flywheel_common.testing`` so that each service's own test suite can use the same
real components (a nats-server per session, an S3 HTTP endpoint) without copying them.
"""

pytest_plugins = [
    "flywheel_common.testing.nats",
    "flywheel_common.testing.s3",
    "flywheel_common.testing.services",
]
