"""`api_keys` mode through a real ingress: the test stack's second gateway (KEYS_PREFIX), in
front of the same tiers as the open one (`ingress.share_deployments_of`), with its own cache."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from tests.conftest import ADMIN_TOKEN, API_KEYS, KEYS_PREFIX
from tests.helpers import chat_body, wait_for_gateway

READY_WAIT_S = 300
ADMIN = {"authorization": f"Bearer {ADMIN_TOKEN}"}


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


# ---- dollar budgets (API_KEYS in tests/conftest.py: one answer spends each) -----------------


def _spend_until_refused(keys_http: httpx.Client, tenant: str) -> httpx.Response:
    """Ask as `tenant` until its budget refuses: one answer spends it, so the second request
    at the latest (the first, if an earlier session on this stack spent it already)."""
    for attempt in range(2):
        body = chat_body(
            f"Name a colour. ref {uuid.uuid4().hex[:6]}",
            model="cascade-small",
            max_tokens=16,
            cache=False,
        )
        response = keys_http.post("/v1/chat/completions", json=body, headers=_bearer(tenant))
        if response.status_code != 200:
            return response
        assert attempt == 0, "a second answer was served past the budget"
        smallest_budget_usd = min(API_KEYS[tenant][1].values())
        assert float(response.headers["x-cascade-cost-usd"]) > smallest_budget_usd
    raise AssertionError("unreachable")


def _reset_s(refused: httpx.Response) -> float:
    """Seconds from now until the reset the refusal's message names."""
    match = re.search(r"resets at (\S+Z)\.", refused.json()["error"]["message"])
    assert match, refused.text
    resets_at = datetime.strptime(match.group(1), "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    return (resets_at - datetime.now(UTC)).total_seconds()


def _assert_budget_refusal(refused: httpx.Response) -> dict:
    assert refused.status_code == 429, refused.text
    error = refused.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert (error["type"], error["code"]) == ("insufficient_quota", "budget_exceeded")
    # Retry-After says what the message says: come back when the period resets.
    assert abs(int(refused.headers["retry-after"]) - _reset_s(refused)) <= 5
    return error


def test_a_key_past_its_daily_budget_gets_a_429_until_midnight_utc(
    keys_http: httpx.Client,
) -> None:
    error = _assert_budget_refusal(_spend_until_refused(keys_http, "daily-budget"))
    assert error["message"].startswith("Daily budget of $0.000001 for this API key is spent")
    tomorrow = (datetime.now(UTC) + timedelta(days=1)).date().isoformat()
    assert f"resets at {tomorrow}T00:00:00Z" in error["message"]


def test_a_key_past_its_monthly_budget_gets_a_429_until_the_first_of_next_month(
    keys_http: httpx.Client,
) -> None:
    # Its daily budget ($100) is far from spent: the month's decides.
    error = _assert_budget_refusal(_spend_until_refused(keys_http, "monthly-budget"))
    assert error["message"].startswith("Monthly budget of $0.000001 for this API key is spent")
    now = datetime.now(UTC)
    next_month = f"{now.year + (now.month == 12)}-{now.month % 12 + 1:02d}-01T00:00:00Z"
    assert f"resets at {next_month}" in error["message"]


def test_a_spent_budget_refuses_only_its_own_key(keys_http: httpx.Client) -> None:
    _spend_until_refused(keys_http, "daily-budget")
    # Refused before any work, routing included; every other key is served as before.
    route = keys_http.post("/v1/route", json=chat_body("hi"), headers=_bearer("daily-budget"))
    assert route.status_code == 429 and route.json()["error"]["code"] == "budget_exceeded"
    other = keys_http.post(
        "/v1/chat/completions",
        json=chat_body(f"Name a colour. ref {uuid.uuid4().hex[:6]}", cache=False),
        headers=_bearer("beta"),
    )
    assert other.status_code == 200, other.text


def _summary(keys_http: httpx.Client, tenant: str) -> dict:
    response = keys_http.get("/admin/cost/summary", params={"tenant": tenant}, headers=ADMIN)
    assert response.status_code == 200, response.text
    return response.json()


def test_the_cost_summary_filters_by_tenant(keys_http: httpx.Client) -> None:
    before = {tenant: _summary(keys_http, tenant) for tenant in ("alpha", "beta", "other")}
    answered = keys_http.post(
        "/v1/chat/completions",
        json=chat_body(f"Name a colour. ref {uuid.uuid4().hex[:6]}", cache=False),
        headers=_bearer("alpha"),
    )
    assert answered.status_code == 200, answered.text
    after = {tenant: _summary(keys_http, tenant) for tenant in ("alpha", "beta", "other")}

    assert after["alpha"]["tenant"] == "alpha"
    assert after["alpha"]["requests"] - before["alpha"]["requests"] == 1
    assert after["alpha"]["spent_usd"] - before["alpha"]["spent_usd"] == pytest.approx(
        float(answered.headers["x-cascade-cost-usd"]), abs=1e-9
    )
    assert after["beta"]["requests"] == before["beta"]["requests"]
    assert after["other"]["requests"] == before["other"]["requests"]
    unknown = keys_http.get("/admin/cost/summary", params={"tenant": "nobody"}, headers=ADMIN)
    assert unknown.status_code == 400 and unknown.json()["error"]["param"] == "tenant"
