"""Prometheus metrics of the cascade, declared once per component.

They go through `ray.serve.metrics`, so Ray's metrics agent exports them on each node's
metrics port next to Ray Serve's own and vLLM's engine metrics (`ray_vllm_*`): one scrape
target per node. Labels stay low-cardinality: tier, cache result, outcome, reason. The counters
of the cost summary (requests, tokens served, dollars, savings, escalations) also carry `tenant`:
a configured API key's tenant, or `other` for every other caller (Caller.tenant_label), so
there is one series per configured tenant, never one per client.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ray.serve.metrics import Counter, Gauge, Histogram

from serve_app.accounting.cost_model import LeverSplit, split_by_lever

if TYPE_CHECKING:
    from serve_app.accounting.request_trace import RequestTrace

LATENCY_MS_BOUNDARIES = [0.5, 1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000]
REQUEST_S_BOUNDARIES = [0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120]


def _cache_fail_opens() -> Counter:
    # Declared by the cache replica (errors) and the ingress (timeouts, dead replica) alike.
    return Counter(
        "cascade_cache_fail_opens",
        description="Requests served uncached because the cache failed or was slow.",
        tag_keys=("reason",),
    )


@dataclass(frozen=True)
class CacheMetrics:
    lookups: Counter
    stores: Counter
    evictions: Counter
    fail_opens: Counter
    rejected_candidates: Counter
    lookup_latency_ms: Histogram
    entries: Gauge

    @classmethod
    def create(cls) -> CacheMetrics:
        return cls(
            lookups=Counter(
                "cascade_cache_lookups",
                description="Cache lookups by result: exact, semantic, miss, error, disabled.",
                tag_keys=("result",),
            ),
            stores=Counter(
                "cascade_cache_stores",
                description="Answers offered to the cache by outcome: stored, skipped, error.",
                tag_keys=("outcome",),
            ),
            evictions=Counter(
                "cascade_cache_evictions",
                description="Entries removed by reason: expired, invalidated.",
                tag_keys=("reason",),
            ),
            fail_opens=_cache_fail_opens(),
            rejected_candidates=Counter(
                "cascade_cache_rejected_candidates",
                description="Semantic matches refused by the near-miss guard, by reason.",
                tag_keys=("reason",),
            ),
            lookup_latency_ms=Histogram(
                "cascade_cache_lookup_latency_ms",
                description="Cache lookup latency inside the cache replica (ms).",
                boundaries=LATENCY_MS_BOUNDARIES,
            ),
            entries=Gauge("cascade_cache_entries", description="Entries in the cache store."),
        )


@dataclass(frozen=True)
class IngressMetrics:
    requests: Counter
    tokens: Counter
    cost_usd: Counter
    counterfactual_usd: Counter
    served_tokens: Counter
    lever_saved_usd: Counter
    lever_cost_usd: Counter
    escalations: Counter
    hedges: Counter
    errors: Counter
    router_fallbacks: Counter
    streams_cut: Counter
    rate_limit_fail_opens: Counter
    cache_fail_opens: Counter
    latency_s: Histogram
    ttft_s: Histogram
    gateway_ms: Histogram
    in_flight: Gauge

    @classmethod
    def create(cls) -> IngressMetrics:
        return cls(
            requests=Counter(
                "cascade_requests",
                description="Answered requests by tier, cache result, escalation, route and "
                "tenant.",
                tag_keys=("tier", "cache", "escalated", "route", "tenant"),
            ),
            tokens=Counter(
                "cascade_tokens",
                description="Tokens processed by each tier (prompt or completion).",
                tag_keys=("tier", "kind"),
            ),
            cost_usd=Counter(
                "cascade_cost_usd",
                description="Dollars spent, by where (small, large, cache, router) and tenant.",
                tag_keys=("component", "tenant"),
            ),
            counterfactual_usd=Counter(
                "cascade_counterfactual_usd",
                description="Dollars the same answers would cost on the large tier, no cache, "
                "by tenant.",
                tag_keys=("tenant",),
            ),
            served_tokens=Counter(
                "cascade_served_tokens",
                description="Tokens of the answers clients received, cache hits included "
                "(prompt or completion), by tenant: the denominator of the blended $/M.",
                tag_keys=("kind", "tenant"),
            ),
            lever_saved_usd=Counter(
                "cascade_lever_saved_usd",
                description="Dollars avoided against the all-large, no-cache counterfactual, "
                "by lever (cache, routing, fallback, pinned) and tenant.",
                tag_keys=("lever", "tenant"),
            ),
            lever_cost_usd=Counter(
                "cascade_lever_cost_usd",
                description="Dollars a lever itself cost (cache lookups, router passes, the "
                "discarded small-tier answer of an escalation), by lever and tenant; net = "
                "saved - cost.",
                tag_keys=("lever", "tenant"),
            ),
            escalations=Counter(
                "cascade_escalations",
                description="Small-tier answers replaced by the large tier, by reason and tenant.",
                tag_keys=("reason", "tenant"),
            ),
            hedges=Counter(
                "cascade_hedges",
                description="Slow small-tier calls raced by the large tier, by the tier that won.",
                tag_keys=("winner",),
            ),
            errors=Counter(
                "cascade_errors",
                description="Requests answered with an error, by HTTP status.",
                tag_keys=("status",),
            ),
            router_fallbacks=Counter(
                "cascade_router_fallbacks",
                description="Requests routed by the ingress's heuristic instead of the router "
                "deployment, by reason: error (the call failed), timeout (past router.timeout_s).",
                tag_keys=("reason",),
            ),
            streams_cut=Counter(
                "cascade_streams_cut",
                description="Relayed streams that ended before the answer did, by reason: "
                "deadline (past the request's timeout) or disconnect (the client left). The "
                "generation is aborted and the tokens generated so far are charged.",
                tag_keys=("reason",),
            ),
            rate_limit_fail_opens=Counter(
                "cascade_rate_limit_fail_opens",
                description="Requests admitted without a check because the shared limit "
                "store (Redis) failed or overran its timeout, by check: rate_limit, budget.",
                tag_keys=("check",),
            ),
            cache_fail_opens=_cache_fail_opens(),
            latency_s=Histogram(
                "cascade_request_latency_s",
                description="End-to-end request latency in the ingress (s).",
                boundaries=REQUEST_S_BOUNDARIES,
                tag_keys=("tier", "cache"),
            ),
            ttft_s=Histogram(
                "cascade_ttft_s",
                description="Time to the first streamed token (s).",
                boundaries=REQUEST_S_BOUNDARIES,
                tag_keys=("tier", "cache"),
            ),
            gateway_ms=Histogram(
                "cascade_gateway_overhead_ms",
                description="Time the ingress spent on a tier-answered request outside the tier "
                "calls (ms): auth, validation, cache lookup, routing, quality checks. Up to the "
                "first byte for streams; hedged requests are left out (their tier calls overlap).",
                boundaries=LATENCY_MS_BOUNDARIES,
                tag_keys=("route",),
            ),
            in_flight=Gauge(
                "cascade_ingress_in_flight",
                description="Requests this ingress replica is working on (its admission count).",
            ),
        )

    def record(self, trace: RequestTrace, latency_s: float) -> LeverSplit:
        """Count one answered request: its route, tokens, dollars, savings and latency."""
        tier = trace.tier or "none"
        tenant = trace.tenant_label
        route = "pinned" if trace.pinned else "routed"
        escalated = "true" if trace.escalated else "false"
        self.requests.inc(
            tags={
                "tier": tier,
                "cache": trace.cache,
                "escalated": escalated,
                "route": route,
                "tenant": tenant,
            }
        )
        self.latency_s.observe(latency_s, tags={"tier": tier, "cache": trace.cache})
        cost = trace.cost
        for usage in cost.tiers:
            _inc(self.tokens, usage.prompt_tokens, {"tier": usage.tier, "kind": "prompt"})
            _inc(self.tokens, usage.completion_tokens, {"tier": usage.tier, "kind": "completion"})
            _inc(self.cost_usd, usage.cost_usd, {"component": usage.tier, "tenant": tenant})
        _inc(self.cost_usd, cost.cache_lookup_usd, {"component": "cache", "tenant": tenant})
        _inc(self.cost_usd, cost.router_usd, {"component": "router", "tenant": tenant})
        _inc(self.counterfactual_usd, cost.counterfactual_usd, {"tenant": tenant})
        _inc(self.served_tokens, cost.prompt_tokens, {"kind": "prompt", "tenant": tenant})
        _inc(self.served_tokens, cost.completion_tokens, {"kind": "completion", "tenant": tenant})
        split = split_by_lever(cost, pinned=trace.pinned, degraded=trace.degraded)
        for lever, usd in split.saved_usd.items():
            _inc(self.lever_saved_usd, usd, {"lever": lever, "tenant": tenant})
        for lever, usd in split.cost_usd.items():
            _inc(self.lever_cost_usd, usd, {"lever": lever, "tenant": tenant})
        if trace.escalation_reason:
            self.escalations.inc(tags={"reason": trace.escalation_reason, "tenant": tenant})
        if trace.hedged:
            self.hedges.inc(tags={"winner": tier})
        return split

    def observe_gateway_overhead(self, trace: RequestTrace) -> None:
        if trace.gateway_s is not None:
            route = "pinned" if trace.pinned else "routed"
            self.gateway_ms.observe(trace.gateway_s * 1000, tags={"route": route})

    def observe_ttft(self, trace: RequestTrace, ttft_s: float) -> None:
        self.ttft_s.observe(ttft_s, tags={"tier": trace.tier or "none", "cache": trace.cache})


@dataclass(frozen=True)
class RouterMetrics:
    heuristic_mode: Gauge

    @classmethod
    def create(cls) -> RouterMetrics:
        return cls(
            heuristic_mode=Gauge(
                "cascade_router_heuristic_mode",
                description="1 when the router scores with the heuristic instead of "
                "a trained checkpoint, by reason: no_checkpoint, checkpoint_failed.",
                tag_keys=("reason",),
            )
        )

    def report_mode(self, heuristic_reason: str | None) -> None:
        """Set the reason in force to 1 and the others to 0 (None: the classifier scores)."""
        for reason in ("no_checkpoint", "checkpoint_failed"):
            self.heuristic_mode.set(float(reason == heuristic_reason), tags={"reason": reason})


def _inc(counter: Counter, value: float, tags: dict[str, str] | None) -> None:
    # Ray's counters refuse zero increments.
    if value > 0:
        counter.inc(value, tags=tags)
