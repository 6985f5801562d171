"""Cache behaviour a client and an operator see through the HTTP API of the real stack."""

from __future__ import annotations

import uuid

import httpx

from tests.conftest import ADMIN_TOKEN
from tests.helpers import chat_body

_chat = chat_body


def _question(topic: str) -> str:
    return f"In one sentence, what is {topic}? (case {uuid.uuid4().hex[:8]})"


def _cache_header(http: httpx.Client, body: dict, **headers: str) -> str:
    response = http.post("/v1/chat/completions", json=body, headers=headers)
    assert response.status_code == 200, response.text
    return response.headers["x-cascade-cache"]


def test_paraphrase_is_a_semantic_hit(http: httpx.Client) -> None:
    tag = uuid.uuid4().hex[:6]
    assert _cache_header(http, _chat(f"What is the capital city of Peru? ref {tag}")) == "miss"
    assert _cache_header(http, _chat(f"what is the capital city of Peru ref {tag}")) == "hit"


def test_negated_question_is_not_served_from_cache(http: httpx.Client) -> None:
    tag = uuid.uuid4().hex[:6]
    assert _cache_header(http, _chat(f"Is it safe to eat raw eggs? ref {tag}")) == "miss"
    assert _cache_header(http, _chat(f"Is it unsafe to eat raw eggs? ref {tag}")) == "miss"


def test_different_system_prompt_or_temperature_does_not_hit(http: httpx.Client) -> None:
    question = _question("photosynthesis")
    assert _cache_header(http, _chat(question)) == "miss"
    with_system = _chat(question)
    with_system["messages"] = [
        {"role": "system", "content": "Answer like a pirate."},
        *with_system["messages"],
    ]
    assert _cache_header(http, with_system) == "miss"
    assert _cache_header(http, _chat(question, temperature=0.7)) == "bypass"


def test_client_can_opt_out(http: httpx.Client) -> None:
    question = _question("a rainbow")
    assert _cache_header(http, _chat(question)) == "miss"
    assert _cache_header(http, _chat(question, cache=False)) == "bypass"
    assert _cache_header(http, _chat(question), **{"cache-control": "no-store"}) == "bypass"
    assert _cache_header(http, _chat(question)) == "hit"


def test_an_answer_cut_at_the_clients_max_tokens_is_kept_and_cached(http: httpx.Client) -> None:
    # Six tokens cut any answer to this; the large tier would stop at the same sixth token, so
    # the cut answer is the request's answer: not escalated, and cached like any other. The
    # small model is sure of these tokens (mean logprob about -0.4, above the confidence
    # gate's -0.58), so only the cut could escalate it. A key of its own keeps the question
    # out of other runs' cache partitions without changing the prompt.
    body = _chat("What is 2 + 2? (case x1)", max_tokens=6)
    tenant = {"authorization": f"Bearer cut-answer-{uuid.uuid4().hex[:8]}"}
    first = http.post("/v1/chat/completions", json=body, headers=tenant)
    assert first.status_code == 200, first.text
    assert first.headers["x-cascade-route"] == "small"
    assert first.headers["x-cascade-escalated"] == "false"
    assert first.headers["x-cascade-cache"] == "miss"
    choice = first.json()["choices"][0]
    assert (choice["finish_reason"], first.json()["usage"]["completion_tokens"]) == ("length", 6)
    cost = float(first.headers["x-cascade-cost-usd"])
    assert cost < float(first.headers["x-cascade-counterfactual-usd"])

    again = http.post("/v1/chat/completions", json=body, headers=tenant)
    assert again.status_code == 200, again.text
    assert again.headers["x-cascade-cache"] == "hit"
    replayed = again.json()["choices"][0]
    assert replayed["message"]["content"] == choice["message"]["content"]
    assert replayed["finish_reason"] == "length"


def test_bad_client_ttl_is_a_400(http: httpx.Client) -> None:
    response = http.post(
        "/v1/chat/completions", json=_chat("hi"), headers={"x-cascade-cache-ttl-s": "-3"}
    )
    assert response.status_code == 400
    assert "x-cascade-cache-ttl-s" in response.json()["error"]["message"]


def test_admin_invalidates_one_model(http: httpx.Client) -> None:
    question = _question("gravity")
    pinned = _chat(question, model="cascade-small")
    assert _cache_header(http, pinned) == "miss"
    assert _cache_header(http, pinned) == "hit"

    response = http.post(
        "/admin/cache/invalidate",
        json={"model": "cascade-small"},
        headers={"authorization": f"Bearer {ADMIN_TOKEN}"},
    )

    assert response.status_code == 200
    assert response.json()["deleted"] >= 1
    assert _cache_header(http, pinned) == "miss"


def test_admin_api_refuses_a_wrong_token(http: httpx.Client) -> None:
    response = http.post(
        "/admin/cache/invalidate", json={}, headers={"authorization": "Bearer guess"}
    )
    assert response.status_code == 403
    assert response.json()["error"]["type"] == "permission_error"


def test_route_endpoint_explains_without_generating(http: httpx.Client) -> None:
    easy = http.post("/v1/route", json=_chat("hi there!"))
    hard = http.post(
        "/v1/route",
        json={
            "model": "cascade",
            # The shipped router's difficulty signal that carries across sources is the size
            # of the task (docs/router_evaluation.md): a multi-part request goes large.
            "prompt": "Prove step by step that the derivative of x^3 + 2x is 3x^2 + 2, using "
            "the limit definition and stating each rule you apply. Then implement an algorithm "
            "that differentiates any polynomial given as a list of coefficients, extend it to "
            "products and quotients of polynomials, analyse its time and memory complexity, "
            "and compare it with symbolic differentiation in a computer algebra system.",
        },
    )
    assert easy.status_code == hard.status_code == 200
    assert easy.json()["tier"] == "small" and hard.json()["tier"] == "large"
    assert 0 <= easy.json()["score"] < hard.json()["score"] <= 1
