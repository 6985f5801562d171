"""Which small-tier answers the quality gate escalates, and the tier circuit breaker."""

from __future__ import annotations

import pytest

from serve_app.circuit_breaker import CircuitBreaker
from serve_app.config import QualityConfig
from serve_app.openai_protocol import Answer, client_asked_for_logprobs
from serve_app.quality_check import QualityGate


def _answer(text: str, finish_reason: str = "stop", logprobs: tuple[float, ...] = ()) -> Answer:
    return Answer(text, finish_reason, 10, len(text.split()), "cascade-small", logprobs)


GOOD = "The capital of France is Paris, a city on the Seine known for its museums."


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
