"""The ingress's admission gate: bounded in-flight requests, fast refusals, no leaked slots."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator

import pytest

from serve_app.config import IngressConfig
from serve_app.gateway.admission import AdmissionGate
from serve_app.protocol.errors import OverloadedError


def test_requests_past_the_limit_are_refused_with_retry_after() -> None:
    gate = AdmissionGate(2, retry_after_s=3.0)
    first = gate.enter()
    gate.enter()
    with pytest.raises(OverloadedError) as refused:
        gate.enter()
    assert refused.value.status_code == 503
    assert refused.value.headers["retry-after"] == "3"
    gate.leave(first, completed=True)
    gate.enter()  # a finished request frees its slot
    assert gate.in_flight == 2


def test_no_limit_admits_everything() -> None:
    gate = AdmissionGate(None, retry_after_s=1.0)
    for _ in range(1000):
        gate.enter()
    assert gate.in_flight == 1000


def test_retry_after_follows_how_long_admitted_requests_take() -> None:
    gate = AdmissionGate(1, retry_after_s=1.0, max_retry_after_s=30.0)
    assert gate.retry_after_s == 1.0  # nothing measured yet: the configured floor
    for _ in range(20):
        gate.leave(gate.enter() - 12.0, completed=True)  # answers take ~12 s
    advised = [gate.retry_after_s for _ in range(200)]
    assert 0.75 * 11.0 < min(advised) and max(advised) <= 1.5 * 12.5
    assert max(advised) - min(advised) > 3.0  # spread: refused clients do not return together
    held = gate.enter()
    with pytest.raises(OverloadedError) as refused:
        gate.enter()
    assert int(refused.value.headers["retry-after"]) >= 8
    gate.leave(held, completed=False)
    for _ in range(40):
        gate.leave(gate.enter() - 0.01, completed=False)  # failures say nothing of capacity
    assert gate.typical_duration_s > 11.0


def test_before_any_answer_retry_after_grows_with_how_long_the_gate_has_been_busy() -> None:
    now = [100.0]
    gate = AdmissionGate(1, retry_after_s=1.0, max_retry_after_s=30.0, clock=lambda: now[0])
    held = gate.enter()
    now[0] += 8.0  # the admitted request has run 8 s and has not finished
    advised = [gate.retry_after_s for _ in range(200)]
    assert 0.75 * 8.0 <= min(advised) and max(advised) <= 1.5 * 8.0
    gate.leave(held, completed=False)  # idle again, still nothing measured: the floor
    assert gate.retry_after_s == 1.0


def test_retry_after_is_capped() -> None:
    gate = AdmissionGate(1, retry_after_s=1.0, max_retry_after_s=30.0)
    gate.leave(gate.enter() - 600.0, completed=True)
    assert gate.retry_after_s == 30.0


async def _events() -> AsyncIterator[str]:
    for event in ("a", "b"):
        yield event


def test_a_stream_holds_its_slot_until_it_ends() -> None:
    seen: list[int] = []
    gate = AdmissionGate(1, retry_after_s=1.0, on_change=seen.append)
    relay = gate.release_after(_events(), gate.enter())

    async def consume() -> list[str]:
        return [event async for event in relay]

    assert gate.in_flight == 1
    assert asyncio.run(consume()) == ["a", "b"]
    assert gate.in_flight == 0
    assert seen == [1, 0]
    assert gate.typical_duration_s is not None  # a finished stream counts as completed


def test_a_stream_dropped_before_its_first_byte_frees_its_slot() -> None:
    gate = AdmissionGate(1, retry_after_s=1.0)
    relay = gate.release_after(_events(), gate.enter())
    del relay
    gc.collect()
    assert gate.in_flight == 0
    assert gate.typical_duration_s is None
    gate.enter()


def test_a_stream_closed_midway_frees_its_slot_once() -> None:
    gate = AdmissionGate(1, retry_after_s=1.0)
    relay = gate.release_after(_events(), gate.enter())

    async def take_one_then_close(stream: AsyncIterator[str]) -> None:
        await stream.__anext__()
        await stream.aclose()  # type: ignore[attr-defined]

    asyncio.run(take_one_then_close(relay))
    del relay
    gc.collect()
    assert gate.in_flight == 0


def test_config_refuses_a_gate_the_proxy_would_never_reach() -> None:
    with pytest.raises(ValueError, match="max_in_flight"):
        IngressConfig(max_in_flight=256, deployment_config={"max_ongoing_requests": 256})
    IngressConfig(max_in_flight=96, deployment_config={"max_ongoing_requests": 256})
