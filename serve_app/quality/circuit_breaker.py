"""A per-tier circuit breaker: stop sending to a failing tier for a cool-down period.

closed --(failure_threshold consecutive failures)--> open --(cooldown_s)--> half-open
half-open lets one trial request through: success closes the circuit, failure re-opens it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Literal

BreakerState = Literal["closed", "open", "half_open"]


class CircuitBreaker:
    def __init__(
        self,
        failure_threshold: int,
        cooldown_s: float,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.failure_threshold = failure_threshold
        self.cooldown_s = cooldown_s
        self._clock = clock
        self._consecutive_failures = 0
        self._opened_at_s: float | None = None
        self._trial_in_flight = False

    @property
    def state(self) -> BreakerState:
        if self._opened_at_s is None:
            return "closed"
        if self._clock() - self._opened_at_s < self.cooldown_s:
            return "open"
        return "half_open"

    def allow(self) -> bool:
        """Whether a request may be sent to the tier now."""
        state = self.state
        if state == "closed":
            return True
        if state == "half_open" and not self._trial_in_flight:
            self._trial_in_flight = True
            return True
        return False

    def record_success(self) -> None:
        self._consecutive_failures = 0
        self._opened_at_s = None
        self._trial_in_flight = False

    def record_failure(self) -> None:
        self._consecutive_failures += 1
        if self._trial_in_flight or self._consecutive_failures >= self.failure_threshold:
            self._opened_at_s = self._clock()
        self._trial_in_flight = False
