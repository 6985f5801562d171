"""A relayed stream ends however the client or the deadline says, and is paid for either way.

Streams that pass their deadline are cut with an OpenAI-shaped timeout event and their
generation is aborted; a client that leaves mid-stream is still charged for the tokens the
engine generated (no free tokens by hanging up), and neither is cached.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import httpx

from tests.conftest import ADMIN_TOKEN

ADMIN = {"authorization": f"Bearer {ADMIN_TOKEN}"}
# Summaries move when the request's bookkeeping runs; on a loaded box that can take a while.
SETTLE_WAIT_S = 90


def _long_stream(**overrides: Any) -> dict[str, Any]:
    """A streamed generation that would run for minutes unless it is cut."""
    return {
        "model": "cascade-small",
        "messages": [{"role": "user", "content": f"Tell a long story. {uuid.uuid4().hex[:8]}"}],
        "max_tokens": 1500,
        "ignore_eos": True,  # vLLM extension: no early end of text
        "stream": True,
        **overrides,
    }


def _summary(http: httpx.Client) -> dict[str, Any]:
    response = http.get("/admin/cost/summary", headers=ADMIN)
    assert response.status_code == 200, response.text
    return response.json()


def _settled(http: httpx.Client, before: dict[str, Any], requests: int) -> dict[str, Any]:
    """The summary once `requests` more requests have been counted (or the last one seen)."""
    deadline = time.monotonic() + SETTLE_WAIT_S
    summary = _summary(http)
    while summary["requests"] < before["requests"] + requests and time.monotonic() < deadline:
        time.sleep(0.5)
        summary = _summary(http)
    return summary


def _data_events(lines: list[str]) -> list[Any]:
    payloads = [line.removeprefix("data: ") for line in lines if line.startswith("data: ")]
    return [json.loads(p) for p in payloads if p != "[DONE]"]


def test_relayed_stream_past_its_deadline_ends_with_a_timeout_event(http: httpx.Client) -> None:
    before = _summary(http)
    headers = {"x-cascade-timeout-s": "3", "x-cascade-quality": "relay"}
    with http.stream(
        "POST", "/v1/chat/completions", json=_long_stream(), headers=headers
    ) as response:
        assert response.status_code == 200
        lines = [line for line in response.iter_lines() if line]

    events = _data_events(lines)
    tokens = [e for e in events if e.get("choices")]
    assert "error" in events[-1], lines[-3:]
    assert events[-1]["error"]["type"] == "timeout"
    assert 0 < len(tokens) < 1500, "cut before the answer ended"
    after = _settled(http, before, 1)
    assert after["requests"] >= before["requests"] + 1
    generated = after["served_completion_tokens"] - before["served_completion_tokens"]
    # The first chunk carries the role only; every later one a token.
    assert generated >= len(tokens) - 1, "charged for the tokens that were generated"


def test_client_leaving_mid_stream_is_charged_for_what_was_generated(
    http: httpx.Client, cascade_url: str
) -> None:
    before = _summary(http)
    received = 0
    with httpx.Client(base_url=cascade_url, timeout=120) as client:
        with client.stream("POST", "/v1/chat/completions", json=_long_stream()) as response:
            assert response.status_code == 200
            for line in response.iter_lines():
                received += line.startswith("data: ")
                if received == 8:
                    break  # the client hangs up

    after = _settled(http, before, 1)
    assert after["requests"] == before["requests"] + 1, "the dropped stream was counted"
    generated = after["served_completion_tokens"] - before["served_completion_tokens"]
    assert generated >= received - 1  # the first event may carry the role only
    assert after["spent_usd"] > before["spent_usd"]
