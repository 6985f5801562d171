"""A request's cost as an operator sees it: headers, summary endpoint, Prometheus report."""

from __future__ import annotations

import time
import uuid

import httpx
import pytest

from serve_app.ops.report import discovered_metrics_urls, scrape, summarize
from tests.conftest import ADMIN_TOKEN
from tests.helpers import chat_body

ADMIN = {"authorization": f"Bearer {ADMIN_TOKEN}"}
# Ray's workers push metrics to the node agent every few seconds.
METRICS_EXPORT_WAIT_S = 40


def _summary(http: httpx.Client) -> dict:
    response = http.get("/admin/cost/summary", headers=ADMIN)
    assert response.status_code == 200, response.text
    return response.json()


def _ask(http: httpx.Client, content: str) -> httpx.Response:
    response = http.post("/v1/chat/completions", json=chat_body(content))
    assert response.status_code == 200, response.text
    return response


def test_summary_needs_the_admin_token(http: httpx.Client) -> None:
    response = http.get("/admin/cost/summary", headers={"authorization": "Bearer wrong"})
    assert response.status_code == 403
    assert response.json()["error"]["type"] == "permission_error"


def test_routed_request_and_cache_hit_move_the_summary_by_their_headers(
    http: httpx.Client,
) -> None:
    # Room for a whole answer: only complete answers are cached.
    question = f"What is the capital city of Peru? ref {uuid.uuid4().hex[:6]}"
    before = _summary(http)
    miss = _ask(http, question)
    after_miss = _summary(http)
    hit = _ask(http, question)
    after_hit = _summary(http)

    assert miss.headers["x-cascade-cache"] == "miss"
    assert after_miss["requests"] == before["requests"] + 1
    assert after_miss["spent_usd"] - before["spent_usd"] == pytest.approx(
        float(miss.headers["x-cascade-cost-usd"]), abs=1e-9
    )
    assert after_miss["counterfactual_usd"] - before["counterfactual_usd"] == pytest.approx(
        float(miss.headers["x-cascade-counterfactual-usd"]), abs=1e-9
    )

    assert hit.headers["x-cascade-cache"] == "hit"
    assert after_hit["cache_hits"] == after_miss["cache_hits"] + 1
    cache_saving = (
        after_hit["net_saved_usd_by_lever"]["cache"] - after_miss["net_saved_usd_by_lever"]["cache"]
    )
    # A hit saves what the answer would have cost on the large tier, minus the lookup. (The
    # hit's cost header may also hold a router pass that finished first: routing's cost.)
    counterfactual = float(hit.headers["x-cascade-counterfactual-usd"])
    hit_cost = float(hit.headers["x-cascade-cost-usd"])
    assert counterfactual - hit_cost - 1e-9 <= cache_saving <= counterfactual
    assert cache_saving > 0.9 * counterfactual
    assert float(hit.headers["x-cascade-cost-usd"]) < float(miss.headers["x-cascade-cost-usd"])


def test_prometheus_report_counts_the_request(http: httpx.Client) -> None:
    urls = discovered_metrics_urls()
    if not urls:
        pytest.skip("the stack's Ray runs elsewhere (CASCADE_URL): no local metrics endpoint")
    before = summarize(scrape(urls))["requests"]
    _ask(http, f"Name a primary colour. (metrics check {uuid.uuid4().hex[:8]})")
    deadline = time.monotonic() + METRICS_EXPORT_WAIT_S
    while time.monotonic() < deadline:
        report = summarize(scrape(urls))
        if report["requests"] > before:
            break
        time.sleep(2)
    assert report["requests"] > before
    assert report["spent_usd"] > 0 and report["counterfactual_usd"] > 0


def test_responses_say_what_the_gateway_added_besides_the_tier(http: httpx.Client) -> None:
    body = chat_body(f"Name a planet. ({uuid.uuid4().hex[:8]})", model="cascade-small")
    started = time.perf_counter()
    plain = http.post("/v1/chat/completions", json=body)
    elapsed_ms = (time.perf_counter() - started) * 1000
    stream_body = chat_body(
        f"Name a river. ({uuid.uuid4().hex[:8]})", model="cascade-small", stream=True
    )
    with http.stream("POST", "/v1/chat/completions", json=stream_body) as streamed:
        streamed.read()
    cached = http.post("/v1/chat/completions", json=body)
    for response in (plain, streamed):
        assert response.status_code == 200
        gateway_ms = float(response.headers["x-cascade-gateway-ms"])
        # The pinned tier's generation is excluded: what is left is a small part of the whole.
        assert 0 <= gateway_ms < elapsed_ms / 2
    assert cached.headers["x-cascade-cache"] == "hit"
    assert "x-cascade-gateway-ms" not in cached.headers  # no tier call to set it against
