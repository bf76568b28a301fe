"""A CustomLogger that only counts, for the benchmark (the cost of having a logging hook at all)."""

from __future__ import annotations

from typing import Any

from litellm.integrations.custom_logger import CustomLogger


class CountingLogger(CustomLogger):
    def __init__(self) -> None:
        super().__init__()
        self.successes = 0
        self.failures = 0

    async def async_log_success_event(
        self, kwargs: Any, response_obj: Any, start_time: Any, end_time: Any
    ) -> None:
        self.successes += 1

    async def async_log_failure_event(
        self, kwargs: Any, response_obj: Any, start_time: Any, end_time: Any
    ) -> None:
        self.failures += 1


counting_logger = CountingLogger()
