"""A slow small tier is raced by the large tier instead of abandoned: the first good answer wins.

Before hedging, a small-tier call past `small_tier_timeout_s` was cancelled and the large tier
started from scratch with whatever was left of the deadline, so long answers ended in 504s
(22 of 153 in the savings run). The engines are scripted (`ScriptedTier`) because a real one
cannot be told how long to take; the fallback logic, the costs and the breaker are ours.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from serve_app.accounting.cost_model import RequestCost, TierPrice
from serve_app.accounting.request_trace import RequestTrace
from serve_app.config import QualityConfig
from serve_app.protocol.errors import TierUnavailableError
from serve_app.protocol.responses import Answer
from serve_app.quality.circuit_breaker import CircuitBreaker
from serve_app.quality.fallback import TierFallback
from tests.helpers import ScriptedTier

SMALL_PRICE, LARGE_PRICE = TierPrice(1e-7, 2e-7), TierPrice(1e-6, 4e-6)
BODY = {"model": "cascade", "messages": [{"role": "user", "content": "Capital of France?"}]}


def _fallback(small: ScriptedTier, large: ScriptedTier, timeout_s: float) -> TierFallback:
    return TierFallback(
        {"small": small, "large": large},
        {"small": SMALL_PRICE, "large": LARGE_PRICE},
        QualityConfig(small_tier_timeout_s=timeout_s),
    )


def _ask(fallback: TierFallback, deadline_in_s: float | None = None) -> tuple[RequestTrace, Answer]:
    trace = RequestTrace(pinned=False, cost=RequestCost(LARGE_PRICE), tier="small")
    if deadline_in_s is not None:
        trace.deadline_s = time.monotonic() + deadline_in_s
    _, answer = asyncio.run(fallback.answer(BODY, "chat", trace))
    return trace, answer


def test_large_tier_answers_when_the_small_one_is_stuck_and_the_small_call_is_aborted() -> None:
    small = ScriptedTier("cascade-small", delay_s=5.0)
    large = ScriptedTier("cascade-large", delay_s=0.05)
    started = time.perf_counter()
    trace, answer = _ask(_fallback(small, large, timeout_s=0.1))
    assert time.perf_counter() - started < 1.0  # not the 5 s the small tier would have taken
    assert answer.model == "cascade-large"
    assert (trace.tier, trace.escalation_reason, trace.hedged) == ("large", "timeout", True)
    assert small.cancelled == 1  # its generation is aborted, not left running
    assert trace.headers()["x-cascade-hedged"] == "true"
    trace.note_gateway_time(started, time.perf_counter())
    assert "x-cascade-gateway-ms" not in trace.headers()  # overlapping tier calls: no figure
    # The aborted small call's prefill is paid; the large answer is what the client got.
    assert [(u.tier, u.completion_tokens) for u in trace.cost.tiers] == [
        ("small", 0),
        ("large", 16),
    ]


def test_a_small_answer_finishing_after_the_hedge_starts_still_wins() -> None:
    small = ScriptedTier("cascade-small", delay_s=0.3)
    large = ScriptedTier("cascade-large", delay_s=5.0)
    trace, answer = _ask(_fallback(small, large, timeout_s=0.1))
    assert answer.model == "cascade-small"
    assert (trace.tier, trace.escalated, trace.hedged) == ("small", False, True)
    assert large.calls == 1 and large.cancelled == 1
    assert [(u.tier, u.completion_tokens) for u in trace.cost.tiers] == [
        ("large", 0),
        ("small", 16),
    ]
    assert trace.cost.total_usd < trace.cost.counterfactual_usd


def test_a_weak_small_answer_after_the_hedge_waits_for_the_large_one() -> None:
    small = ScriptedTier("cascade-small", delay_s=0.2, text="The capital of France is")
    small.finish_reason = "length"
    large = ScriptedTier("cascade-large", delay_s=0.5)
    trace, answer = _ask(_fallback(small, large, timeout_s=0.1))
    assert answer.model == "cascade-large"
    assert (trace.escalation_reason, trace.hedged) == ("truncated", True)
    assert large.cancelled == 0
    assert [u.tier for u in trace.cost.tiers] == ["small", "large"]


def test_a_failed_large_tier_leaves_the_slow_small_answer_standing() -> None:
    small = ScriptedTier("cascade-small", delay_s=0.4)
    large = ScriptedTier("cascade-large", delay_s=0.0)
    large.failing = True
    trace, answer = _ask(_fallback(small, large, timeout_s=0.1))
    assert answer.model == "cascade-small"
    assert (trace.tier, trace.escalated) == ("small", False)


def test_a_short_deadline_starts_the_hedge_at_half_the_time_left() -> None:
    small = ScriptedTier("cascade-small", delay_s=5.0)
    large = ScriptedTier("cascade-large", delay_s=0.05)
    started = time.monotonic()
    trace, answer = _ask(_fallback(small, large, timeout_s=60), deadline_in_s=1.0)
    # Hedged before the small tier's 5 s answer, so not at the configured 60 s ...
    assert answer.model == "cascade-large" and trace.hedged
    assert small.cancelled == 1
    # ... and not at once either: the small tier had half the 1 s left to itself. A loaded
    # machine only moves the hedge later, so this bound holds under load.
    assert large.called_at[0] - started >= 0.5


def test_a_fast_small_answer_never_touches_the_large_tier() -> None:
    small = ScriptedTier("cascade-small", delay_s=0.2)
    large = ScriptedTier("cascade-large", delay_s=0.0)
    started = time.perf_counter()
    trace, answer = _ask(_fallback(small, large, timeout_s=1.0), deadline_in_s=30)
    assert answer.model == "cascade-small"
    assert (trace.hedged, large.calls) == (False, 0)
    assert "x-cascade-hedged" not in trace.headers()
    # The gateway's own time leaves out the 0.2 s the tier took: 5 ms of its own work on
    # top of the tier wait reads as 5 ms.
    assert trace.tier_wait_s >= 0.2
    trace.note_gateway_time(started, started + trace.tier_wait_s + 0.005)
    assert float(trace.headers()["x-cascade-gateway-ms"]) == pytest.approx(5.0, abs=0.01)


@pytest.mark.parametrize("allow_degraded", [True, False])
def test_a_weak_small_answer_beats_a_dead_large_tier_only_when_degraded_is_allowed(
    allow_degraded: bool,
) -> None:
    small = ScriptedTier("cascade-small", text="The capital of France is")
    small.finish_reason = "length"
    large = ScriptedTier("cascade-large")
    large.failing = True
    fallback = TierFallback(
        {"small": small, "large": large},
        {"small": SMALL_PRICE, "large": LARGE_PRICE},
        QualityConfig(allow_degraded=allow_degraded),
    )
    if not allow_degraded:
        with pytest.raises(TierUnavailableError):
            _ask(fallback)
        return
    trace, answer = _ask(fallback)
    assert answer.model == "cascade-small"
    assert (trace.tier, trace.escalation_reason, trace.degraded) == ("small", "truncated", True)
    assert trace.headers()["x-cascade-degraded"] == "true"


def test_slow_small_answers_lost_to_the_hedge_do_not_open_the_small_circuit() -> None:
    # Under load the small tier is slow, not broken: every request is hedged and the large
    # tier wins. Counting each aborted small call as a failure opened the small circuit after
    # `failure_threshold` of them and sent all traffic to the large tier for the cool-down.
    small = ScriptedTier("cascade-small", delay_s=0.5)
    large = ScriptedTier("cascade-large", delay_s=0.02)
    fallback = TierFallback(
        {"small": small, "large": large},
        {"small": SMALL_PRICE, "large": LARGE_PRICE},
        QualityConfig(
            small_tier_timeout_s=0.05, circuit_breaker={"failure_threshold": 2, "cooldown_s": 60}
        ),
    )

    async def burst() -> list[RequestTrace]:
        traces = [
            RequestTrace(pinned=False, cost=RequestCost(LARGE_PRICE), tier="small")
            for _ in range(3)
        ]
        await asyncio.gather(*(fallback.answer(BODY, "chat", trace) for trace in traces))
        return traces

    traces = asyncio.run(burst())
    assert [(t.tier, t.escalation_reason, t.hedged) for t in traces] == [
        ("large", "timeout", True)
    ] * 3
    assert small.cancelled == 3
    assert fallback.breakers["small"].state == "closed"
    trace, _ = _ask(fallback)  # the next request still tries the small tier first
    assert (trace.escalation_reason, small.calls) == ("timeout", 4)


def test_a_half_open_small_trial_lost_to_the_hedge_leaves_the_circuit_half_open() -> None:
    small = ScriptedTier("cascade-small", delay_s=0.5)
    large = ScriptedTier("cascade-large", delay_s=0.02)
    fallback = _fallback(small, large, timeout_s=0.05)
    now_s = [100.0]
    fallback.breakers["small"] = CircuitBreaker(1, cooldown_s=10, clock=lambda: now_s[0])
    fallback.breakers["small"].record_failure()
    now_s[0] += 11
    trace, answer = _ask(fallback)  # the trial: slow, so hedged, and the large tier wins
    assert (answer.model, trace.hedged, small.calls) == ("cascade-large", True, 1)
    assert fallback.breakers["small"].state == "half_open"  # slow is not broken
    small.delay_s = 0.0
    trace, answer = _ask(fallback)  # the next request is the trial, and closes the circuit
    assert (answer.model, trace.hedged) == ("cascade-small", False)
    assert fallback.breakers["small"].state == "closed"
