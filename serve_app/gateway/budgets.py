"""Dollar budgets of API keys, per UTC calendar day and month (`usd_per_day`, `usd_per_month`).

A tenant's spend is the actual cost of its requests (`x-cascade-cost-usd`), debited after each
answer, the way a rate limit's tokens are: after a stream too, however it ended. Admission only
reads the spend, so requests already running when a budget runs out still finish: a tenant may
overshoot by what its requests in flight cost. Spend is kept per tenant, like rate limits: keys
of one tenant share it, each checked against its own budgets. Only the periods a key has a
budget for are counted; a key without budgets costs no lookup at all.

Here: the periods, the refusal, and the spend in this replica's memory (one ingress replica);
gateway/shared_budgets.py keeps it in Redis for all replicas.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal, Protocol

from serve_app.config import ApiKeyConfig
from serve_app.protocol.caller import Caller
from serve_app.protocol.errors import BudgetExceededError

BudgetKind = Literal["daily", "monthly"]
_SPENT_WHEN: dict[BudgetKind, str] = {"daily": "today", "monthly": "this month"}


@dataclass(frozen=True)
class BudgetPeriod:
    """One of a key's budgets, over the calendar period that a moment falls in."""

    kind: BudgetKind
    limit_usd: float
    period_id: str  # "2025-06-14" or "2025-06": which period's spend counts
    resets_at: datetime  # the next period's start, UTC

    def seconds_until_reset(self, now: datetime) -> float:
        return (self.resets_at - now).total_seconds()


def utc_time(clock: Callable[[], float]) -> datetime:
    """`clock()` (Unix seconds, as time.time) as an aware UTC datetime."""
    return datetime.fromtimestamp(clock(), UTC)


def _next_month(now: datetime) -> datetime:
    year, month = (now.year + 1, 1) if now.month == 12 else (now.year, now.month + 1)
    return datetime(year, month, 1, tzinfo=UTC)


def budget_periods(key: ApiKeyConfig | None, now: datetime) -> list[BudgetPeriod]:
    """The key's budgets at `now`, monthly first: past both, the month decides when the key
    is served again."""
    if key is None:
        return []
    periods = []
    if key.usd_per_month is not None:
        month_id = f"{now.year:04d}-{now.month:02d}"
        periods.append(BudgetPeriod("monthly", key.usd_per_month, month_id, _next_month(now)))
    if key.usd_per_day is not None:
        midnight = datetime(now.year, now.month, now.day, tzinfo=UTC)
        day_id = midnight.date().isoformat()
        periods.append(BudgetPeriod("daily", key.usd_per_day, day_id, midnight + timedelta(days=1)))
    return periods


def _usd(amount: float) -> str:
    """Dollars as a person reads them: cents for real budgets, every digit for tiny ones."""
    if amount >= 0.01:
        return f"${amount:,.2f}"
    return "$" + f"{amount:.10f}".rstrip("0").rstrip(".")


def budget_refusal(period: BudgetPeriod, spent_usd: float, now: datetime) -> BudgetExceededError:
    resets_at = period.resets_at.strftime("%Y-%m-%dT%H:%M:%SZ")
    return BudgetExceededError(
        f"{period.kind.capitalize()} budget of {_usd(period.limit_usd)} for this API key is "
        f"spent ({_usd(spent_usd)} used {_SPENT_WHEN[period.kind]}); it resets at {resets_at}.",
        retry_after_s=period.seconds_until_reset(now),
    )


def refuse_if_spent(
    periods: Sequence[BudgetPeriod], spent_usd: Sequence[float], now: datetime
) -> None:
    """Raise the refusal of the first budget (monthly before daily) whose spend reached it."""
    for period, spent in zip(periods, spent_usd, strict=True):
        if spent >= period.limit_usd:
            raise budget_refusal(period, spent, now)


class SpendBudgets(Protocol):
    """Per-tenant spend against the dollar budgets of the API keys that set one."""

    async def check(self, caller: Caller) -> None:
        """Raise BudgetExceededError (429) if one of the caller's budgets is spent."""
        ...

    async def charge(self, caller: Caller, usd: float) -> None:
        """Add a finished request's actual cost to the caller's spend."""
        ...


class LocalSpendBudgets:
    """`SpendBudgets` in this ingress replica's memory (`rate_limit_store: {kind: local}`).

    With N ingress replicas each counts only its own requests, so a tenant may spend up to N
    times its budget; several replicas share the spend through Redis instead.
    """

    def __init__(self, clock: Callable[[], float] = time.time):
        self.clock = clock
        # (tenant, kind) -> (period_id, dollars): a new period starts from zero.
        self.spent: dict[tuple[str, BudgetKind], tuple[str, float]] = {}

    def _spent_usd(self, tenant: str, period: BudgetPeriod) -> float:
        period_id, usd = self.spent.get((tenant, period.kind), (period.period_id, 0.0))
        return usd if period_id == period.period_id else 0.0

    async def check(self, caller: Caller) -> None:
        now = utc_time(self.clock)
        periods = budget_periods(caller.key, now)
        refuse_if_spent(periods, [self._spent_usd(caller.tenant, p) for p in periods], now)

    async def charge(self, caller: Caller, usd: float) -> None:
        if usd <= 0:
            return
        for period in budget_periods(caller.key, utc_time(self.clock)):
            spent = self._spent_usd(caller.tenant, period) + usd
            self.spent[(caller.tenant, period.kind)] = (period.period_id, spent)
