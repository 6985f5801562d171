"""Dollar budgets shared by every ingress replica through Redis (`rate_limit_store: {kind: redis}`).

A tenant's spend in a period is one Redis string per budget (`<prefix>:{tenant}:spend:daily:
2025-06-14`), added to with INCRBYFLOAT: debits from any number of replicas add up, none is
lost. The key expires an hour after its period ends, so a replica whose clock runs a little
behind still reads the period it believes it is in, and nothing outlives its use. Periods are
UTC calendar days and months by the replica's clock (NTP keeps replicas within milliseconds,
which moves at most a request near midnight into the neighbouring day). A Redis that fails or
hangs admits requests without budgets and loses the debits meanwhile (fail open,
gateway/shared_store.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from serve_app.config import LocalRateLimitStore, RedisRateLimitStore
from serve_app.gateway.budgets import (
    BudgetPeriod,
    LocalSpendBudgets,
    SpendBudgets,
    budget_periods,
    refuse_if_spent,
    utc_time,
)
from serve_app.gateway.shared_store import SharedStore
from serve_app.protocol.caller import Caller

# How long a period's spend outlives the period (see the module's docstring).
SPEND_EXPIRY_MARGIN_S = 3600

# KEYS[i]: the tenant's spend in one period; ARGV[1]: the dollars to add to each;
# ARGV[i + 1]: when key i expires (Unix s). One script: the debit and the expiry land together.
_DEBIT_SCRIPT = """
for i, key in ipairs(KEYS) do
  redis.call('INCRBYFLOAT', key, ARGV[1])
  redis.call('EXPIREAT', key, ARGV[i + 1])
end
return 1
"""


class RedisSpendBudgets:
    """`SpendBudgets` in Redis, shared by every replica that points at the same server and
    prefix."""

    def __init__(
        self,
        store: SharedStore,
        *,
        on_fail_open: Callable[[], None] | None = None,
        clock: Callable[[], float] = time.time,
    ):
        self.store = store
        self.on_fail_open = on_fail_open
        self.clock = clock
        self._debit = store.register_script(_DEBIT_SCRIPT)

    def spend_key(self, tenant: str, period: BudgetPeriod) -> str:
        return self.store.key(tenant, f"spend:{period.kind}:{period.period_id}")

    async def check(self, caller: Caller) -> None:
        now = utc_time(self.clock)
        periods = budget_periods(caller.key, now)
        if not periods:
            return
        keys = [self.spend_key(caller.tenant, period) for period in periods]
        stored = await self.store.run(lambda: self.store.client.mget(keys), action="budget check")
        if stored is None:
            if self.on_fail_open is not None:
                self.on_fail_open()
            return
        refuse_if_spent(periods, [float(usd or 0) for usd in stored], now)

    async def charge(self, caller: Caller, usd: float) -> None:
        periods = budget_periods(caller.key, utc_time(self.clock))
        if not periods or usd <= 0:
            return
        keys = [self.spend_key(caller.tenant, period) for period in periods]
        expiries = [int(p.resets_at.timestamp()) + SPEND_EXPIRY_MARGIN_S for p in periods]
        args = [repr(usd), *expiries]
        await self.store.run(lambda: self._debit(keys=keys, args=args), action="spend debit")

    async def aclose(self) -> None:
        await self.store.aclose()


def spend_budgets_from_config(
    store: LocalRateLimitStore | RedisRateLimitStore,
    *,
    on_fail_open: Callable[[], None] | None = None,
    shared: SharedStore | None = None,
    clock: Callable[[], float] = time.time,
) -> SpendBudgets:
    """The budgets' store `auth.rate_limit_store` names (the rate limits' own); `on_fail_open`
    counts requests a shared store could not check. `shared`: the replica's client of that
    Redis, if it has one already."""
    if isinstance(store, RedisRateLimitStore):
        shared = shared or SharedStore.from_config(store)
        return RedisSpendBudgets(shared, on_fail_open=on_fail_open, clock=clock)
    return LocalSpendBudgets(clock)
