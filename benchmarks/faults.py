"""Fault injection on the local stack: kill Serve replicas (Ray actors), wait for recovery.

The Serve controller notices a dead replica actor and starts a replacement; these helpers
find a deployment's replica actors by name (`SERVE_REPLICA::<app>#<deployment>#<id>`), kill
them, and measure how long the service takes to answer through the replacement again.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable

import httpx
import psutil

APP_NAME = "cascade"
# Processes whose memory the soak tracks: Ray's own, Serve replicas and vLLM engines.
_STACK_PROCESS_MARKERS = ("ray::", "raylet", "gcs_server", "VLLM::", "serve run", "dashboard")


def replica_actor_names(deployment: str) -> list[tuple[str, str]]:
    """(name, namespace) of each live replica actor of `deployment`; needs `ray.init` first."""
    import ray

    marker = f"{APP_NAME}#{deployment}#"
    return [
        (actor["name"], actor["namespace"])
        for actor in ray.util.list_named_actors(all_namespaces=True)
        if marker in actor["name"]
    ]


def kill_replicas(deployment: str) -> int:
    """Kill every replica actor of `deployment` (as a crash would); returns how many."""
    import ray

    names = replica_actor_names(deployment)
    for name, namespace in names:
        # no_restart: Ray must not restart the actor itself; Serve replaces the replica.
        ray.kill(ray.get_actor(name, namespace=namespace), no_restart=True)
    return len(names)


def connect_to_stack() -> None:
    import ray

    if not ray.is_initialized():
        ray.init(address="auto", namespace="serve", log_to_driver=False)


def wait_until(check: Callable[[], bool], timeout_s: float, interval_s: float = 1.0) -> float:
    """Seconds until `check()` holds; TimeoutError past `timeout_s`."""
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > timeout_s:
            raise TimeoutError(f"not recovered after {timeout_s:.0f} s")
        time.sleep(interval_s)
    return time.monotonic() - started


def tier_answers(base_url: str, model: str) -> bool:
    """A pinned one-token request to `model` succeeds (its replica is up and serving)."""
    body = {
        "model": model,
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 1,
        "cache": False,
    }
    try:
        response = httpx.post(f"{base_url}/v1/chat/completions", json=body, timeout=30)
    except httpx.HTTPError:
        return False
    return response.status_code == 200


def cache_answers(base_url: str) -> bool:
    """A routed request gets a real cache lookup (`miss`), not a fail-open (`error`)."""
    body = {
        "model": "cascade",
        "messages": [{"role": "user", "content": f"Say ok. ({uuid.uuid4().hex[:8]})"}],
        "max_tokens": 1,
        "temperature": 0,
    }
    try:
        response = httpx.post(f"{base_url}/v1/chat/completions", json=body, timeout=30)
    except httpx.HTTPError:
        return False
    return response.status_code == 200 and response.headers.get("x-cascade-cache") == "miss"


def stack_memory_mb() -> dict[str, float]:
    """Resident memory of the stack's processes, by kind (vLLM engines, Serve replicas, Ray)."""
    totals = {"vllm": 0.0, "serve_replicas": 0.0, "ray_other": 0.0}
    for process in psutil.process_iter(["name", "cmdline", "memory_info"]):
        try:
            label = " ".join(process.info["cmdline"] or [process.info["name"] or ""])
            rss_mb = process.info["memory_info"].rss / 2**20
        except (psutil.Error, AttributeError, TypeError):
            continue
        if "VLLM::" in label:
            totals["vllm"] += rss_mb
        elif "ServeReplica" in label or "ServeController" in label or "ProxyActor" in label:
            totals["serve_replicas"] += rss_mb
        elif any(marker in label for marker in _STACK_PROCESS_MARKERS):
            totals["ray_other"] += rss_mb
    return {kind: round(mb, 1) for kind, mb in totals.items()}


def engine_process_count() -> int:
    """vLLM engine-core processes alive: an orphan left by a killed replica shows up here."""
    count = 0
    for process in psutil.process_iter(["cmdline"]):
        try:
            if "VLLM::EngineCore" in " ".join(process.info["cmdline"] or []):
                count += 1
        except psutil.Error:
            continue
    return count
