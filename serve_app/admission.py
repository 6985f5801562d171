"""Admission at the ingress: a bounded number of requests in flight per ingress replica.

Past the bound a request is refused before any work is spent on it (no body read, no
embedding, no routing), so refusals stay fast while the replica is busiest. The tiers' own
queues (`max_queued_requests`) remain the bound on the engines; this one keeps the ingress's
event loop responsive when far more clients arrive than the tiers admit.
"""

from __future__ import annotations

import weakref
from collections.abc import AsyncIterator, Callable

from serve_app.errors import OverloadedError


class AdmissionGate:
    """Counts the requests this replica is working on; refuses the ones past `limit`."""

    def __init__(
        self,
        limit: int | None,
        *,
        retry_after_s: float,
        on_change: Callable[[int], None] | None = None,
    ):
        self.limit = limit
        self.retry_after_s = retry_after_s
        self.in_flight = 0
        self._on_change = on_change

    def enter(self) -> None:
        """Admit one request or raise a 503 `overloaded` with Retry-After."""
        if self.limit is not None and self.in_flight >= self.limit:
            raise OverloadedError(
                f"The cascade is at capacity ({self.limit} requests in flight); retry later.",
                retry_after_s=self.retry_after_s,
            )
        self._set(self.in_flight + 1)

    def leave(self) -> None:
        self._set(self.in_flight - 1)

    def release_after(self, events: AsyncIterator[str]) -> AsyncIterator[str]:
        """Relay a streamed body; the request leaves the gate when the stream ends.

        Also when the relay is dropped unstarted (the client left before the first byte):
        an async generator that never ran never runs its `finally`.
        """
        released = False

        def release_once() -> None:
            nonlocal released
            if not released:
                released = True
                self.leave()

        async def relay() -> AsyncIterator[str]:
            try:
                async for event in events:
                    yield event
            finally:
                release_once()

        stream = relay()
        weakref.finalize(stream, release_once)
        return stream

    def _set(self, in_flight: int) -> None:
        self.in_flight = in_flight
        if self._on_change is not None:
            self._on_change(in_flight)
