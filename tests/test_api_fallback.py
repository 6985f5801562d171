"""Quality fallback through the real stack: escalation, held streams, internal logprobs."""

from __future__ import annotations

import json
import uuid

import httpx

from tests.helpers import chat_body


def _chat(content: str, **overrides) -> dict:
    """Uncached, so every call reaches the tiers and their fallback logic."""
    return chat_body(content, cache=False, **overrides)


def test_good_small_answer_is_kept_and_internal_logprobs_do_not_leak(http: httpx.Client) -> None:
    response = http.post("/v1/chat/completions", json=_chat("What is the capital of France?"))
    assert response.status_code == 200
    assert response.headers["x-cascade-route"] == "small"
    assert response.headers["x-cascade-escalated"] == "false"
    assert response.headers["x-cascade-tier"] == "small"
    choice = response.json()["choices"][0]
    assert "paris" in choice["message"]["content"].lower()
    assert choice["logprobs"] is None


def test_logprobs_the_client_asked_for_are_returned(http: httpx.Client) -> None:
    body = _chat("What is the capital of France?", logprobs=True, top_logprobs=2)
    response = http.post("/v1/chat/completions", json=body)
    assert response.status_code == 200
    content = response.json()["choices"][0]["logprobs"]["content"]
    assert content and all(entry["logprob"] <= 0 for entry in content)
    assert all(len(entry["top_logprobs"]) == 2 for entry in content)


def test_escalated_stream_never_shows_small_tier_text(http: httpx.Client) -> None:
    body = _chat(f"Tell me about dogs. ({uuid.uuid4().hex[:6]})", max_tokens=3, stream=True)
    with http.stream("POST", "/v1/chat/completions", json=body) as response:
        assert response.status_code == 200
        assert response.headers["x-cascade-route"] == "small"
        assert response.headers["x-cascade-escalated"] == "true"
        assert response.headers["x-cascade-tier"] == "large"
        lines = [line for line in response.iter_lines() if line]
    chunks = [json.loads(line.removeprefix("data: ")) for line in lines[:-1]]
    assert lines[-1] == "data: [DONE]"
    assert {chunk["model"] for chunk in chunks} == {"cascade-large"}


def test_routed_requests_survive_a_killed_router_replica(http: httpx.Client) -> None:
    import ray

    ray.init(address="auto", namespace="serve", log_to_driver=False)
    try:
        (router,) = [
            actor
            for actor in ray.util.list_named_actors(all_namespaces=True)
            if "#router#" in actor["name"]
        ]
        ray.kill(ray.get_actor(router["name"], namespace=router["namespace"]), no_restart=True)
        for question in ("What is the capital of Spain?", "Name a primary colour."):
            response = http.post("/v1/chat/completions", json=_chat(question))
            assert response.status_code == 200, response.text
            assert response.headers["x-cascade-route"] in {"small", "large"}
            assert response.json()["choices"][0]["message"]["content"]
    finally:
        ray.shutdown()
