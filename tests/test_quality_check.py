"""Which small-tier answers the quality gate escalates, and the tier circuit breaker."""

from __future__ import annotations

import asyncio
import time

import pytest

from serve_app.accounting.cost_model import RequestCost, TierPrice
from serve_app.accounting.request_trace import RequestTrace
from serve_app.config import QualityConfig, TierName
from serve_app.protocol.errors import CascadeError, OverloadedError, UpstreamError
from serve_app.protocol.openai_api import client_asked_for_logprobs
from serve_app.protocol.responses import Answer
from serve_app.quality.checks import QualityGate
from serve_app.quality.circuit_breaker import CircuitBreaker
from serve_app.quality.fallback import TierFallback
from tests.helpers import GOOD, ScriptedTier


def _answer(text: str, finish_reason: str = "stop", logprobs: tuple[float, ...] = ()) -> Answer:
    return Answer(text, finish_reason, 10, len(text.split()), "cascade-small", logprobs)


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        (_answer(GOOD), None),
        (_answer("   "), "empty"),
        (_answer("The capital of France is", finish_reason="length"), "truncated"),
        (_answer("I think I think " * 12), "repetition"),
        (_answer("I'm sorry, but I cannot answer that question."), "refusal"),
        (_answer("I don't know the answer to that."), "refusal"),
    ],
    ids=["good", "empty", "truncated", "repetition", "refusal", "dont-know"],
)
def test_structural_checks(answer: Answer, reason: str | None) -> None:
    assert QualityGate(QualityConfig()).escalation_reason(answer) == reason


def test_confidence_check_uses_token_logprobs() -> None:
    gate = QualityGate(QualityConfig(min_mean_logprob=-1.5, min_token_logprob=-8.0))
    assert gate.needs_logprobs
    assert gate.escalation_reason(_answer(GOOD, logprobs=(-0.1, -0.3, -0.2))) is None
    assert gate.escalation_reason(_answer(GOOD, logprobs=(-2.0, -2.5, -1.9))) == "low_confidence"
    assert gate.escalation_reason(_answer(GOOD, logprobs=(-0.1, -9.0, -0.1))) == "low_confidence"


def test_no_logprobs_requested_without_a_confidence_threshold() -> None:
    assert not QualityGate(QualityConfig()).needs_logprobs


def test_disabled_gate_escalates_nothing() -> None:
    gate = QualityGate(QualityConfig(enabled=False))
    assert gate.escalation_reason(_answer("", finish_reason="length")) is None


@pytest.mark.parametrize(
    ("logprobs", "asked"), [(None, False), (False, False), (True, True), (0, True), (3, True)]
)
def test_client_logprob_request_detection(logprobs: object, asked: bool) -> None:
    body = {} if logprobs is None else {"logprobs": logprobs}
    assert client_asked_for_logprobs(body) is asked


class FakeClock:
    def __init__(self) -> None:
        self.now_s = 100.0

    def __call__(self) -> float:
        return self.now_s


def test_circuit_opens_after_consecutive_failures_and_closes_after_a_good_trial() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(failure_threshold=3, cooldown_s=30, clock=clock)
    for _ in range(2):
        breaker.record_failure()
    breaker.record_success()  # a success resets the count
    for _ in range(3):
        assert breaker.allow()
        breaker.record_failure()

    assert breaker.state == "open" and not breaker.allow()
    clock.now_s += 31
    assert breaker.state == "half_open"
    assert breaker.allow()  # one trial request
    assert not breaker.allow()  # and only one
    breaker.record_success()
    assert breaker.state == "closed" and breaker.allow()


def test_failed_trial_reopens_the_circuit() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(failure_threshold=1, cooldown_s=10, clock=clock)
    breaker.record_failure()
    clock.now_s += 11
    assert breaker.allow()
    breaker.record_failure()
    assert breaker.state == "open"
    clock.now_s += 5
    assert not breaker.allow()


def test_breaker_skips_a_failing_small_tier_until_its_cooldown_ends() -> None:
    small, large = ScriptedTier("cascade-small"), ScriptedTier("cascade-large")
    price = TierPrice(1e-6, 2e-6)
    config = QualityConfig(circuit_breaker={"failure_threshold": 2, "cooldown_s": 0.3})
    fallback = TierFallback(
        {"small": small, "large": large}, {"small": price, "large": price}, config
    )
    body = {"model": "cascade", "messages": [{"role": "user", "content": "Capital of France?"}]}

    def ask() -> RequestTrace:
        trace = RequestTrace(pinned=False, cost=RequestCost(price), tier="small")
        _, answer = asyncio.run(fallback.answer(body, "chat", trace))
        assert answer.text == GOOD
        return trace

    small.failing = True
    for _ in range(2):
        trace = ask()
        assert (trace.tier, trace.escalation_reason) == ("large", "error")
        assert len(trace.cost.tiers) == 1  # the failed small call produced no tokens to pay
    assert fallback.breakers["small"].state == "open"
    trace = ask()
    assert trace.escalation_reason == "small_circuit_open"
    assert small.calls == 2  # the open circuit sent nothing to the small tier

    small.failing = False
    time.sleep(0.35)
    trace = ask()  # the half-open trial reaches the recovered tier and closes the circuit
    assert (trace.tier, trace.escalated) == ("small", False)
    assert fallback.breakers["small"].state == "closed"
    assert small.calls == 3 and large.calls == 3


def test_quality_off_still_fails_over_on_errors() -> None:
    small, large = ScriptedTier("cascade-small"), ScriptedTier("cascade-large")
    price = TierPrice(1e-6, 2e-6)
    fallback = TierFallback(
        {"small": small, "large": large}, {"small": price, "large": price}, QualityConfig()
    )
    body = {"model": "cascade", "messages": [{"role": "user", "content": "Capital of France?"}]}

    def ask() -> RequestTrace:
        trace = RequestTrace(pinned=False, cost=RequestCost(price), tier="small")
        asyncio.run(fallback.answer(body, "chat", trace, check_quality=False))
        return trace

    assert ask().tier == "small"
    small.failing = True
    trace = ask()
    assert (trace.tier, trace.escalation_reason) == ("large", "error")


# ---- a half-open trial that ends without an outcome must not wedge the circuit -------------

BODY = {"model": "cascade", "messages": [{"role": "user", "content": "Capital of France?"}]}
PRICE = TierPrice(1e-6, 2e-6)


class RefusingTier(ScriptedTier):
    """A scripted tier that answers with `error` while it is set (a refusal, not a dead tier)."""

    def __init__(self, model: str) -> None:
        super().__init__(model)
        self.error: CascadeError | None = None

    async def complete(self, body: dict, kind: str) -> dict:
        if self.error is not None:
            self.calls += 1
            raise self.error
        return await super().complete(body, kind)


def _half_open(tier: TierName) -> tuple[TierFallback, RefusingTier, FakeClock]:
    """A fallback whose `tier` circuit has just turned half-open."""
    tiers = {"small": RefusingTier("cascade-small"), "large": RefusingTier("cascade-large")}
    prices = {"small": PRICE, "large": PRICE}
    fallback = TierFallback(tiers, prices, QualityConfig())  # type: ignore[arg-type]
    clock = FakeClock()
    fallback.breakers[tier] = CircuitBreaker(failure_threshold=1, cooldown_s=10, clock=clock)
    fallback.breakers[tier].record_failure()
    clock.now_s += 11
    assert fallback.breakers[tier].state == "half_open"
    return fallback, tiers[tier], clock


def _ask_routed(fallback: TierFallback, tier: TierName, timeout_s: float = 5.0) -> RequestTrace:
    trace = RequestTrace(pinned=False, cost=RequestCost(PRICE), tier=tier)
    asyncio.run(asyncio.wait_for(fallback.answer(BODY, "chat", trace), timeout_s))
    return trace


def test_a_released_trial_frees_only_its_own_half_open_slot() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(failure_threshold=1, cooldown_s=10, clock=clock)
    assert breaker.admit() is not None  # closed: a call goes through
    breaker.record_failure()
    clock.now_s += 11
    trial = breaker.admit()
    assert trial is not None and breaker.admit() is None
    breaker.release(trial)  # the trial was cancelled: neither success nor failure
    assert breaker.state == "half_open"
    second = breaker.admit()
    assert second is not None  # the next request is the trial now
    breaker.release(trial)  # a stale release does not free the second trial's slot
    assert breaker.admit() is None
    breaker.record_success()
    breaker.release(second)  # a release after the outcome changes nothing
    assert breaker.state == "closed"


@pytest.mark.parametrize("tier", ["small", "large"])
def test_a_cancelled_half_open_trial_does_not_wedge_the_circuit(tier: TierName) -> None:
    fallback, scripted, _ = _half_open(tier)
    scripted.delay_s = 5.0  # the trial hangs until the request's deadline cancels it
    with pytest.raises(TimeoutError):
        _ask_routed(fallback, tier, timeout_s=0.1)
    assert scripted.cancelled == 1
    assert fallback.breakers[tier].state == "half_open"  # no evidence either way

    scripted.delay_s = 0.0
    trace = _ask_routed(fallback, tier)  # the next request is the trial, and closes it
    assert (trace.tier, trace.escalated) == (tier, False)
    assert fallback.breakers[tier].state == "closed"


@pytest.mark.parametrize(
    "error",
    [
        OverloadedError("queue full"),
        UpstreamError("prompt too long", status_code=400, error_type="invalid_request_error"),
    ],
    ids=["overloaded", "refused-400"],
)
def test_a_half_open_trial_refused_without_a_verdict_releases_the_slot(
    error: CascadeError,
) -> None:
    # Neither a full queue nor a refused request says the tier is broken (they never open the
    # circuit), nor that it is healthy: the circuit stays half-open for the next request.
    fallback, small, _ = _half_open("small")
    small.error = error
    try:
        _ask_routed(fallback, "small")
    except CascadeError:
        pass  # a 400 is the client's; a full small queue escalates to the large tier
    assert small.calls == 1
    assert fallback.breakers["small"].state == "half_open"

    small.error = None
    trace = _ask_routed(fallback, "small")
    assert (trace.tier, trace.escalated) == ("small", False)
    assert fallback.breakers["small"].state == "closed"
