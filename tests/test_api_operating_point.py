"""The router's operating point as clients and operators see it on the live stack:
`/v1/route` explains it, model aliases and `x-cascade-large-share` move it within bounds."""

from __future__ import annotations

import httpx

from tests.helpers import chat_body

QUESTION = "Explain the difference between TCP and UDP."


def _route(http: httpx.Client, model: str = "cascade", **headers: str) -> httpx.Response:
    return http.post("/v1/route", json=chat_body(QUESTION, model=model), headers=headers)


def test_route_explains_the_operators_target(http: httpx.Client) -> None:
    decision = _route(http).json()
    point = decision["operating_point"]
    assert point["threshold_from"] == "target"
    assert decision["threshold"] == point["threshold"]
    assert 0 < point["expected"]["large_share"] <= 1
    assert decision["request_target"] is None


def test_aliases_are_models_that_move_the_threshold_within_bounds(http: httpx.Client) -> None:
    listed = {card["id"] for card in http.get("/v1/models").json()["data"]}
    assert {"cascade-cheaper", "cascade-safer"} <= listed

    default = _route(http).json()["threshold"]
    cheaper = _route(http, "cascade-cheaper").json()
    safer = _route(http, "cascade-safer").json()
    # A higher threshold sends fewer requests to the large tier.
    assert safer["threshold"] < default < cheaper["threshold"]
    assert cheaper["request_target"]["honoured"]


def test_large_share_header_is_clamped_or_refused(http: httpx.Client) -> None:
    clamped = _route(http, **{"x-cascade-large-share": "0.01"}).json()["request_target"]
    assert clamped["clamped"] and clamped["expected"]["large_share"] >= 0.3 - 1e-6
    refused = _route(http, **{"x-cascade-large-share": "2"})
    assert refused.status_code == 400
    assert refused.json()["error"]["param"] == "x-cascade-large-share"


def test_an_alias_answers_like_the_cascade(http: httpx.Client) -> None:
    response = http.post("/v1/chat/completions", json=chat_body("Hi!", model="cascade-cheaper"))
    assert response.status_code == 200, response.text
    assert response.headers["x-cascade-route"] in {"small", "large"}
