"""The seed lesson's inference cost model: GPU $/hour divided by tokens/second.

$/M tokens = GPU $/hour x GPUs per replica / (tokens/s x 3600) x 1e6. A request pays each tier
it ran on (an escalation pays both), a cache hit pays only the lookup, and savings are reported
against the counterfactual "the same tokens on the large tier, no cache".
"""

from __future__ import annotations

from dataclasses import dataclass, field

from serve_app.config import TierCostConfig, TierName

SECONDS_PER_HOUR = 3600.0
TOKENS_PER_MILLION = 1e6


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
