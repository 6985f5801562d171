"""Rate limits shared by every ingress replica through Redis (`rate_limit_store: {kind: redis}`).

Same token buckets as the in-memory `RateLimiter` (gateway/auth.py), kept in Redis hashes and
updated by one Lua script, so a check and its debit are atomic across replicas and nodes. The
script reads the Redis server's clock (`TIME`), so replicas whose clocks disagree still refill
a budget at the same rate. A bucket expires when it would be full again: an idle tenant leaves
nothing behind, and a missing bucket is a full one.

Fail open: when Redis is slow or unreachable the request is admitted without the shared limits
(logged once per outage, counted through `on_fail_open`), and the store is left alone for
`_PAUSE_AFTER_FAILURE_S`, so an outage never holds requests for more than one `timeout_s`
a second per replica. Refusing every request because the limiter's store is down would turn a
Redis outage into a full outage of the cascade.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from serve_app.config import LocalRateLimitStore, RedisRateLimitStore
from serve_app.gateway.auth import RateLimiter, RateLimits, caller_limits, rate_limit_refusal
from serve_app.protocol.caller import Caller

logger = logging.getLogger("ray.serve")

# After a failed call the store is not asked again for this long: requests are admitted at once.
_PAUSE_AFTER_FAILURE_S = 1.0

# KEYS[i]: a bucket, a hash {level, updated_s}; a missing one is full.
# ARGV[1]: "1" to refuse (taking nothing) when a bucket holds less than one unit;
# ARGV[2i], ARGV[2i+1]: bucket i's rate per minute (its capacity) and the amount to take.
# Returns {} once taken, or {i, seconds until bucket i holds one unit}.
_TAKE_SCRIPT = """
local now = redis.call('TIME')
local now_s = tonumber(now[1]) + tonumber(now[2]) / 1000000
local refuse_when_empty = ARGV[1] == '1'
local levels = {}
for i, key in ipairs(KEYS) do
  local rate = tonumber(ARGV[2 * i])
  local stored = redis.call('HMGET', key, 'level', 'updated_s')
  local level = rate
  if stored[1] then
    -- max(0, ...): a failover to a server whose clock is behind never drains a bucket.
    local elapsed_s = math.max(0, now_s - tonumber(stored[2]))
    level = math.min(rate, tonumber(stored[1]) + elapsed_s * rate / 60)
  end
  if refuse_when_empty and level < 1 then
    return {i, string.format('%.6f', (1 - level) * 60 / rate)}
  end
  levels[i] = level
end
for i, key in ipairs(KEYS) do
  local amount = tonumber(ARGV[2 * i + 1])
  if amount ~= 0 then
    local rate = tonumber(ARGV[2 * i])
    local level = levels[i] - amount
    redis.call('HSET', key, 'level', string.format('%.17g', level),
      'updated_s', string.format('%.6f', now_s))
    redis.call('PEXPIRE', key, math.max(1, math.ceil((rate - level) * 60000 / rate)))
  end
end
return {}
"""


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


class RedisRateLimiter:
    """`RateLimits` in Redis, shared by every replica that points at the same server and prefix."""

    def __init__(
        self,
        client: Redis,
        *,
        key_prefix: str,
        timeout_s: float,
        on_fail_open: Callable[[], None] | None = None,
    ):
        self.client = client
        self.key_prefix = key_prefix
        self.timeout_s = timeout_s
        self.on_fail_open = on_fail_open
        self._take = client.register_script(_TAKE_SCRIPT)
        self._paused_until_s = 0.0  # time.monotonic()
        self._failing = False

    @classmethod
    def from_config(
        cls, store: RedisRateLimitStore, *, on_fail_open: Callable[[], None] | None = None
    ) -> RedisRateLimiter:
        # One attempt per call, each socket operation bounded: the call's own timeout decides.
        client = Redis.from_url(
            redis_url(store),
            socket_timeout=store.timeout_s,
            socket_connect_timeout=store.timeout_s,
            retry=Retry(NoBackoff(), 0),
        )
        return cls(
            client,
            key_prefix=store.key_prefix,
            timeout_s=store.timeout_s,
            on_fail_open=on_fail_open,
        )

    def bucket_key(self, tenant: str, kind: str) -> str:
        # The {tenant} hash tag keeps a tenant's buckets in one Redis Cluster slot, as one
        # script may only touch keys of one slot.
        return f"{self.key_prefix}:{{{tenant}}}:{kind}"

    async def admit(self, caller: Caller) -> None:
        limits = caller_limits(caller)
        if not limits:
            return
        args: list[str | int] = ["1"]
        for kind, rate in limits:
            args += [rate, 1 if kind == "requests" else 0]
        keys = [self.bucket_key(caller.tenant, kind) for kind, _ in limits]
        reply = await self._run(keys, args, action="admission")
        if reply is None:
            if self.on_fail_open is not None:
                self.on_fail_open()
            return
        if reply:
            index, wait_s = reply
            kind, rate = limits[int(index) - 1]
            raise rate_limit_refusal(kind, rate, float(wait_s))

    async def charge_tokens(self, caller: Caller, tokens: int) -> None:
        rate = caller.key.tokens_per_minute if caller.key is not None else None
        if rate is None or not tokens:
            return
        keys = [self.bucket_key(caller.tenant, "tokens")]
        await self._run(keys, ["0", rate, tokens], action="token debit")

    async def _run(self, keys: list[str], args: list[str | int], *, action: str) -> list | None:
        """The script's reply, or None when the store did not answer in time (fail open)."""
        if time.monotonic() < self._paused_until_s:
            return None
        try:
            async with asyncio.timeout(self.timeout_s):
                reply = await self._take(keys=keys, args=args)
        except (RedisError, TimeoutError) as e:
            self._paused_until_s = time.monotonic() + _PAUSE_AFTER_FAILURE_S
            if not self._failing:
                logger.warning(
                    "Rate-limit store failed during %s (%s: %s): requests are admitted without "
                    "shared limits until it answers again",
                    action,
                    type(e).__name__,
                    e or f"no answer within {self.timeout_s:g} s",
                )
            self._failing = True
            return None
        if self._failing:
            logger.warning("Rate-limit store answers again: shared limits apply")
            self._failing = False
        return reply

    async def aclose(self) -> None:
        await self.client.aclose()


def rate_limits_from_config(
    store: LocalRateLimitStore | RedisRateLimitStore,
    *,
    on_fail_open: Callable[[], None] | None = None,
) -> RateLimits:
    """The limiter `auth.rate_limit_store` names; `on_fail_open` counts requests a shared store
    could not check."""
    if isinstance(store, RedisRateLimitStore):
        return RedisRateLimiter.from_config(store, on_fail_open=on_fail_open)
    return RateLimiter()
