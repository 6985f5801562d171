"""Fault injection on the local stack: kill Serve replicas (Ray actors), wait for recovery.

The Serve controller notices a dead replica actor and starts a replacement; these helpers
find a deployment's replica actors by name (`SERVE_REPLICA::<app>#<deployment>#<id>`), kill
them, and measure how long the service takes to answer through the replacement again.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import psutil

APP_NAME = "cascade"
# Processes whose memory the soak tracks: Ray's own, Serve replicas and vLLM engines.
_STACK_PROCESS_MARKERS = ("ray::", "raylet", "gcs_server", "VLLM::", "serve run", "dashboard")


def replica_actor_names(deployment: str, app: str = APP_NAME) -> list[tuple[str, str]]:
    """(name, namespace) of each live replica actor of `deployment` in the Serve application
    `app`; needs `ray.init` first."""
    import ray

    marker = f"{app}#{deployment}#"
    return [
        (actor["name"], actor["namespace"])
        for actor in ray.util.list_named_actors(all_namespaces=True)
        if marker in actor["name"]
    ]


def kill_replicas(deployment: str, app: str = APP_NAME) -> int:
    """Kill every replica actor of `deployment` in `app` (as a crash would); returns how many."""
    import ray

    names = replica_actor_names(deployment, app)
    for name, namespace in names:
        # no_restart: Ray must not restart the actor itself; Serve replaces the replica.
        ray.kill(ray.get_actor(name, namespace=namespace), no_restart=True)
    # ray.kill only asks; the drill's next request must meet the dead replica, not a live one.
    wait_until(lambda: not set(names) & set(replica_actor_names(deployment, app)), 30.0, 0.05)
    return len(names)


def stack_ray_address(base_url: str) -> str:
    """GCS address of the Ray cluster serving `base_url`.

    Not `address="auto"`: that is the most recently started cluster on the machine, which
    may be someone else's; killing its replicas would be a fault drill on the wrong stack.
    The process listening on the HTTP port is Serve's proxy actor, a child of its raylet.
    """
    port = urlsplit(base_url).port or 80
    for connection in psutil.net_connections(kind="tcp"):
        if connection.status == psutil.CONN_LISTEN and connection.laddr.port == port:
            process: psutil.Process | None = psutil.Process(connection.pid)
            while process is not None:
                for arg in process.cmdline():
                    if arg.startswith("--gcs-address="):
                        return arg.split("=", 1)[1]
                process = process.parent()
    raise RuntimeError(f"no Ray cluster found serving {base_url}")


def use_ray_token_auth_if_configured() -> None:
    """A local cluster started while ~/.ray/auth_token exists requires that token, and Ray only
    picks it up by itself for address="auto"; an explicit address needs the mode set before
    Ray first reads its config in this process (i.e. before anything initialises Ray). Importing
    the `benchmarks` package already did this; it is repeated for a token created since."""
    if (Path.home() / ".ray" / "auth_token").exists():
        os.environ.setdefault("RAY_AUTH_MODE", "token")


def connect_to_stack(base_url: str) -> None:
    use_ray_token_auth_if_configured()
    import ray

    if ray.is_initialized():
        return
    address = os.environ.get("RAY_ADDRESS") or stack_ray_address(base_url)
    try:
        ray.init(address=address, namespace="serve", log_to_driver=False)
    except (ConnectionError, RuntimeError):
        # Ray read its auth config before the token existed (e.g. a test process whose stack
        # created ~/.ray/auth_token on start): "auto" finds the local cluster and its token.
        ray.shutdown()
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


def orphaned_engine_processes() -> int:
    """vLLM engine processes whose parent died (re-parented to init): what a killed replica
    would leave behind, holding GBs of RAM, if vLLM did not stop with its parent."""
    count = 0
    for process in psutil.process_iter(["cmdline", "ppid"]):
        try:
            label = " ".join(process.info["cmdline"] or [])
            if label.startswith("VLLM::") and process.info["ppid"] == 1:
                count += 1
        except psutil.Error:
            continue
    return count
