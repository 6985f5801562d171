"""Shared fixtures: one real local cascade (Ray Serve + two vLLM CPU tiers) per test session."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from benchmarks.faults import use_ray_token_auth_if_configured
from devtools import local_stack

# Before any test module initialises Ray: the fault tests attach to the stack's cluster.
use_ray_token_auth_if_configured()

REPO_ROOT = Path(__file__).resolve().parent.parent
LOCAL_CONFIG = REPO_ROOT / "configs" / "local.yaml"
TIER_MODELS = ["cascade-small", "cascade-large"]
STARTUP_TIMEOUT_S = float(os.environ.get("CASCADE_STARTUP_TIMEOUT_S", "900"))
ADMIN_TOKEN = os.environ.setdefault("CASCADE_ADMIN_TOKEN", "test-admin-token")


@pytest.fixture(scope="session")
def cascade_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Start `serve run configs/local.yaml` once; every API test talks to it over HTTP.

    Set CASCADE_URL to test a stack that is already running (e.g. `make run` in another shell).
    """
    if os.environ.get("CASCADE_URL"):
        yield os.environ["CASCADE_URL"]
        return
    log_path = tmp_path_factory.mktemp("stack") / "serve_run.log"
    process = local_stack.start(str(LOCAL_CONFIG), log_path)
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


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Run the tests of the live stack last, and those that disrupt it (fault tests) at the end.

    Offline tests then fail fast, and none of them (some start a private one-CPU Ray) runs
    beside the stack's own Ray cluster and vLLM engines on a 2-core machine.
    """
    items.sort(
        key=lambda item: (
            "cascade_url" in getattr(item, "fixturenames", ()),
            item.get_closest_marker("disruptive") is not None,
        )
    )
