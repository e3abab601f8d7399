"""Rate limiting of progress reports from the training loops.

On a GPU, turning a loss into a Python number makes the host wait for every queued kernel, so
the loops report only the steps that a ProgressThrottle lets through and keep the other losses
on the device.
"""

from __future__ import annotations

import time
from typing import Callable


class ProgressThrottle:
    """Let a step report when `min_interval_seconds` have passed since the last report.

    The first and the last step of a loop always report. With `min_interval_seconds` 0 every
    step reports.
    """

    def __init__(self, min_interval_seconds: float, clock: Callable[[], float] = time.monotonic):
        if min_interval_seconds < 0:
            raise ValueError(f"min_interval_seconds is {min_interval_seconds}; use 0 (every step) or more")
        self.min_interval_seconds = min_interval_seconds
        self._clock = clock
        self._last_report: float | None = None

    def due(self, step: int, total_steps: int) -> bool:
        """Return whether step `step` (1-based) of `total_steps` reports, and record the report if it does."""
        now = self._clock()
        last = self._last_report
        if step in (1, total_steps) or last is None or now - last >= self.min_interval_seconds:
            self._last_report = now
            return True
        return False


def every_step() -> ProgressThrottle:
    """Return a throttle that lets every step report."""
    return ProgressThrottle(0.0)
