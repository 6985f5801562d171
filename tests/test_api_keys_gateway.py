"""`api_keys` mode through a real ingress: the test stack's second gateway (KEYS_PREFIX), in
front of the same tiers, router and cache as the open one (`ingress.share_deployments_of`)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import API_KEYS, KEYS_PREFIX
from tests.helpers import chat_body, wait_for_gateway

READY_WAIT_S = 300


def _bearer(tenant: str) -> dict[str, str]:
    return {"authorization": f"Bearer {API_KEYS[tenant][0]}"}


@pytest.fixture(scope="module")
def keys_http(cascade_url: str) -> Iterator[httpx.Client]:
    """The API-key gateway, once it answers (it starts beside the open one)."""
    with httpx.Client(base_url=cascade_url + KEYS_PREFIX, timeout=180) as client:
        wait_for_gateway(client, "API-key", READY_WAIT_S)
        yield client


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/chat/completions", chat_body("hi")),
        ("/v1/route", chat_body("hi")),
    ],
    ids=["chat", "route"],
)
def test_unknown_key_gets_a_401(keys_http: httpx.Client, path: str, body: dict) -> None:
    for headers in ({}, {"authorization": "Bearer sk-not-a-key"}):
        response = keys_http.post(path, json=body, headers=headers)
        assert response.status_code == 401, response.text
        assert response.json()["error"]["message"]


def test_a_tenant_key_is_not_an_admin_token(keys_http: httpx.Client) -> None:
    response = keys_http.get("/admin/cost/summary", headers=_bearer("alpha"))
    assert response.status_code == 403
    assert response.json()["error"]["type"] == "permission_error"


def test_route_calls_spend_the_keys_request_budget(keys_http: httpx.Client) -> None:
    # "limited" may make 2 requests a minute; route calls are requests too.
    statuses = [
        keys_http.post("/v1/route", json=chat_body("hi"), headers=_bearer("limited")).status_code
        for _ in range(3)
    ]
    assert statuses[:2] == [200, 200]
    refused = keys_http.post(
        "/v1/chat/completions", json=chat_body("hi"), headers=_bearer("limited")
    )
    assert refused.status_code == 429
    assert refused.json()["error"]["type"] == "rate_limit_error"
    assert float(refused.headers["retry-after"]) > 0
    assert statuses[2] == 429


def test_a_cached_answer_stays_with_its_tenant(keys_http: httpx.Client) -> None:
    question = chat_body(f"What is the capital city of Chile? ref {uuid.uuid4().hex[:6]}")
    first = keys_http.post("/v1/chat/completions", json=question, headers=_bearer("alpha"))
    assert first.status_code == 200, first.text
    again = keys_http.post("/v1/chat/completions", json=question, headers=_bearer("alpha"))
    other = keys_http.post("/v1/chat/completions", json=question, headers=_bearer("beta"))

    assert first.headers["x-cascade-cache"] == "miss"
    assert again.headers["x-cascade-cache"] == "hit"
    assert other.headers["x-cascade-cache"] == "miss"
