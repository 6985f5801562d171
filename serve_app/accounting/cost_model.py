"""The seed lesson's inference cost model: GPU $/hour divided by tokens/second.

$/M tokens = GPU $/hour x GPUs per replica / (tokens/s x 3600) x 1e6. A request pays each tier
it ran on (an escalation pays both), a cache hit pays only the lookup, and savings are reported
against the counterfactual "the same tokens on the large tier, no cache".
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, get_args

from serve_app.config import TierCostConfig, TierName

SECONDS_PER_HOUR = 3600.0
TOKENS_PER_MILLION = 1e6

Lever = Literal["cache", "routing", "fallback", "pinned"]
"""Where a request's saving (or extra cost) against the all-large, no-cache counterfactual
comes from. `pinned`: the client chose a tier itself (`cascade-small`), no lever of ours."""
LEVERS: tuple[Lever, ...] = get_args(Lever)


def usd_per_million_tokens(gpu_usd_per_hour: float, gpus: int, tokens_per_s: float) -> float:
    """Cost of one million tokens on `gpus` accelerators sustaining `tokens_per_s`."""
    if tokens_per_s <= 0:
        raise ValueError(f"tokens_per_s must be > 0, got {tokens_per_s}")
    return gpu_usd_per_hour * gpus / (tokens_per_s * SECONDS_PER_HOUR) * TOKENS_PER_MILLION


def break_even_tokens_per_s(
    gpu_usd_per_hour: float, gpus: int, target_usd_per_million: float
) -> float:
    """Throughput needed to bring the price down to `target_usd_per_million`."""
    if target_usd_per_million <= 0:
        raise ValueError(f"target_usd_per_million must be > 0, got {target_usd_per_million}")
    usd_per_s = gpu_usd_per_hour * gpus / SECONDS_PER_HOUR
    return usd_per_s * TOKENS_PER_MILLION / target_usd_per_million


def cpu_usd(cpu_usd_per_hour: float, cpu_seconds: float) -> float:
    """Cost of CPU work such as a cache lookup or a router forward pass."""
    return cpu_usd_per_hour * cpu_seconds / SECONDS_PER_HOUR


@dataclass(frozen=True)
class TierPrice:
    """Per-token price of one tier, derived from its replica's price and throughput."""

    input_usd_per_token: float
    output_usd_per_token: float

    @classmethod
    def from_config(cls, cfg: TierCostConfig) -> TierPrice:
        # Prompt tokens are priced at prefill throughput and output tokens at decode
        # throughput: the same GPU-hour buys very different numbers of each.
        return cls(
            input_usd_per_token=usd_per_million_tokens(
                cfg.gpu_usd_per_hour, cfg.gpus_per_replica, cfg.prefill_tokens_per_s
            )
            / TOKENS_PER_MILLION,
            output_usd_per_token=usd_per_million_tokens(
                cfg.gpu_usd_per_hour, cfg.gpus_per_replica, cfg.decode_tokens_per_s
            )
            / TOKENS_PER_MILLION,
        )

    def cost_usd(self, prompt_tokens: int, completion_tokens: int) -> float:
        return (
            prompt_tokens * self.input_usd_per_token + completion_tokens * self.output_usd_per_token
        )


@dataclass(frozen=True)
class TierUsage:
    """Tokens one tier processed for a request, and what they cost."""

    tier: TierName
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float


@dataclass
class RequestCost:
    """What one request paid, and what it would have paid on the large tier without a cache.

    `prompt_tokens`/`completion_tokens` are those of the answer the client received (the last
    tier that answered, or the cached answer); the counterfactual prices them on the large tier.
    """

    large_price: TierPrice
    tiers: list[TierUsage] = field(default_factory=list)
    cache_lookup_usd: float = 0.0
    router_usd: float = 0.0
    cache_hit: bool = False
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def charge_tier(
        self, tier: TierName, price: TierPrice, prompt_tokens: int, completion_tokens: int
    ) -> TierUsage:
        usage = TierUsage(
            tier, prompt_tokens, completion_tokens, price.cost_usd(prompt_tokens, completion_tokens)
        )
        self.tiers.append(usage)
        # An escalated answer replaces the small tier's, so the client got the last one.
        self.prompt_tokens, self.completion_tokens = prompt_tokens, completion_tokens
        return usage

    def charge_abandoned(self, tier: TierName, price: TierPrice, prompt_tokens: int) -> None:
        """A tier call cancelled once another tier's answer won (a hedged escalation).

        It prefilled the prompt; the tokens it decoded before the cancel are not visible to a
        non-streamed call, so they go uncharged. Kept before the answering tier, which must
        stay last.
        """
        usage = TierUsage(tier, prompt_tokens, 0, price.cost_usd(prompt_tokens, 0))
        self.tiers.insert(max(len(self.tiers) - 1, 0), usage)

    def charge_cache_lookup(self, usd: float) -> None:
        self.cache_lookup_usd += usd

    def charge_cache_hit(self, usd: float, prompt_tokens: int, completion_tokens: int) -> None:
        self.charge_cache_lookup(usd)
        self.cache_hit = True
        self.prompt_tokens, self.completion_tokens = prompt_tokens, completion_tokens

    def charge_router(self, usd: float) -> None:
        self.router_usd += usd

    @property
    def tiers_usd(self) -> float:
        return sum(usage.cost_usd for usage in self.tiers)

    @property
    def total_usd(self) -> float:
        return self.tiers_usd + self.cache_lookup_usd + self.router_usd

    @property
    def counterfactual_usd(self) -> float:
        return self.large_price.cost_usd(self.prompt_tokens, self.completion_tokens)

    @property
    def saved_usd(self) -> float:
        return self.counterfactual_usd - self.total_usd


@dataclass(frozen=True)
class LeverSplit:
    """One request's saving split by lever: gross dollars avoided, and what the lever cost.

    Kept as two non-negative parts because Prometheus counters only go up; per request
    sum(saved) - sum(cost) == counterfactual_usd - total_usd.
    """

    saved_usd: dict[Lever, float]
    cost_usd: dict[Lever, float]

    def net_usd(self, lever: Lever) -> float:
        return self.saved_usd.get(lever, 0.0) - self.cost_usd.get(lever, 0.0)


def split_by_lever(cost: RequestCost, *, pinned: bool, degraded: bool) -> LeverSplit:
    """Attribute a request's saving against the counterfactual to the lever that made it.

    - cache: a hit avoids the whole counterfactual; every lookup (hit or miss) costs CPU.
    - routing: an answer from the tier the router chose saves the counterfactual minus that
      tier's cost (zero on the large tier); every routing pass costs CPU.
    - fallback: an escalation or a hedge throws away the other tier's attempt (a cost, paid
      for quality or latency); a degraded answer (large tier down, small answered) saves like
      routing.
    - pinned: the client's own tier choice.
    """
    saved: dict[Lever, float] = {}
    spent: dict[Lever, float] = {"cache": cost.cache_lookup_usd, "routing": cost.router_usd}
    if cost.cache_hit:
        saved["cache"] = cost.counterfactual_usd
        return LeverSplit(saved, spent)
    if not cost.tiers:
        return LeverSplit(saved, spent)
    answered = cost.tiers[-1]
    answer_saving = max(cost.counterfactual_usd - answered.cost_usd, 0.0)
    if pinned:
        saved["pinned"] = answer_saving
    elif degraded:
        saved["fallback"] = answer_saving
    else:
        saved["routing"] = answer_saving
    if len(cost.tiers) > 1:
        spent["fallback"] = sum(usage.cost_usd for usage in cost.tiers[:-1])
    return LeverSplit(saved, spent)


@dataclass
class CostLedger:
    """Running cost totals of one ingress replica: what `GET /admin/cost/summary` returns.

    Each replica keeps its own; the Prometheus counters carry the same figures summed over
    replicas (`python -m serve_app.ops.report`).
    """

    requests: int = 0
    cache_hits: int = 0
    escalations: int = 0
    served_prompt_tokens: int = 0
    served_completion_tokens: int = 0
    spent_usd: dict[str, float] = field(default_factory=dict)
    counterfactual_usd: float = 0.0
    lever_saved_usd: dict[str, float] = field(default_factory=dict)
    lever_cost_usd: dict[str, float] = field(default_factory=dict)

    def add(self, cost: RequestCost, split: LeverSplit, *, escalated: bool) -> None:
        self.requests += 1
        self.cache_hits += int(cost.cache_hit)
        self.escalations += int(escalated)
        self.served_prompt_tokens += cost.prompt_tokens
        self.served_completion_tokens += cost.completion_tokens
        for usage in cost.tiers:
            _add(self.spent_usd, usage.tier, usage.cost_usd)
        _add(self.spent_usd, "cache", cost.cache_lookup_usd)
        _add(self.spent_usd, "router", cost.router_usd)
        self.counterfactual_usd += cost.counterfactual_usd
        for lever, usd in split.saved_usd.items():
            _add(self.lever_saved_usd, lever, usd)
        for lever, usd in split.cost_usd.items():
            _add(self.lever_cost_usd, lever, usd)

    def summary(self) -> dict[str, object]:
        return cost_summary(
            spent_usd=self.spent_usd,
            counterfactual_usd=self.counterfactual_usd,
            served_tokens=self.served_prompt_tokens + self.served_completion_tokens,
            lever_saved_usd=self.lever_saved_usd,
            lever_cost_usd=self.lever_cost_usd,
        ) | {
            "requests": self.requests,
            "cache_hits": self.cache_hits,
            "escalations": self.escalations,
            "served_prompt_tokens": self.served_prompt_tokens,
            "served_completion_tokens": self.served_completion_tokens,
        }


@dataclass
class TenantLedgers:
    """One replica's cost totals overall and per tenant label (`Caller.tenant_label`: the
    configured tenants and `other`, so as many ledgers as the metrics have series)."""

    total: CostLedger = field(default_factory=CostLedger)
    by_tenant: dict[str, CostLedger] = field(default_factory=dict)

    def add(self, tenant: str, cost: RequestCost, split: LeverSplit, *, escalated: bool) -> None:
        self.total.add(cost, split, escalated=escalated)
        ledger = self.by_tenant.setdefault(tenant, CostLedger())
        ledger.add(cost, split, escalated=escalated)

    def summary(self, tenant: str | None = None) -> dict[str, object]:
        """Every tenant's totals, or one tenant's (zeros if it has sent nothing yet)."""
        if tenant is None:
            return self.total.summary()
        return self.by_tenant.get(tenant, CostLedger()).summary()


def cost_summary(
    *,
    spent_usd: dict[str, float],
    counterfactual_usd: float,
    served_tokens: float,
    lever_saved_usd: dict[str, float],
    lever_cost_usd: dict[str, float],
) -> dict[str, object]:
    """Totals, blended $/M served tokens against the baseline's, and net savings by lever."""
    total_usd = sum(spent_usd.values())
    per_million = TOKENS_PER_MILLION / served_tokens if served_tokens else 0.0
    return {
        "spent_usd": total_usd,
        "spent_usd_by_component": dict(spent_usd),
        "counterfactual_usd": counterfactual_usd,
        "saved_usd": counterfactual_usd - total_usd,
        "saved_fraction": 1 - total_usd / counterfactual_usd if counterfactual_usd else 0.0,
        "blended_usd_per_million_tokens": total_usd * per_million,
        "baseline_usd_per_million_tokens": counterfactual_usd * per_million,
        "net_saved_usd_by_lever": {
            lever: lever_saved_usd.get(lever, 0.0) - lever_cost_usd.get(lever, 0.0)
            for lever in LEVERS
        },
    }


def _add(totals: dict[str, float], key: str, usd: float) -> None:
    totals[key] = totals.get(key, 0.0) + usd
