"""The Redis server every ingress replica shares rate limits and dollar budgets through
(`rate_limit_store: {kind: redis}`), and the fail-open policy of each call to it.

Fail open: when Redis is slow or unreachable the request is admitted without the shared limits
and budgets (logged once per outage, counted by the caller of `run`), and the store is left
alone for `_PAUSE_AFTER_FAILURE_S`, so an outage never holds requests for more than one
`timeout_s` a second per replica. Refusing every request because the limiter's store is down
would turn a Redis outage into a full outage of the cascade.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.commands.core import AsyncScript
from redis.exceptions import RedisError

from serve_app.config import RedisRateLimitStore

logger = logging.getLogger("ray.serve")
_Reply = TypeVar("_Reply")

# After a failed call the store is not asked again for this long: requests are admitted at once.
_PAUSE_AFTER_FAILURE_S = 1.0


def redis_url(store: RedisRateLimitStore) -> str:
    if store.url is not None:
        return store.url
    url = os.environ.get(store.url_env or "", "")
    if not url:
        raise ValueError(
            f"auth.rate_limit_store.url_env names {store.url_env}, which is not set in the "
            "ingress replica's environment"
        )
    return url


class SharedStore:
    """An ingress replica's Redis client, shared by its rate limiter and its budgets, so one
    outage pauses both at once."""

    def __init__(self, client: Redis, *, key_prefix: str, timeout_s: float):
        self.client = client
        self.key_prefix = key_prefix
        self.timeout_s = timeout_s
        self._paused_until_s = 0.0  # time.monotonic()
        self._failing = False

    @classmethod
    def from_config(cls, store: RedisRateLimitStore) -> SharedStore:
        # One attempt per call, each socket operation bounded: the call's own timeout decides.
        client = Redis.from_url(
            redis_url(store),
            socket_timeout=store.timeout_s,
            socket_connect_timeout=store.timeout_s,
            retry=Retry(NoBackoff(), 0),
        )
        return cls(client, key_prefix=store.key_prefix, timeout_s=store.timeout_s)

    def key(self, tenant: str, name: str) -> str:
        # The {tenant} hash tag keeps a tenant's keys in one Redis Cluster slot, as one
        # script may only touch keys of one slot.
        return f"{self.key_prefix}:{{{tenant}}}:{name}"

    def register_script(self, source: str) -> AsyncScript:
        return self.client.register_script(source)

    async def run(self, call: Callable[[], Awaitable[_Reply]], *, action: str) -> _Reply | None:
        """`call`'s reply, or None when the store did not answer in time (fail open)."""
        if time.monotonic() < self._paused_until_s:
            return None
        try:
            async with asyncio.timeout(self.timeout_s):
                reply = await call()
        except (RedisError, TimeoutError) as e:
            self._paused_until_s = time.monotonic() + _PAUSE_AFTER_FAILURE_S
            if not self._failing:
                logger.warning(
                    "Shared limit store failed during %s (%s: %s): requests are admitted "
                    "without shared rate limits and budgets until it answers again",
                    action,
                    type(e).__name__,
                    e or f"no answer within {self.timeout_s:g} s",
                )
            self._failing = True
            return None
        if self._failing:
            logger.warning("Shared limit store answers again: rate limits and budgets apply")
            self._failing = False
        return reply

    async def aclose(self) -> None:
        await self.client.aclose()
