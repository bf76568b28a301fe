"""Fixtures shared by every test folder in the repository.

They live in ``flywheel_testing`` (``services/testing/``, a dev-only distribution) so that each
service's own test suite can use the same real components (a nats-server per session, an S3 HTTP
endpoint) without copying them.
"""

pytest_plugins = [
    "flywheel_testing.nats",
    "flywheel_testing.postgres",
    "flywheel_testing.s3",
    "flywheel_testing.services",
    # After s3: it imports flywheel_testing.s3, which must be registered (assert-rewritten) first.
    "flywheel_testing.containers",
]
