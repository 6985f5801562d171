"""A per-tier circuit breaker: stop sending to a failing tier for a cool-down period.

closed --(failure_threshold consecutive failures)--> open --(cooldown_s)--> half-open
half-open lets one trial request through: success closes the circuit, failure re-opens it.

A call that ends with no verdict on the tier (cancelled because the client left, the request's
deadline passed or a hedge won; or refused for load or as a bad request) is neither: it never
counted in the closed state, and a half-open trial that ends so hands its slot back with
`release()`, leaving the circuit half-open for the next request. Counting it as a failure would
re-open a healthy tier for a whole cool-down on a client's impatience; recording nothing at all
kept the slot taken forever, and the circuit never closed again.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Literal

BreakerState = Literal["closed", "open", "half_open"]


class Permit:
    """Leave to send one call to the tier; the half-open trial's permit holds the trial slot
    until an outcome is recorded or the permit is released."""

    __slots__ = ()


# Calls let through a closed circuit hold no slot: they share one permit.
_CLOSED = Permit()


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
        self._trial: Permit | None = None  # the half-open trial in flight

    @property
    def state(self) -> BreakerState:
        if self._opened_at_s is None:
            return "closed"
        if self._clock() - self._opened_at_s < self.cooldown_s:
            return "open"
        return "half_open"

    def allow(self) -> bool:
        """Whether a request may be sent to the tier now (see `admit`)."""
        return self.admit() is not None

    def admit(self) -> Permit | None:
        """A permit to send a request to the tier now, or None while the circuit is open.

        In the half-open state the one permit handed out is the trial's: the caller must
        `release()` it if the call ends without `record_success`/`record_failure`.
        """
        state = self.state
        if state == "closed":
            return _CLOSED
        if state == "half_open" and self._trial is None:
            self._trial = Permit()
            return self._trial
        return None

    def release(self, permit: Permit | None) -> None:
        """The call `permit` let through is over. If it was the half-open trial and no outcome
        was recorded (cancelled, refused), its slot is free again; otherwise nothing changes."""
        if permit is not None and permit is self._trial:
            self._trial = None

    def record_success(self) -> None:
        self._consecutive_failures = 0
        self._opened_at_s = None
        self._trial = None

    def record_failure(self) -> None:
        self._consecutive_failures += 1
        if self._trial is not None or self._consecutive_failures >= self.failure_threshold:
            self._opened_at_s = self._clock()
        self._trial = None
