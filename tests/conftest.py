"""Shared fixtures: one real local cascade (Ray Serve + two vLLM CPU tiers) per test session."""

from __future__ import annotations

import copy
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from benchmarks.faults import use_ray_token_auth_if_configured
from devtools import local_stack
from serve_app.gateway.auth import key_sha256
from tests.redis_server import RedisServer

# Before any test module initialises Ray: the fault tests attach to the stack's cluster.
use_ray_token_auth_if_configured()

REPO_ROOT = Path(__file__).resolve().parent.parent
LOCAL_CONFIG = REPO_ROOT / "configs" / "local.yaml"
TIER_MODELS = ["cascade-small", "cascade-large"]
KEYS_PREFIX = "/keys"
# tenant: (API key, its limits and budgets) of the API-key gateway.
API_KEYS: dict[str, tuple[str, dict[str, float]]] = {
    "alpha": ("sk-test-alpha", {}),
    "beta": ("sk-test-beta", {}),
    "limited": ("sk-test-limited", {"requests_per_minute": 2}),
    # Budgets one small-tier answer spends (~$0.00001 at configs/local.yaml's prices).
    "daily-budget": ("sk-test-daily-budget", {"usd_per_day": 0.000001}),
    "monthly-budget": (
        "sk-test-monthly-budget",
        {"usd_per_day": 100.0, "usd_per_month": 0.000001},
    ),
}
# A third gateway, told the small tier's context is shorter than the large tier's (both local
# engines hold 2048 tokens), so prompts between the two exercise routing by length.
SHORT_SMALL_PREFIX = "/short-small"
SHORT_SMALL_CONTEXT = 1024
# The application whose router and cache are deployments (the short-small gateway's).
HELPER_DEPLOYMENTS_APP = "cascade-short-small"
STARTUP_TIMEOUT_S = float(os.environ.get("CASCADE_STARTUP_TIMEOUT_S", "900"))
ADMIN_TOKEN = os.environ.setdefault("CASCADE_ADMIN_TOKEN", "test-admin-token")


def _own_cache(args: dict[str, Any], placement: str, shard: Path) -> None:
    """A second gateway's own cache (the shipped first gateway's is in its ingress, where no
    other gateway can reach it), in an Edge shard of its own."""
    args["cache"]["placement"] = placement
    args["cache"]["edge_path"] = str(shard)


def _api_key_gateway(cascade: dict[str, Any], stack_dir: Path) -> dict[str, Any]:
    """A second gateway at KEYS_PREFIX in `api_keys` mode, in front of the same tiers
    (`ingress.share_deployments_of`), its cache in its ingress as the shipped one: the auth
    tests use it, the rest use the open one."""
    args = copy.deepcopy(cascade["args"])
    args["ingress"]["share_deployments_of"] = cascade["name"]
    _own_cache(args, "ingress", stack_dir / "cache-shard-keys")
    args["auth"] = {
        "mode": "api_keys",
        "keys": [
            {"sha256": key_sha256(key), "tenant": tenant, **limits}
            for tenant, (key, limits) in API_KEYS.items()
        ],
    }
    return {
        "name": "cascade-api-keys",
        "route_prefix": KEYS_PREFIX,
        "import_path": cascade["import_path"],
        "args": args,
    }


def _short_small_gateway(cascade: dict[str, Any], stack_dir: Path) -> dict[str, Any]:
    """A gateway at SHORT_SMALL_PREFIX in front of the same tiers, whose view of the small
    tier's context is SHORT_SMALL_CONTEXT: production's shape (small 8k, large 16k) on engines
    that are alike. Only the gateway's routing reads it; the engines keep their own. Its router
    and its cache run in deployments of their own (HELPER_DEPLOYMENTS_APP)."""
    args = copy.deepcopy(cascade["args"])
    args["ingress"]["share_deployments_of"] = cascade["name"]
    # The stack's one cache deployment: the shipped cache looks up in the ingress, and a cache
    # deployment (an Edge cache behind a scaled ingress, serve_app.cache.placement) needs live
    # tests too.
    _own_cache(args, "deployment", stack_dir / "cache-shard-short-small")
    args["cache"]["deployment_config"] = {"ray_actor_options": {"num_cpus": 0.01}}
    ingress_deployment = args["ingress"].setdefault("deployment_config", {})
    ingress_deployment["ray_actor_options"] = {"num_cpus": 0.01}  # the 2 cores are spoken for
    small = args["tiers"]["small"]
    # A new dict: the YAML anchor makes both tiers share one engine_kwargs mapping.
    small["engine_kwargs"] = {**small["engine_kwargs"], "max_model_len": SHORT_SMALL_CONTEXT}
    # The one router deployment of the stack: the shipped router scores in the ingress, and a
    # router deployment (an encoder router's, serve_app.routing.placement) needs live tests too.
    args["router"]["placement"] = "deployment"
    args["router"]["deployment_config"] = {"ray_actor_options": {"num_cpus": 0.01}}
    return {
        "name": HELPER_DEPLOYMENTS_APP,
        "route_prefix": SHORT_SMALL_PREFIX,
        "import_path": cascade["import_path"],
        "args": args,
    }


def _config_with_fresh_cache(stack_dir: Path) -> Path:
    """configs/local.yaml with the cache's shard in this session's temp dir, plus an API-key
    gateway and a short-small-context gateway in front of the same deployments.

    The shipped config keeps the shard (and its answers) across restarts; a test session
    starts from an empty cache and leaves the operator's own cache alone.
    """
    config = yaml.safe_load(LOCAL_CONFIG.read_text())
    (cascade,) = config["applications"]
    cascade["args"].setdefault("cache", {})["edge_path"] = str(stack_dir / "cache-shard")
    config["applications"].append(_api_key_gateway(cascade, stack_dir))
    config["applications"].append(_short_small_gateway(cascade, stack_dir))
    path = stack_dir / "local.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


@pytest.fixture(scope="session")
def cascade_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Start `serve run configs/local.yaml` once; every API test talks to it over HTTP.

    Set CASCADE_URL to test a stack that is already running (e.g. `make run` in another shell).
    """
    if os.environ.get("CASCADE_URL"):
        yield os.environ["CASCADE_URL"]
        return
    stack_dir = tmp_path_factory.mktemp("stack")
    log_path = stack_dir / "serve_run.log"
    process = local_stack.start(str(_config_with_fresh_cache(stack_dir)), log_path)
    try:
        seconds = local_stack.wait_ready(
            process, local_stack.DEFAULT_URL, TIER_MODELS, STARTUP_TIMEOUT_S
        )
        print(f"\nlocal cascade ready in {seconds:.0f} s")
    except (RuntimeError, TimeoutError):
        local_stack.stop(process)
        print(log_path.read_text(errors="replace")[-20000:])
        raise
    yield local_stack.DEFAULT_URL
    # As `make run` stops: nothing of the stack may outlive it (stop raises if anything does),
    # and nothing else on the machine is touched.
    local_stack.stop(process)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A private redis-server for the offline tests of the limits and budgets that ingress
    replicas share (each test flushes it first)."""
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def http(cascade_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=cascade_url, timeout=180) as client:
        yield client


@pytest.fixture(scope="session")
def openai_client(cascade_url: str):
    from openai import OpenAI

    return OpenAI(base_url=f"{cascade_url}/v1", api_key="test-key", max_retries=0, timeout=180)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "disruptive: kills parts of the live stack; runs after every other test"
    )
    config.addinivalue_line(
        "markers",
        "own_cluster: starts a stack of its own; runs after the offline tests, before the "
        "shared stack starts",
    )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Run the tests of the live stack last, and those that disrupt it (fault tests) at the end.

    Offline tests then fail fast, and none of them (some start a private one-CPU Ray) runs
    beside the stack's own Ray cluster and vLLM engines on a 2-core machine.
    """
    items.sort(
        key=lambda item: (
            "cascade_url" in getattr(item, "fixturenames", ()),
            item.get_closest_marker("disruptive") is not None,
            # Last of the offline tests: its stack is stopped before the shared one starts.
            item.get_closest_marker("own_cluster") is not None,
        )
    )
