"""Admission at the ingress: a bounded number of requests in flight per ingress replica.

Past the bound a request is refused before any work is spent on it (no body read, no
embedding, no routing), so refusals stay fast while the replica is busiest. The tiers' own
queues (`max_queued_requests`) remain the bound on the engines; this one keeps the ingress's
event loop responsive when far more clients arrive than the tiers admit.

Refusals carry a Retry-After that tracks how long admitted requests actually take: a client
told to come back in 1 s while answers take 15 s is refused again, and a crowd of such
clients turns the refusals themselves into the overload.
"""

from __future__ import annotations

import random
import time
import weakref
from collections.abc import AsyncIterator, Callable

from serve_app.protocol.errors import OverloadedError

# Weight of the newest request in the moving average of admitted request durations.
_DURATION_EWMA_WEIGHT = 0.2
# Retry-After is spread over this range of the typical duration: clients refused together
# must not all come back in the same second (a synchronised retry burst is an overload).
_RETRY_AFTER_JITTER = (0.75, 1.5)


class AdmissionGate:
    """Counts the requests this replica is working on; refuses the ones past `limit`."""

    def __init__(
        self,
        limit: int | None,
        *,
        retry_after_s: float,
        max_retry_after_s: float = 30.0,
        on_change: Callable[[int], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.limit = limit
        self.min_retry_after_s = retry_after_s
        self.max_retry_after_s = max(retry_after_s, max_retry_after_s)
        self.in_flight = 0
        self.typical_duration_s: float | None = None
        self._on_change = on_change
        self._clock = clock
        # Since when requests have been in flight without a break (None while idle).
        self._busy_since_s: float | None = None

    @property
    def retry_after_s(self) -> float:
        """When a refused client should come back: about one admitted request's duration,
        jittered so that clients refused together do not return together.

        Before any request has finished (a crowd at start-up), the admitted ones have run at
        least as long as the gate has been busy: the floor alone would send the whole first
        crowd back at once, long before a slot frees."""
        typical = self.typical_duration_s
        if typical is None and self._busy_since_s is not None:
            typical = self._clock() - self._busy_since_s
        jittered = (typical or 0.0) * random.uniform(*_RETRY_AFTER_JITTER)
        return min(max(self.min_retry_after_s, jittered), self.max_retry_after_s)

    def overloaded(self, message: str) -> OverloadedError:
        return OverloadedError(message, retry_after_s=self.retry_after_s)

    def enter(self) -> float:
        """Admit one request (returns its start time) or raise a 503 `overloaded`."""
        if self.limit is not None and self.in_flight >= self.limit:
            raise self.overloaded(
                f"The cascade is at capacity ({self.limit} requests in flight); retry later."
            )
        now = self._clock()
        if self.in_flight == 0:
            self._busy_since_s = now
        self._set(self.in_flight + 1)
        return now

    def leave(self, started_s: float, *, completed: bool) -> None:
        """A request is done; a completed one updates the typical duration."""
        self._set(self.in_flight - 1)
        if self.in_flight == 0:
            self._busy_since_s = None
        if completed:
            duration_s = self._clock() - started_s
            previous = self.typical_duration_s
            self.typical_duration_s = (
                duration_s
                if previous is None
                else previous + _DURATION_EWMA_WEIGHT * (duration_s - previous)
            )

    def release_after(self, events: AsyncIterator[str], started_s: float) -> AsyncIterator[str]:
        """Relay a streamed body; the request leaves the gate when the stream ends.

        Also when the relay is dropped unstarted (the client left before the first byte):
        an async generator that never ran never runs its `finally`.
        """
        released = False

        def release_once(completed: bool) -> None:
            nonlocal released
            if not released:
                released = True
                self.leave(started_s, completed=completed)

        async def relay() -> AsyncIterator[str]:
            completed = False
            try:
                async for event in events:
                    yield event
                completed = True
            finally:
                release_once(completed)

        stream = relay()
        weakref.finalize(stream, release_once, False)
        return stream

    def _set(self, in_flight: int) -> None:
        self.in_flight = in_flight
        if self._on_change is not None:
            self._on_change(in_flight)
