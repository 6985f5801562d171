"""The OpenAI API of the real local cascade, through the official SDK and raw HTTP."""

from __future__ import annotations

import json
import uuid

import httpx
import pytest

from tests.helpers import EMPTY_ANSWER, chat_body

CASCADE_HEADERS = ("x-cascade-tier", "x-cascade-cache", "x-cascade-escalated", "x-cascade-cost-usd")


_chat = chat_body


def _unique(question: str) -> str:
    """A question no earlier test asked, so the cache cannot answer it."""
    return f"{question} (ticket {uuid.uuid4().hex[:8]})"


def _sse_payloads(response: httpx.Response) -> list[dict | str]:
    payloads: list[dict | str] = []
    for line in response.iter_lines():
        if not line:
            continue
        assert line.startswith("data: "), line
        data = line.removeprefix("data: ")
        payloads.append(data if data == "[DONE]" else json.loads(data))
    return payloads


def _assert_cascade_headers(headers: httpx.Headers) -> None:
    for name in CASCADE_HEADERS:
        assert name in headers, f"missing header {name}"
    assert headers["x-cascade-tier"] in {"small", "large"}
    assert float(headers["x-cascade-cost-usd"]) >= 0


def test_chat_with_openai_sdk_returns_model_text(openai_client) -> None:
    raw = openai_client.chat.completions.with_raw_response.create(
        model="cascade",
        messages=[{"role": "user", "content": "What is the capital of France?"}],
        max_tokens=48,
        temperature=0,
    )
    completion = raw.parse()
    assert "paris" in completion.choices[0].message.content.lower()
    assert completion.usage.prompt_tokens > 0 and completion.usage.completion_tokens > 0
    _assert_cascade_headers(raw.headers)


def test_chat_stream_with_openai_sdk(openai_client) -> None:
    stream = openai_client.chat.completions.create(
        model="cascade",
        messages=[{"role": "user", "content": _unique("Name a colour of the sky.")}],
        max_tokens=32,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    text, usage = "", None
    for chunk in stream:
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
        if chunk.usage:
            usage = chunk.usage
    assert text.strip()
    assert usage is not None and usage.completion_tokens > 0


def test_completion_with_openai_sdk(openai_client) -> None:
    completion = openai_client.completions.create(
        model="cascade-small", prompt="The capital of France is", max_tokens=8, temperature=0
    )
    assert completion.choices[0].text.strip()
    assert completion.usage.completion_tokens > 0


def test_completion_stream_is_openai_sse(http: httpx.Client) -> None:
    body = {
        "model": "cascade-large",
        "prompt": _unique("Once upon a time"),
        "max_tokens": 12,
        "temperature": 0,
        "stream": True,
    }
    with http.stream("POST", "/v1/completions", json=body) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["x-cascade-tier"] == "large"
        payloads = _sse_payloads(response)
    assert payloads[-1] == "[DONE]"
    chunks = [p for p in payloads[:-1] if isinstance(p, dict)]
    assert all(chunk["object"] == "text_completion" for chunk in chunks)
    assert "".join(c["choices"][0]["text"] for c in chunks if c["choices"]).strip()
    # The client did not ask for usage, so the internal usage chunk must not leak.
    assert all(chunk["choices"] for chunk in chunks)


def test_chat_stream_is_openai_sse(http: httpx.Client) -> None:
    body = _chat(_unique("Say hello to Bob."), stream=True, max_tokens=24)
    with http.stream("POST", "/v1/chat/completions", json=body) as response:
        assert response.status_code == 200
        _assert_cascade_headers(response.headers)
        payloads = _sse_payloads(response)
    assert payloads[-1] == "[DONE]"
    chunks = [p for p in payloads[:-1] if isinstance(p, dict)]
    assert all(chunk["object"] == "chat.completion.chunk" for chunk in chunks)
    assert chunks[-1]["choices"][0]["finish_reason"] in {"stop", "length"}
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
    assert text.strip()


def test_repeated_request_is_a_cheaper_cache_hit(http: httpx.Client) -> None:
    body = _chat(_unique("What is the largest planet in the solar system?"))
    first = http.post("/v1/chat/completions", json=body)
    second = http.post("/v1/chat/completions", json=body)
    assert first.status_code == second.status_code == 200
    assert first.headers["x-cascade-cache"] == "miss"
    assert second.headers["x-cascade-cache"] == "hit"
    assert float(second.headers["x-cascade-cost-usd"]) < float(first.headers["x-cascade-cost-usd"])
    first_text = first.json()["choices"][0]["message"]["content"]
    assert second.json()["choices"][0]["message"]["content"] == first_text


def test_cache_hit_replays_as_sse_stream(http: httpx.Client) -> None:
    body = _chat(_unique("Which ocean is the largest?"))
    answer = http.post("/v1/chat/completions", json=body).json()["choices"][0]["message"]
    with http.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as response:
        assert response.headers["x-cascade-cache"] == "hit"
        payloads = _sse_payloads(response)
    chunks = [p for p in payloads if isinstance(p, dict)]
    assert (
        "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks) == answer["content"]
    )
    assert payloads[-1] == "[DONE]"


def test_tenants_do_not_share_cache_entries(cascade_url: str) -> None:
    body = _chat(_unique("What is the boiling point of water?"))
    with (
        httpx.Client(base_url=cascade_url, timeout=180) as alice,
        httpx.Client(base_url=cascade_url, timeout=180) as bob,
    ):
        alice.headers["authorization"] = "Bearer alice-key"
        bob.headers["authorization"] = "Bearer bob-key"
        assert alice.post("/v1/chat/completions", json=body).headers["x-cascade-cache"] == "miss"
        assert alice.post("/v1/chat/completions", json=body).headers["x-cascade-cache"] == "hit"
        assert bob.post("/v1/chat/completions", json=body).headers["x-cascade-cache"] == "miss"


@pytest.mark.parametrize("tier", ["small", "large"])
def test_pinned_tier_is_the_tier_that_answers(http: httpx.Client, tier: str) -> None:
    response = http.post(
        "/v1/chat/completions", json=_chat(_unique("Hi!"), model=f"cascade-{tier}")
    )
    assert response.status_code == 200
    assert response.headers["x-cascade-tier"] == tier
    assert response.headers["x-cascade-route"] == "pinned"
    assert response.json()["model"] == f"cascade-{tier}"


def test_empty_small_answer_escalates_to_large(http: httpx.Client) -> None:
    # The router sends a short question to the small tier, whose answer is forced empty.
    body = _chat(_unique("Tell me about cats."), **EMPTY_ANSWER)
    response = http.post("/v1/chat/completions", json=body)
    assert response.status_code == 200
    assert response.headers["x-cascade-route"] == "small"
    assert response.headers["x-cascade-escalated"] == "true"
    assert response.headers["x-cascade-escalation-reason"] == "empty"
    assert response.headers["x-cascade-tier"] == "large"


def test_models_lists_cascade_its_aliases_and_tiers(openai_client) -> None:
    ids = {model.id for model in openai_client.models.list()}
    assert ids == {"cascade", "cascade-cheaper", "cascade-safer", "cascade-small", "cascade-large"}


def test_health(http: httpx.Client) -> None:
    assert http.get("/health").json() == {"status": "ok"}


def _assert_openai_error(response: httpx.Response, status: int, param: str | None = None) -> None:
    assert response.status_code == status
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"]
    if param is not None:
        assert error["param"] == param


@pytest.mark.parametrize(
    ("content", "param"),
    [
        (b'{"model": "cascade", "messages": [', None),
        (b'["not", "an", "object"]', None),
        (json.dumps({"model": "cascade"}).encode(), "messages"),
        (json.dumps({"model": "cascade", "messages": []}).encode(), "messages"),
        (json.dumps(_chat("hi", max_tokens=-5)).encode(), "max_tokens"),
        (json.dumps(_chat("hi", temperature=7)).encode(), "temperature"),
    ],
    ids=[
        "malformed-json",
        "not-an-object",
        "missing-messages",
        "empty-messages",
        "negative-max-tokens",
        "temperature-out-of-range",
    ],
)
def test_bad_input_gets_openai_400(http: httpx.Client, content: bytes, param: str | None) -> None:
    response = http.post(
        "/v1/chat/completions", content=content, headers={"content-type": "application/json"}
    )
    _assert_openai_error(response, 400, param)


def test_unknown_model_gets_openai_404(http: httpx.Client) -> None:
    response = http.post("/v1/chat/completions", json=_chat("hi", model="gpt-17"))
    _assert_openai_error(response, 404, "model")
    assert response.json()["error"]["code"] == "model_not_found"


def test_bad_completion_prompt_gets_400(http: httpx.Client) -> None:
    response = http.post("/v1/completions", json={"model": "cascade", "max_tokens": 4})
    _assert_openai_error(response, 400, "prompt")


def test_service_keeps_answering_after_bad_input(http: httpx.Client) -> None:
    for _ in range(3):
        http.post(
            "/v1/chat/completions", content=b"{oops", headers={"content-type": "application/json"}
        )
    response = http.post("/v1/chat/completions", json=_chat(_unique("What is 2 + 2?")))
    assert response.status_code == 200
    assert response.json()["choices"][0]["message"]["content"]


def test_oversized_body_gets_413(http: httpx.Client) -> None:
    huge = _chat("x" * 1_100_000)
    response = http.post("/v1/chat/completions", json=huge)
    _assert_openai_error(response, 413)


def test_max_tokens_beyond_the_context_is_refused_before_the_tier(http: httpx.Client) -> None:
    response = http.post("/v1/chat/completions", json=_chat("hi", max_tokens=50_000))
    _assert_openai_error(response, 400, "max_tokens")
    assert "2048" in response.json()["error"]["message"]
