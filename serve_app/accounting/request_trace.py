"""What happened to one request on its way through the cascade, and its `x-cascade-*` headers."""

from __future__ import annotations

from dataclasses import dataclass

from serve_app.accounting.cost_model import RequestCost
from serve_app.config import OTHER_TENANT, TierName
from serve_app.protocol.caller import Caller


@dataclass
class RequestTrace:
    pinned: bool
    cost: RequestCost
    tier: TierName | None = None
    routed_to: TierName | None = None
    route_score: float | None = None
    route_reason: str | None = None  # what overruled the router: "context" (prompt length)
    cache: str = "miss"  # hit / miss / bypass / error
    escalated: bool = False
    escalation_reason: str | None = None
    degraded: bool = False
    hedged: bool = False  # the small tier was slow and the large tier raced it
    caller: Caller | None = None
    deadline_s: float | None = None  # time.monotonic() by which the answer must be complete
    tier_wait_s: float = 0.0  # spent awaiting tier calls (to the first chunk, for streams)
    gateway_s: float | None = None  # the ingress's own time until the response started

    @property
    def tenant_label(self) -> str:
        """The caller's tenant as the cost metrics label it (Caller.tenant_label)."""
        return self.caller.tenant_label if self.caller is not None else OTHER_TENANT

    def note_gateway_time(self, since_s: float, now_s: float) -> None:
        """What the ingress added since `since_s` (perf_counter), tier calls excluded.

        Left unset for hedged requests, whose tier calls overlap.
        """
        if not self.hedged:
            self.gateway_s = max(now_s - since_s - self.tier_wait_s, 0.0)

    def escalate(self, reason: str) -> None:
        self.escalated = True
        self.escalation_reason = reason
        self.tier = "large"

    def degrade(self) -> None:
        """The large tier failed and the small tier answered instead."""
        self.degraded = True
        self.tier = "small"

    def headers(self) -> dict[str, str]:
        headers = {
            "x-cascade-tier": self.tier or "none",
            "x-cascade-cache": self.cache,
            "x-cascade-escalated": "true" if self.escalated else "false",
            "x-cascade-cost-usd": f"{self.cost.total_usd:.10f}",
            "x-cascade-counterfactual-usd": f"{self.cost.counterfactual_usd:.10f}",
            "x-cascade-route": "pinned" if self.pinned else (self.routed_to or "none"),
        }
        if self.route_score is not None:
            headers["x-cascade-route-score"] = f"{self.route_score:.4f}"
        if self.route_reason:
            headers["x-cascade-route-reason"] = self.route_reason
        if self.escalation_reason:
            headers["x-cascade-escalation-reason"] = self.escalation_reason
        if self.degraded:
            headers["x-cascade-degraded"] = "true"
        if self.hedged:
            headers["x-cascade-hedged"] = "true"
        if self.gateway_s is not None:
            headers["x-cascade-gateway-ms"] = f"{self.gateway_s * 1000:.2f}"
        return headers
