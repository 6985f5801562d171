"""Start, wait for, and cleanly stop the local cascade (`serve run configs/local.yaml`).

vLLM's engine processes (`VLLM::EngineCore`, `VLLM::Worker`) outlive `serve shutdown`, a
killed `serve run` and even `ray stop --force`, each holding GBs of RAM (ENVIRONMENT.md). Every
stop path here reaps them, so the next run does not start out of memory.

On a cluster the engines have GPU nodes of their own; here they share two cores with the
gateway (proxy, ingress, router, cache). While the stack runs, the engines' processes are kept
at the lowest CPU priority (devtools/tier_priority.py), so a burst of requests is admitted or
refused by the gateway without queueing behind token generation.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

from devtools.tier_priority import ENGINE_TITLES, keep_tiers_at_low_priority

DEFAULT_URL = "http://127.0.0.1:8000"
ENGINE_PROCESS_MARKERS = (*ENGINE_TITLES, "ray::ServeReplica")
# Ray Serve's own request-path settings from its "throughput optimized" profile, minus
# direct ingress (that needs a load balancer in front of the replicas): user code and the
# handle router on the replica's main event loop instead of threads of their own (fewer
# cross-thread hand-offs per request), gRPC between proxy and replicas, buffered access logs
# and a frozen GC after start-up. On the 2-core box a burst of 128 health checks took 955 ms
# with Serve's defaults and 390-545 ms with these; gRPC alone was a mixed result (faster
# without a request body, slower with one). Figures: docs/reliability.md, "Overload".
GATEWAY_TUNING_ENV = {
    "RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0",
    "RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP": "0",
    "RAY_SERVE_USE_GRPC_BY_DEFAULT": "1",
    "RAY_SERVE_REQUEST_PATH_LOG_BUFFER_SIZE": "1000",
    "RAY_SERVE_FREEZE_GC_ON_STARTUP": "1",
}


def reap_engine_processes() -> None:
    """Kill leftover vLLM engine processes and Ray, whoever started them."""
    subprocess.run(["ray", "stop", "--force"], capture_output=True, check=False)
    for marker in ENGINE_PROCESS_MARKERS:
        subprocess.run(["pkill", "-9", "-f", marker], capture_output=True, check=False)


def start(config_path: str, log_path: Path) -> subprocess.Popen[bytes]:
    log = open(log_path, "wb")  # noqa: SIM115 - owned by the child for its lifetime
    env = {
        **GATEWAY_TUNING_ENV,
        **os.environ,  # an operator's own setting of any of these wins
        "HF_HUB_OFFLINE": "1",
        "RAY_SERVE_LOG_TO_STDERR": "1",
    }
    return subprocess.Popen(
        ["serve", "run", config_path],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,  # its own process group, so stop() reaches every child
    )


def _tier_answers(client: httpx.Client, model: str) -> bool:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
    try:
        response = client.post("/v1/chat/completions", json=body)
    except httpx.HTTPError:
        return False
    return response.status_code == 200


def wait_ready(
    process: subprocess.Popen[bytes], base_url: str, models: list[str], timeout_s: float
) -> float:
    """Block until every tier answers a 1-token request (also warms it up); returns seconds."""
    started = time.monotonic()
    pending = list(models)
    with httpx.Client(base_url=base_url, timeout=60) as client:
        while pending:
            if process.poll() is not None:
                raise RuntimeError(f"serve run exited with code {process.returncode}")
            if time.monotonic() - started > timeout_s:
                raise TimeoutError(f"tiers {pending} not ready after {timeout_s:.0f} s")
            pending = [model for model in pending if not _tier_answers(client, model)]
            if pending:
                time.sleep(2)
    return time.monotonic() - started


def stop(process: subprocess.Popen[bytes] | None) -> None:
    if process is not None and process.poll() is None:
        # SIGTERM, not SIGINT: a backgrounded `serve run` inherits an ignored SIGINT.
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    reap_engine_processes()


def keep_engines_behind_gateway(process: subprocess.Popen[bytes]) -> threading.Event:
    """Keep the tiers of the `serve run` in `process` below its gateway's CPU priority until
    the returned event is set. `start` made that `serve run` lead the gateway's session."""
    return keep_tiers_at_low_priority(gateway_session=os.getsid(process.pid))


def _interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description="Run the cascade locally (serve run) until Ctrl-C, then reap vLLM."
    )
    parser.add_argument("config", nargs="?", default="configs/local.yaml")
    parser.add_argument("--log", default="serve_run.log", help="where serve run's output goes")
    parser.add_argument("--timeout-s", type=float, default=600, help="start-up deadline")
    parser.add_argument(
        "--models", nargs="*", default=["cascade-small", "cascade-large"], help="tiers to await"
    )
    parser.add_argument(
        "--no-tier-priority",
        action="store_true",
        help="leave the engines at Ray's CPU priority (default: lowest, so the gateway is served "
        "first on a shared box)",
    )
    args = parser.parse_args(argv)
    # Stop cleanly on Ctrl-C and on `kill`, even when started in the background.
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    reap_engine_processes()
    process = start(args.config, Path(args.log))
    print(f"starting the cascade (serve run {args.config}); log: {args.log}", flush=True)
    try:
        seconds = wait_ready(process, DEFAULT_URL, args.models, args.timeout_s)
        print(f"ready after {seconds:.0f} s: OpenAI API on {DEFAULT_URL}/v1 (Ctrl-C stops)")
        if not args.no_tier_priority:
            keep_engines_behind_gateway(process)
        process.wait()
    except KeyboardInterrupt:
        print("stopping")
    finally:
        stop(process)
    sys.exit(process.returncode or 0)


if __name__ == "__main__":
    main()
