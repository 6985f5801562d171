"""Rate limits shared by every ingress replica through Redis (`rate_limit_store: {kind: redis}`).

Same token buckets as the in-memory `RateLimiter` (gateway/auth.py), kept in Redis hashes and
updated by one Lua script, so a check and its debit are atomic across replicas and nodes. The
script reads the Redis server's clock (`TIME`), so replicas whose clocks disagree still refill
a budget at the same rate. A bucket expires when it would be full again: an idle tenant leaves
nothing behind, and a missing bucket is a full one. A Redis that fails or hangs admits requests
without the limits (fail open, gateway/shared_store.py).
"""

from __future__ import annotations

from collections.abc import Callable

from serve_app.config import LocalRateLimitStore, RedisRateLimitStore
from serve_app.gateway.auth import RateLimiter, RateLimits, caller_limits, rate_limit_refusal
from serve_app.gateway.shared_store import SharedStore
from serve_app.protocol.caller import Caller

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


class RedisRateLimiter:
    """`RateLimits` in Redis, shared by every replica that points at the same server and prefix."""

    def __init__(self, store: SharedStore, *, on_fail_open: Callable[[], None] | None = None):
        self.store = store
        self.on_fail_open = on_fail_open
        self._take = store.register_script(_TAKE_SCRIPT)

    @classmethod
    def from_config(
        cls, store: RedisRateLimitStore, *, on_fail_open: Callable[[], None] | None = None
    ) -> RedisRateLimiter:
        return cls(SharedStore.from_config(store), on_fail_open=on_fail_open)

    def bucket_key(self, tenant: str, kind: str) -> str:
        return self.store.key(tenant, kind)

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
        return await self.store.run(lambda: self._take(keys=keys, args=args), action=action)

    async def aclose(self) -> None:
        await self.store.aclose()


def rate_limits_from_config(
    store: LocalRateLimitStore | RedisRateLimitStore,
    *,
    on_fail_open: Callable[[], None] | None = None,
    shared: SharedStore | None = None,
) -> RateLimits:
    """The limiter `auth.rate_limit_store` names; `on_fail_open` counts requests a shared store
    could not check. `shared`: the replica's client of that Redis, if it has one already."""
    if isinstance(store, RedisRateLimitStore):
        return RedisRateLimiter(shared or SharedStore.from_config(store), on_fail_open=on_fail_open)
    return RateLimiter()
