"""Edges of the real stack (issue 19): a hung router replica, and the relay quality mode.

A hung replica is alive but silent: SIGSTOP freezes the router's process, so Serve neither
sees it die nor gets an answer from it, and only the ingress's router budget
(`router.timeout_s`) keeps routed requests moving, decided by the ingress's own heuristic.
The shipped router scores in the ingress; the stack's router deployment is the short-small
gateway's (conftest.HELPER_DEPLOYMENTS_APP), as an encoder router would have.

`x-cascade-quality: relay` (a client may pick it on the local stack) relays a routed stream as
the tier sends it; non-streamed answers are still judged. A relayed routed small-tier answer
was never judged, so it is never cached (serve_app/quality/cache_policy.py, `unjudged`).
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator

import httpx
import psutil
import pytest

from benchmarks.faults import stack_ray_address, wait_until
from serve_app.config import ROUTER_DEPLOYMENT
from tests.conftest import HELPER_DEPLOYMENTS_APP, SHORT_SMALL_PREFIX
from tests.helpers import EMPTY_ANSWER, chat_body

# Longer than the ingress's own deadline (120 s in configs/local.yaml, which starts after
# routing): a slow tier then shows as its 504, and a request hung in routing fails the test
# instead of blocking the session.
HANG_TIMEOUT_S = 150.0
# Until the router deployment answers within its budget again: the frozen replica resumes, or
# Serve has replaced it (its health check fails while it is frozen) and the new one has loaded.
ROUTER_RECOVERY_S = 300.0
# Until the router deployment answers a `/v1/route` call within its budget before the freeze.
ROUTER_READY_S = 120.0
# The scorer the ingress's fallback router reports (serve_app.routing: no checkpoint).
INGRESS_HEURISTIC = "heuristic"
RELAY = {"x-cascade-quality": "relay"}


def _route(http: httpx.Client, content: str) -> httpx.Response:
    return http.post("/v1/route", json=chat_body(content), timeout=HANG_TIMEOUT_S)


def _router_scorer(http: httpx.Client) -> str | None:
    """The scorer behind `/v1/route`'s decision, or None when the call failed."""
    try:
        response = _route(http, "Hi!")
    except httpx.HTTPError:
        return None
    return response.json()["scorer"] if response.status_code == 200 else None


def _router_deployment_scorer(http: httpx.Client) -> str:
    """The router deployment's own scorer (`classifier` with the shipped router), read once it
    answers within its budget: on a busy box a call may overrun it, and the ingress's
    heuristic answers instead."""
    seen: list[str | None] = []

    def router_answered() -> bool:
        seen.append(_router_scorer(http))
        return seen[-1] not in {None, INGRESS_HEURISTIC}

    wait_until(router_answered, ROUTER_READY_S, interval_s=2)
    return str(seen[-1])


def _router_processes(base_url: str) -> list[psutil.Process]:
    """The live processes of the router deployment's replicas, found through Ray's state API
    on the stack's own cluster, checked by their process title before anything touches them."""
    from ray.util.state import list_actors

    class_name = f"ServeReplica:{HELPER_DEPLOYMENTS_APP}:{ROUTER_DEPLOYMENT}"
    address = os.environ.get("RAY_ADDRESS") or stack_ray_address(base_url)
    filters = [("class_name", "=", class_name), ("state", "=", "ALIVE")]
    actors = list_actors(address=address, filters=filters, detail=True, limit=1000)
    processes = [psutil.Process(actor.pid) for actor in actors if actor.pid]
    assert processes, f"no live replica of {class_name}"
    for process in processes:
        title = " ".join(process.cmdline())
        assert class_name in title, f"pid {process.pid} is not a router replica: {title!r}"
    return processes


@pytest.fixture
def routed_by_deployment(cascade_url: str) -> Iterator[httpx.Client]:
    """The gateway whose router is a deployment."""
    with httpx.Client(base_url=cascade_url + SHORT_SMALL_PREFIX, timeout=180) as client:
        yield client


@pytest.mark.disruptive
def test_a_hung_router_replica_does_not_hang_requests(
    routed_by_deployment: httpx.Client, cascade_url: str
) -> None:
    """Freeze the router replica (SIGSTOP): routed requests and `/v1/route` still answer, routed
    by the ingress's heuristic after the router budget. Then thaw it (SIGCONT, always) and wait
    until the router deployment decides again, so the stack is whole for what runs next."""
    http = routed_by_deployment
    router_scorer = _router_deployment_scorer(http)

    processes = _router_processes(cascade_url)
    frozen: list[psutil.Process] = []
    try:
        for process in processes:
            process.suspend()  # SIGSTOP: alive, holding its connections, answering nothing
            frozen.append(process)
        for process in frozen:
            wait_until(lambda p=process: p.status() == psutil.STATUS_STOPPED, 10, interval_s=0.1)

        route = _route(http, "Name a primary colour.")
        assert route.status_code == 200, route.text
        assert route.json()["scorer"] == INGRESS_HEURISTIC
        assert route.json()["tier"] in {"small", "large"}

        tag = uuid.uuid4().hex[:8]
        questions = (
            f"What is the capital of Spain? ({tag})",
            f"Name a primary colour. ({tag})",
            f"How many legs does a spider have? ({tag})",
        )
        for question in questions:
            body = chat_body(question, max_tokens=8, cache=False)
            response = http.post("/v1/chat/completions", json=body, timeout=HANG_TIMEOUT_S)
            assert response.status_code == 200, response.text
            assert response.headers["x-cascade-route"] in {"small", "large"}
            assert response.json()["choices"]
    finally:
        for process in frozen:
            try:
                process.resume()  # SIGCONT
            except psutil.NoSuchProcess:
                pass  # Serve already replaced the unresponsive replica
        wait_until(lambda: _router_scorer(http) == router_scorer, ROUTER_RECOVERY_S, interval_s=2)


def test_relay_mode_escalates_a_weak_non_streamed_answer(http: httpx.Client) -> None:
    """Relay mode changes streams only: a non-streamed answer is still judged, so an empty
    small-tier answer is replaced by the large tier's."""
    # Routed small by the shipped router and by the ingress's heuristic alike.
    body = chat_body("Tell me about cats.", cache=False, **EMPTY_ANSWER)
    response = http.post("/v1/chat/completions", json=body, headers=RELAY)
    assert response.status_code == 200, response.text
    assert response.headers["x-cascade-route"] == "small"
    assert response.headers["x-cascade-escalated"] == "true"
    assert response.headers["x-cascade-escalation-reason"] == "empty"
    assert response.headers["x-cascade-tier"] == "large"
    assert response.json()["model"] == "cascade-large"


def _relayed_stream(http: httpx.Client, body: dict, headers: dict) -> tuple[httpx.Headers, list]:
    with http.stream("POST", "/v1/chat/completions", json=body, headers=headers) as response:
        assert response.status_code == 200, response.read()
        lines = [line for line in response.iter_lines() if line]
    return response.headers, lines


def test_relay_mode_streams_an_empty_small_answer_unjudged_and_never_caches_it(
    http: httpx.Client,
) -> None:
    """A routed relay-mode stream is relayed as the small tier sends it, even when its answer is
    empty (what `hold` would escalate): only a failure before the first token fails over. That
    answer was never judged, so it is not cached: the same request again is a miss.

    A fresh tenant (bearer key) per run gives a fresh cache partition for the same prompt."""
    tenant = {"authorization": f"Bearer relay-{uuid.uuid4().hex}"}
    headers = {**RELAY, **tenant}
    # Cacheable (temperature 0, no opt-out); routed small by the router and the heuristic alike.
    body = chat_body("Tell me about birds.", stream=True, **EMPTY_ANSWER)

    first, lines = _relayed_stream(http, body, headers)
    assert first["x-cascade-route"] == "small"
    assert first["x-cascade-tier"] == "small"
    assert first["x-cascade-escalated"] == "false"
    assert first["x-cascade-cost-final"] == "false"
    assert first["x-cascade-cache"] == "miss"
    assert lines[-1] == "data: [DONE]"
    chunks = [json.loads(line.removeprefix("data: ")) for line in lines[:-1]]
    assert {chunk["model"] for chunk in chunks} == {"cascade-small"}
    choices = [choice for chunk in chunks for choice in chunk["choices"]]
    assert not "".join(choice["delta"].get("content") or "" for choice in choices)

    # The cache write is fire-and-forget: the second lookup starts only after the whole first
    # request and the next after the whole second, so a stored answer would have been found.
    for _ in range(2):
        again, _lines = _relayed_stream(http, body, headers)
        assert again["x-cascade-cache"] == "miss"
        assert again["x-cascade-tier"] == "small"
