"""Replica kills under a concurrency-16 load on the live stack (short CI versions).

Each test kills a Serve replica actor while 16 clients send routed requests, checks what the
clients saw, then waits until the replacement serves again, so the shared stack is healthy
for whatever runs next. They disrupt the stack, so conftest runs them after all other tests.
`python -m benchmarks.fault_drill` is the full drill (longer load, recovery figures).
"""

from __future__ import annotations

import pytest

from benchmarks.fault_drill import DrillResult, NoReplicaToKill, run_drill
from tests.conftest import HELPER_DEPLOYMENTS_APP, SHORT_SMALL_PREFIX

pytestmark = pytest.mark.disruptive


def _drill(fault: str, url: str, duration_s: float, **app: str) -> tuple[DrillResult, dict]:
    """Kill `fault` 3 s into a 16-client load; every request must get an answer or an
    OpenAI-shaped error (no hang, no lost connection)."""
    result = run_drill(fault, url, duration_s=duration_s, kill_at_s=3, **app)
    summary = result.summary()
    print(summary)
    classes = summary["classes"]
    assert summary["well_formed_rate"] == 1.0, classes
    assert "hang" not in classes and "lost" not in classes
    return result, summary


def test_the_shipped_stack_has_no_cache_replica_to_lose(cascade_url: str) -> None:
    """The shipped cache looks up in the ingress: the drill finds no cache replica to kill."""
    with pytest.raises(NoReplicaToKill, match="looks up in the ingress"):
        run_drill("semantic-cache", cascade_url, duration_s=1)


def test_killed_cache_replica_fails_open(cascade_url: str) -> None:
    """On the gateway whose cache is a deployment (an Edge cache behind a scaled ingress)."""
    url = cascade_url + SHORT_SMALL_PREFIX
    result, summary = _drill("semantic-cache", url, duration_s=15, app=HELPER_DEPLOYMENTS_APP)
    assert summary["success_rate"] == 1.0, summary["classes"]
    # The request that met the dead replica went on without the cache, and got its answer.
    first = summary["first_request_after_kill"]
    assert (first["kind"], first.get("x-cascade-cache")) == ("ok", "error"), first
    assert result.recovery_s is not None  # back while the drill waited


def test_killed_small_tier_replica_fails_over_to_large(cascade_url: str) -> None:
    result, summary = _drill("llm-small", cascade_url, duration_s=20)
    assert summary["success_rate"] >= 0.95, summary["classes"]
    assert summary["failovers_small_to_large"] > 0
    assert result.recovery_s is not None  # back while the drill waited
    # The killed replica's vLLM engine must not linger as an orphan holding GBs of RAM.
    assert result.orphaned_engines_after <= result.orphaned_engines_before


def test_the_shipped_stack_has_no_router_replica_to_lose(cascade_url: str) -> None:
    """The shipped router scores in the ingress: the drill finds no router replica to kill."""
    with pytest.raises(NoReplicaToKill, match="scores in the ingress"):
        run_drill("router", cascade_url, duration_s=1)


def test_killed_router_replica_routes_with_the_heuristic(cascade_url: str) -> None:
    """On the gateway whose router is a deployment (an encoder router's placement)."""
    url = cascade_url + SHORT_SMALL_PREFIX
    result, summary = _drill("router", url, duration_s=15, app=HELPER_DEPLOYMENTS_APP)
    assert summary["success_rate"] == 1.0, summary["classes"]
    # Still routed (not failed over or pinned): the ingress's own heuristic took over.
    assert all(o.headers.get("x-cascade-route") for o in result.outcomes if o.ok)
    assert result.recovery_s is not None  # back while the drill waited
