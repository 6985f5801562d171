"""Long prompts through the live stack: the gateway counts a prompt as the engine does, sends
one the small tier's context cannot hold to the large tier, and refuses one no tier holds
with OpenAI's 400 `context_length_exceeded` before any tier call.

Both local engines hold 2048 tokens, so routing by length is shown by the stack's third
gateway (conftest.SHORT_SMALL_PREFIX), which is told the small tier holds 1024: production's
shape, where the small tier's context is the shorter. The offline side (counting against
vLLM's own rendering, the decision, the fallback's escalation of an engine's context-length
refusal) is tests/test_context_fit.py.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.conftest import SHORT_SMALL_CONTEXT, SHORT_SMALL_PREFIX
from tests.helpers import chat_body, wait_for_gateway

ENGINE_CONTEXT = 2048  # max_model_len of both local tiers (configs/local.yaml)
READY_WAIT_S = 300
_WORDS = "the quick brown fox jumps over a lazy dog while analysts compute revenue".split()


def _prose(tokens: int) -> str:
    """Filler of exactly `tokens` tokens for SmolLM2 (each of these words is one token)."""
    return " ".join(_WORDS[i % len(_WORDS)] for i in range(tokens))


def _with_document(tokens: int, question: str, **overrides: Any) -> dict[str, Any]:
    """A chat whose system message is a long document and whose question is easy: the router
    reads only the question (a system prompt over 64 words is boilerplate to it)."""
    messages = [
        {"role": "system", "content": f"Document: {_prose(tokens)}"},
        {"role": "user", "content": question},
    ]
    return chat_body(question, messages=messages, cache=False, **overrides)


def _refusal(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert (error["type"], error["code"]) == ("invalid_request_error", "context_length_exceeded")
    return error


@pytest.fixture(scope="module")
def short_small_http(cascade_url: str) -> Iterator[httpx.Client]:
    """The gateway whose small tier holds SHORT_SMALL_CONTEXT tokens, once it answers."""
    with httpx.Client(base_url=cascade_url + SHORT_SMALL_PREFIX, timeout=180) as client:
        wait_for_gateway(client, "short-small", READY_WAIT_S)
        yield client


# ---- the open gateway: both tiers hold 2048 tokens ------------------------------------------


def test_the_gateway_counts_a_prompt_as_the_engine_does(http: httpx.Client) -> None:
    """At the exact edge of the context: what the engine accepts passes the gateway, one token
    more is refused by the gateway itself (its wording, not vLLM's)."""
    body = chat_body(_prose(1990), model="cascade-small", max_tokens=1, cache=False)
    probe = http.post("/v1/chat/completions", json=body)
    assert probe.status_code == 200, probe.text
    prompt_tokens = probe.json()["usage"]["prompt_tokens"]
    room = ENGINE_CONTEXT - prompt_tokens

    filled = http.post("/v1/chat/completions", json={**body, "max_tokens": room})
    assert filled.status_code == 200, filled.text
    assert filled.json()["usage"]["prompt_tokens"] == prompt_tokens

    over = _refusal(http.post("/v1/chat/completions", json={**body, "max_tokens": room + 1}))
    assert f"maximum context length is {ENGINE_CONTEXT} tokens" in over["message"]
    assert f"({prompt_tokens} in the messages, {room + 1} in the completion)" in over["message"]


@pytest.mark.parametrize("kind", ["chat", "completion"])
def test_a_prompt_no_tier_holds_is_refused_before_any_tier_call(
    http: httpx.Client, kind: str
) -> None:
    if kind == "chat":
        path, body, where = "/v1/chat/completions", chat_body(_prose(2100)), "messages"
    else:
        body = {"model": "cascade", "prompt": _prose(2100), "max_tokens": 16}
        path, where = "/v1/completions", "prompt"
    started = time.perf_counter()
    error = _refusal(http.post(path, json=body))
    # No engine prefilled 2100 tokens for this: the gateway's count refused it.
    assert time.perf_counter() - started < 5
    assert error["param"] == where
    assert f"maximum context length is {ENGINE_CONTEXT} tokens" in error["message"]
    assert f"in the {where}, " in error["message"]  # vLLM's says "your prompt contains"


# ---- the short-small gateway: the small tier holds 1024, the large one 2048 ---------------


@pytest.mark.parametrize("stream", [False, True], ids=["complete", "streamed"])
def test_a_prompt_too_long_for_the_small_tier_is_answered_by_the_large_one(
    short_small_http: httpx.Client, stream: bool
) -> None:
    body = _with_document(1400, "What is the capital of France?", max_tokens=32, stream=stream)
    # The router alone would pick the small tier: the question is easy.
    assert short_small_http.post("/v1/route", json=body).json()["tier"] == "small"
    with short_small_http.stream("POST", "/v1/chat/completions", json=body) as response:
        response.read()
    assert response.status_code == 200, response.text
    headers = response.headers
    assert (headers["x-cascade-tier"], headers["x-cascade-route"]) == ("large", "large")
    assert headers["x-cascade-route-reason"] == "context"
    assert headers["x-cascade-escalated"] == "false"  # sent there, not escalated after a try
    if not stream:
        assert response.json()["usage"]["prompt_tokens"] > SHORT_SMALL_CONTEXT


def test_a_max_tokens_the_small_context_cannot_hold_goes_to_the_large_tier(
    short_small_http: httpx.Client,
) -> None:
    body = chat_body("What is the capital of France?", max_tokens=1100, cache=False)
    response = short_small_http.post("/v1/chat/completions", json=body)
    assert response.status_code == 200, response.text
    assert response.headers["x-cascade-tier"] == "large"
    assert response.headers["x-cascade-route-reason"] == "context"


def test_a_short_prompt_is_still_the_routers_to_place(short_small_http: httpx.Client) -> None:
    body = chat_body("What is the capital of France?", cache=False)
    response = short_small_http.post("/v1/chat/completions", json=body)
    assert response.status_code == 200, response.text
    assert response.headers["x-cascade-route"] == "small"
    assert "x-cascade-route-reason" not in response.headers


def test_a_pinned_small_tier_is_held_to_its_own_context(short_small_http: httpx.Client) -> None:
    body = _with_document(1400, "What is the capital of France?", model="cascade-small")
    error = _refusal(short_small_http.post("/v1/chat/completions", json=body))
    assert f"maximum context length is {SHORT_SMALL_CONTEXT} tokens" in error["message"]
    # The large tier, pinned, holds the same request.
    pinned_large = {**body, "model": "cascade-large", "max_tokens": 16}
    response = short_small_http.post("/v1/chat/completions", json=pinned_large)
    assert response.status_code == 200, response.text
    assert response.headers["x-cascade-tier"] == "large"
