"""A tier without a running replica is skipped at once (serve_app/tiers/availability.py).

Serve holds a call to a deployment with no running replica until one starts, so without the
watch a request routed to a lost tier waits out its deadline. The live check of the same
behaviour is tests/test_topology.py (the "GPU" node killed).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

import pytest

from serve_app.accounting.cost_model import RequestCost, TierPrice
from serve_app.accounting.request_trace import RequestTrace
from serve_app.config import QualityConfig, TierConfig, TierName
from serve_app.protocol.errors import TierUnavailableError
from serve_app.quality.fallback import TierFallback
from serve_app.tiers.availability import TierAvailability, keeps_a_replica
from tests.helpers import GOOD, ScriptedTier

PRICE = TierPrice(1e-6, 2e-6)
COST = {"gpu_usd_per_hour": 1.0, "decode_tokens_per_s": 100, "prefill_tokens_per_s": 1000}
BODY = {"model": "cascade", "messages": [{"role": "user", "content": "Capital of France?"}]}


def _tier(deployment_config: dict) -> TierConfig:
    return TierConfig(
        model_id="m", model_source="s", deployment_config=deployment_config, cost=COST
    )


class FakeServe:
    """Serve's RUNNING replica counts as the watch reads them; `broken` makes reads fail."""

    def __init__(self) -> None:
        self.running: dict[TierName, int] = {"small": 1, "large": 1}
        self.broken = False

    def read(self, app: str, deployments: Mapping[TierName, str]) -> dict[TierName, int]:
        assert app == "cascade" and deployments == {"small": "llm-small", "large": "llm-large"}
        if self.broken:
            raise RuntimeError("controller unreachable")
        return dict(self.running)


def _watch(serve: FakeServe, small: dict | None = None) -> TierAvailability:
    tiers = {"small": _tier(small or {"num_replicas": 1}), "large": _tier({})}
    return TierAvailability("cascade", tiers, poll_s=60, read=serve.read)


def test_a_tier_with_no_running_replica_is_unavailable_until_one_runs() -> None:
    serve = FakeServe()

    async def scenario() -> list[tuple[bool, bool]]:
        watch = _watch(serve)
        seen = []
        for running in (
            {"small": 1, "large": 1},
            {"small": 0, "large": 1},
            {"small": 2, "large": 0},
        ):
            serve.running = running
            await watch.refresh()
            seen.append((watch.is_available("small"), watch.is_available("large")))
        return seen

    assert asyncio.run(scenario()) == [(True, True), (False, True), (True, False)]


def test_an_unreadable_serve_counts_every_tier_as_available() -> None:
    serve = FakeServe()

    async def scenario() -> bool:
        watch = _watch(serve)
        serve.running = {"small": 0, "large": 1}
        await watch.refresh()
        assert not watch.is_available("small")
        serve.broken = True
        await watch.refresh()
        return watch.is_available("small")

    assert asyncio.run(scenario())


@pytest.mark.parametrize(
    ("deployment_config", "watched"),
    [
        ({}, True),
        ({"num_replicas": 2}, True),
        ({"autoscaling_config": {"min_replicas": 1, "max_replicas": 4}}, True),
        ({"autoscaling_config": {"min_replicas": 0, "max_replicas": 4}}, False),
    ],
)
def test_a_tier_that_scales_to_zero_is_never_unavailable(deployment_config, watched) -> None:
    assert keeps_a_replica(_tier(deployment_config)) is watched
    serve = FakeServe()
    serve.running = {"small": 0, "large": 1}

    async def available() -> bool:
        watch = _watch(serve, small=deployment_config)
        await watch.refresh()
        return watch.is_available("small")

    assert asyncio.run(available()) is not watched


def _fallback(serve: FakeServe, **quality) -> tuple[TierFallback, ScriptedTier, ScriptedTier]:
    small, large = ScriptedTier("cascade-small"), ScriptedTier("cascade-large")
    watch = _watch(serve)
    fallback = TierFallback(
        {"small": small, "large": large},
        {"small": PRICE, "large": PRICE},
        QualityConfig(**quality),
        availability=watch,
    )
    return fallback, small, large


def _answer(fallback: TierFallback, tier: TierName, *, pinned: bool = False) -> RequestTrace:
    async def ask() -> RequestTrace:
        await fallback.availability.refresh()
        trace = RequestTrace(pinned=pinned, cost=RequestCost(PRICE), tier=tier)
        _, answer = await fallback.answer(BODY, "chat", trace)
        assert answer.text == GOOD
        return trace

    return asyncio.run(ask())


def test_a_routed_request_skips_a_small_tier_without_replicas() -> None:
    serve = FakeServe()
    serve.running = {"small": 0, "large": 1}
    fallback, small, large = _fallback(serve)
    trace = _answer(fallback, "small")
    assert (trace.tier, trace.escalation_reason) == ("large", "small_unavailable")
    assert (small.calls, large.calls) == (0, 1)
    assert fallback.breakers["small"].state == "closed"  # no call, so no failure counted


def test_a_large_tier_without_replicas_is_answered_degraded_when_allowed() -> None:
    serve = FakeServe()
    serve.running = {"small": 1, "large": 0}
    fallback, small, large = _fallback(serve, allow_degraded=True)
    trace = _answer(fallback, "large")
    assert (trace.tier, trace.degraded) == ("small", True)
    assert (small.calls, large.calls) == (1, 0)


@pytest.mark.parametrize(("tier", "pinned"), [("small", False), ("large", False), ("small", True)])
def test_no_tier_to_answer_is_an_immediate_503_with_retry_after(tier, pinned) -> None:
    serve = FakeServe()
    serve.running = {"small": 0, "large": 0}
    fallback, small, large = _fallback(serve)
    with pytest.raises(TierUnavailableError) as refused:
        _answer(fallback, tier, pinned=pinned)
    assert refused.value.status_code == 503
    assert refused.value.code == "tier_unavailable"
    assert int(refused.value.headers["retry-after"]) >= 1
    assert (small.calls, large.calls) == (0, 0)  # nothing waited on a tier with no replica


def test_a_call_already_waiting_on_a_tier_is_abandoned_when_the_tier_goes_down() -> None:
    """Sent just before the watch saw the node go: Serve would hold it until its deadline."""
    serve = FakeServe()
    fallback, small, _ = _fallback(serve)
    small.delay_s = 3600  # waiting on a replica that will never answer

    async def scenario() -> TierUnavailableError:
        await fallback.availability.refresh()
        trace = RequestTrace(pinned=True, cost=RequestCost(PRICE), tier="small")
        call = asyncio.ensure_future(fallback.answer(BODY, "chat", trace))
        while small.calls == 0:  # the call reached the tier
            await asyncio.sleep(0)
        serve.running = {"small": 0, "large": 1}
        await fallback.availability.refresh()
        with pytest.raises(TierUnavailableError) as refused:
            await asyncio.wait_for(call, timeout=60)
        return refused.value

    refused = asyncio.run(scenario())
    assert refused.code == "tier_unavailable"
    assert small.cancelled == 1  # the waiting call was cancelled, not left behind
