"""Production's placement on two nodes, and the loss of the GPU node (devtools/topology.py).

A head raylet stands in for a CPU serving node and a second raylet for a GPU node, each with
its node type's resources from cluster.yaml; the cascade runs configs/local.yaml with
configs/production.yaml's placement. The tests read where Ray put each replica, then kill the
"GPU" node: requests must end (an answer from the cache, or an OpenAI-shaped error) instead of
hanging, and the tiers must come back when the node does.

The cluster is the module's own, started before the shared stack (conftest orders these tests
after the offline ones and before the live ones) so two stacks never share the machine.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from benchmarks.loadgen import is_openai_error
from devtools import local_stack, topology

pytestmark = pytest.mark.own_cluster

TIERS = ("llm-small", "llm-large")
GATEWAY = ("ingress",)  # the shipped router and cache run in the ingress
URL = f"http://127.0.0.1:{topology.DEFAULT_PORT}"
# Past the ingress's request_timeout_s (120 s in configs/local.yaml): an answer or an error by then.
CLIENT_TIMEOUT_S = 150


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[topology.TwoNodeCluster]:
    log_dir = Path(tmp_path_factory.mktemp("topology"))
    started = topology.start_miniature(log_dir)
    try:
        yield started
    finally:
        started.stop()


def _replica_nodes(cluster: topology.TwoNodeCluster) -> dict[str, set[str]]:
    """Deployment name -> ids of the nodes its live replicas run on (Ray's state API)."""
    from ray.util.state import list_actors

    actors = list_actors(
        address=cluster.dashboard_url,
        filters=[("state", "=", "ALIVE")],
        limit=1000,
        raise_on_missing_output=False,
    )
    nodes: dict[str, set[str]] = {}
    for actor in actors:
        name = actor.name or ""
        if name.startswith("SERVE_REPLICA::cascade#"):
            deployment = name.split("#")[1]
            nodes.setdefault(deployment, set()).add(actor.node_id)
    return nodes


def _node_ids(cluster: topology.TwoNodeCluster) -> dict[str, str]:
    """ "gateway" / "gpu" -> node id, told apart by the resources each advertises."""
    from ray.util.state import list_nodes

    ids = {}
    alive = list_nodes(
        address=cluster.dashboard_url,
        filters=[("state", "=", "ALIVE")],
        raise_on_missing_output=False,  # the lost node is still listed, as DEAD
    )
    for node in alive:
        kind = "gateway" if "gateway_node" in node.resources_total else "gpu"
        ids[kind] = node.node_id
    return ids


def _ask(client: httpx.Client, question: str) -> httpx.Response:
    body = {
        "model": "cascade",
        "messages": [{"role": "user", "content": question}],
        "max_tokens": 4,
        "temperature": 0,
    }
    return client.post("/v1/chat/completions", json=body)


def test_tiers_run_on_the_gpu_node_and_the_gateway_on_the_cpu_node(cluster) -> None:
    nodes = _node_ids(cluster)
    assert set(nodes) == {"gateway", "gpu"}
    placed = _replica_nodes(cluster)
    for deployment in TIERS:
        assert placed[deployment] == {nodes["gpu"]}, deployment
    for deployment in GATEWAY:
        assert placed[deployment] == {nodes["gateway"]}, deployment


def test_losing_the_gpu_node_ends_requests_and_the_tiers_come_back(cluster) -> None:
    cached_question = f"What is the capital of France? ({uuid.uuid4().hex[:6]})"
    with httpx.Client(base_url=URL, timeout=CLIENT_TIMEOUT_S) as client:
        assert _ask(client, cached_question).status_code == 200
        assert local_stack.wait_until(
            lambda: _ask(client, cached_question).headers.get("x-cascade-cache") == "hit", 30
        ), "the answer was never cached"

        cluster.kill_worker()

        # The gateway node still answers what it can: cached answers...
        cached = _ask(client, cached_question)
        assert cached.status_code == 200
        assert cached.headers["x-cascade-cache"] == "hit"
        # ...and a request that needs a tier ends with an OpenAI-shaped error, not a hang.
        started = time.monotonic()
        fresh = _ask(client, f"Name a primary colour. ({uuid.uuid4().hex[:6]})")
        waited_s = time.monotonic() - started
        # Refused as soon as the ingress sees no tier replica left (ingress.tier_watch_s), with
        # when to come back; before that watch, it waited for a replica until its 504.
        assert fresh.status_code == 503, (fresh.status_code, fresh.text[:300])
        assert is_openai_error(fresh) and fresh.json()["error"]["code"] == "tier_unavailable"
        assert int(fresh.headers["retry-after"]) >= 1
        print(
            f"uncached request with the GPU node gone: {fresh.status_code} after {waited_s:.1f} s"
        )

    cluster.start_worker()
    with httpx.Client(base_url=URL, timeout=60) as client:
        for model in ("cascade-small", "cascade-large"):
            assert local_stack.wait_until(
                lambda m=model: local_stack.tier_answers(client, m), timeout_s=900, interval_s=2
            ), f"{model} did not come back with the node"
    nodes = _node_ids(cluster)
    placed = _replica_nodes(cluster)
    for deployment in TIERS:
        assert placed[deployment] == {nodes["gpu"]}, deployment
