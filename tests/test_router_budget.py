"""The router has a budget: past it, or on an error, the ingress's heuristic routes.

Routing runs before the request's deadline starts, so a hung router replica used to hang the
request with no limit at all (only exceptions fell back to the heuristic). The router handle is
a stand-in (a Ray handle cannot exist offline): `.route.remote(text)` returns an awaitable that
answers after `delay_s`, never, or with an error; the pipeline's `_route` under test is ours.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import logging
from typing import Any

import pytest
from ray.exceptions import RayActorError

from serve_app.accounting.cost_model import RequestCost, TierPrice
from serve_app.accounting.metrics import IngressMetrics
from serve_app.accounting.request_trace import RequestTrace
from serve_app.config import CascadeConfig
from serve_app.gateway.pipeline import RequestPipeline
from serve_app.routing.scorers import RouteDecision
from tests.helpers import ScriptedTier, chat_body

# How long a test waits for `_route` before calling it hung (the old code never returned).
HUNG_S = 5.0
TIER_COST = {"gpu_usd_per_hour": 1.0, "decode_tokens_per_s": 100, "prefill_tokens_per_s": 1000}


class StandInRouter:
    """Stands in for the router deployment's handle: `route.remote(text)` is an awaitable that
    answers `tier` after `delay_s` (None: never), or raises `error`."""

    def __init__(
        self, delay_s: float | None, *, tier: str = "large", error: BaseException | None = None
    ) -> None:
        self.route = self  # handle.route.remote(...)
        self.delay_s = delay_s
        self.tier = tier
        self.error = error
        self.calls = 0
        self.cancelled = 0
        self.answered = 0

    def remote(self, text: str) -> Any:
        return self._route(text)

    async def _route(self, text: str) -> RouteDecision:
        self.calls += 1
        try:
            if self.delay_s is None:
                await asyncio.Event().wait()  # a hung replica
            await asyncio.sleep(self.delay_s or 0.0)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        self.answered += 1
        if self.error is not None:
            raise self.error
        return RouteDecision(
            tier=self.tier,  # type: ignore[arg-type]
            score=0.99,
            scorer="classifier",
            threshold=0.5,
            latency_ms=0.4,
        )


class RecordingCounter:
    def __init__(self) -> None:
        self.tags: list[dict[str, str] | None] = []

    def inc(self, value: float = 1.0, tags: dict[str, str] | None = None) -> None:
        self.tags.append(tags)


def _pipeline(router: StandInRouter, **router_config: Any) -> tuple[RequestPipeline, Any]:
    tier = {"model_source": "stand-in", "accelerator": "cpu", "cost": TIER_COST}
    config = CascadeConfig.model_validate(
        {
            "router": router_config,
            "tiers": {
                "small": {"model_id": "cascade-small", **tier},
                "large": {"model_id": "cascade-large", **tier},
            },
        }
    )
    fallbacks = RecordingCounter()
    metrics = dataclasses.replace(IngressMetrics.create(), router_fallbacks=fallbacks)
    tiers = {"small": ScriptedTier("cascade-small"), "large": ScriptedTier("cascade-large")}
    pipeline = RequestPipeline(
        config,
        tiers=tiers,  # type: ignore[arg-type]
        router=router,  # type: ignore[arg-type]
        cache=None,
        metrics=metrics,
    )
    return pipeline, fallbacks


def _trace() -> RequestTrace:
    return RequestTrace(pinned=False, cost=RequestCost(TierPrice(1e-6, 2e-6)))


async def _route(pipeline: RequestPipeline, trace: RequestTrace) -> str:
    # A short, easy question: the heuristic sends it to the small tier, the stand-in router
    # to the large one, so the answer says who decided.
    body = chat_body("What is the capital of France?")
    return await asyncio.wait_for(pipeline._route(body, "chat", None, trace), HUNG_S)


def test_a_hung_router_is_overruled_by_the_heuristic_within_the_budget() -> None:
    router = StandInRouter(delay_s=None)
    pipeline, fallbacks = _pipeline(router)  # the default budget
    trace = _trace()

    async def scenario() -> str:
        # `_route` gives up after HUNG_S: a decision before then is the budget's, not forever.
        tier = await _route(pipeline, trace)
        await asyncio.sleep(0)  # let the abandoned call's cancellation land
        return tier

    tier = asyncio.run(scenario())
    assert (tier, trace.routed_to) == ("small", "small")  # the heuristic's decision
    assert fallbacks.tags == [{"reason": "timeout"}]
    assert router.cancelled == 1  # the abandoned call does not linger in the ingress
    assert trace.cost.router_usd > 0  # the heuristic's pass is charged


def test_a_router_answering_within_budget_decides() -> None:
    router = StandInRouter(delay_s=0.005)
    pipeline, fallbacks = _pipeline(router)
    trace = _trace()
    tier = asyncio.run(_route(pipeline, trace))
    assert (tier, trace.route_score) == ("large", 0.99)
    assert fallbacks.tags == []


def test_a_failing_router_falls_back_at_once_and_is_counted_as_an_error() -> None:
    router = StandInRouter(delay_s=0.0, error=RayActorError())
    pipeline, fallbacks = _pipeline(router)
    trace = _trace()
    tier = asyncio.run(_route(pipeline, trace))
    assert tier == "small"
    assert fallbacks.tags == [{"reason": "error"}]  # not "timeout": it did not wait the budget


def test_a_late_router_reply_is_dropped_without_an_unretrieved_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The router answers (with an error, the worst case for an abandoned task) after the budget.
    router = StandInRouter(delay_s=0.2, error=RayActorError())
    pipeline, fallbacks = _pipeline(router)
    trace = _trace()

    async def scenario() -> str:
        tier = await _route(pipeline, trace)
        await asyncio.sleep(0.4)  # past the moment the late reply would have come
        return tier

    with caplog.at_level(logging.ERROR, logger="asyncio"):
        assert asyncio.run(scenario()) == "small"
        gc.collect()  # an unretrieved task exception is logged when the task is collected
    assert fallbacks.tags == [{"reason": "timeout"}]
    assert not [r for r in caplog.records if "never retrieved" in r.getMessage()]


def test_routing_dropped_for_a_cache_hit_cancels_the_router_call() -> None:
    router = StandInRouter(delay_s=None)
    pipeline, fallbacks = _pipeline(router, timeout_s=10.0)  # no race with the budget

    async def scenario() -> None:
        body = chat_body("What is the capital of France?")
        routing = asyncio.ensure_future(pipeline._route(body, "chat", None, _trace()))
        await asyncio.sleep(0.01)
        routing.cancel()  # what a cache hit does
        with pytest.raises(asyncio.CancelledError):
            await routing
        await asyncio.sleep(0)

    asyncio.run(scenario())
    assert router.cancelled == 1
    assert fallbacks.tags == []  # a dropped routing is no router fallback


# ---- a router scoring in the ingress (serve_app.routing.placement) ---------------------------


class _FailingScorer:
    def score_batch(self, texts: list[str], embeddings: Any = None) -> list[float]:
        raise ValueError("the model was trained with other prompt features")


def test_the_shipped_router_scores_in_the_ingress_with_its_own_threshold() -> None:
    """No hop: the pipeline's router is the shipped difficulty router itself, and a decision
    carries its score and the threshold derived from the configured target."""
    from serve_app.routing.router import Router

    config = {"checkpoint": "builtin://default-router", "target": {"quality": 0.95}}
    router = Router(config, batched=False)
    pipeline, fallbacks = _pipeline(router, **config)  # type: ignore[arg-type]
    trace = _trace()
    body = chat_body("Prove that there are infinitely many primes of the form 4k+3.")
    decision = asyncio.run(pipeline._decide("x", body, None))
    assert decision.scorer == "classifier"
    assert decision.threshold == router.threshold
    tier = asyncio.run(_route(pipeline, trace))
    assert trace.route_score is not None and 0.0 <= trace.route_score <= 1.0
    assert tier == ("large" if trace.route_score >= router.threshold else "small")
    assert fallbacks.tags == []


def test_a_failing_scorer_in_the_ingress_is_overruled_by_the_heuristic() -> None:
    from serve_app.routing.router import Router

    router = Router({"checkpoint": "builtin://default-router"}, batched=False)
    router._active = dataclasses.replace(router._active, scorer=_FailingScorer())
    pipeline, fallbacks = _pipeline(router)  # type: ignore[arg-type]
    trace = _trace()
    tier = asyncio.run(_route(pipeline, trace))
    assert (tier, trace.routed_to) == ("small", "small")  # the heuristic's decision
    assert fallbacks.tags == [{"reason": "error"}]
