"""Start, wait for, and cleanly stop the local cascade (`serve run configs/local.yaml`).

`serve run` starts in a session of its own and is given `RAY_ADDRESS=local`, so it starts a Ray
cluster of its own (never attaching to one the user runs) whose every process (raylet, GCS,
Serve replicas, vLLM's engine processes) belongs to that session. Ray puts each worker in a
process group of its own, but never in another session, so stopping the session reaches them
all: vLLM's engines outlive `serve shutdown`, a killed `serve run` and `ray stop --force`,
holding GBs of RAM each, unless someone reaps them. Nothing outside the session is touched:
another Ray cluster on the machine survives a stop.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import yaml

DEFAULT_URL = "http://127.0.0.1:8000"
# Ray Serve's request-path settings, the same as production's (cluster.yaml gives the reason
# for each): on the 2-core box a burst of 128 health checks took 955 ms with Serve's defaults
# and 390-545 ms with these (docs/reliability.md, "Overload").
GATEWAY_TUNING_ENV = {
    "RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0",
    "RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP": "0",
    "RAY_SERVE_USE_GRPC_BY_DEFAULT": "1",
    "RAY_SERVE_REQUEST_PATH_LOG_BUFFER_SIZE": "1000",
    "RAY_SERVE_FREEZE_GC_ON_STARTUP": "1",
}
STOP_GRACE_S = 30.0


def served_url(config_path: str) -> str:
    """Where a Serve config's HTTP proxy listens: its `http_options` (Serve's defaults when the
    config leaves them out: 127.0.0.1:8000)."""
    http = (yaml.safe_load(Path(config_path).read_text()) or {}).get("http_options") or {}
    host = http.get("host", "127.0.0.1")
    if host in ("0.0.0.0", "::"):  # listening everywhere: reach it on loopback
        host = "127.0.0.1"
    return f"http://{host}:{http.get('port', 8000)}"


def launch(command: list[str], log_path: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    """Run `command` as the leader of a new session, its output in `log_path`."""
    log = open(log_path, "wb")  # noqa: SIM115 - owned by the child for its lifetime
    return subprocess.Popen(
        command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
    )


def start(
    config_path: str, log_path: Path, *, ray_address: str = "local", **env_overrides: str
) -> subprocess.Popen[bytes]:
    """`serve run config_path`; `ray_address` "local" starts a Ray cluster of its own, an
    address deploys onto that running cluster (devtools/topology.py)."""
    env = {
        **GATEWAY_TUNING_ENV,
        **os.environ,  # an operator's own setting of any of these wins
        "RAY_ADDRESS": ray_address,
        "HF_HUB_OFFLINE": "1",
        "RAY_SERVE_LOG_TO_STDERR": "1",
        **env_overrides,
    }
    # The `serve` CLI of the Python running this launcher (the project's venv).
    serve_cli = str(Path(sys.executable).parent / "serve")
    return launch([serve_cli, "run", config_path], log_path, env)


def _is_zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


def session_processes(session_id: int) -> list[int]:
    """Live processes of a session (zombies excluded: they hold no memory and cannot be killed)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            if os.getsid(int(entry)) == session_id and not _is_zombie(int(entry)):
                found.append(int(entry))
        except OSError:  # gone meanwhile
            continue
    return found


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now, for a server this tooling starts."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_http_ok(
    process: subprocess.Popen[bytes], url: str, timeout_s: float, interval_s: float = 0.5
) -> None:
    """Until `url` answers 200; raises if `process` (the server) exits or the deadline passes."""
    deadline_s = time.monotonic() + timeout_s
    with httpx.Client(timeout=5.0) as client:
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"{process.args} exited with code {process.returncode}")
            try:
                if client.get(url).status_code == 200:
                    return
            except httpx.HTTPError:
                pass  # not listening yet
            if time.monotonic() > deadline_s:
                raise TimeoutError(f"{url} did not answer within {timeout_s:.0f} s")
            time.sleep(interval_s)  # between polls of the url, not instead of them


def wait_until(condition: Callable[[], bool], timeout_s: float, interval_s: float = 0.2) -> bool:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(interval_s)
    return True


def stop_session(session_id: int, grace_s: float = STOP_GRACE_S) -> list[int]:
    """SIGTERM every process of the session, SIGKILL what is left after `grace_s`.

    Returns the processes that had to be killed. Raises if any survives SIGKILL.
    """
    for pid in session_processes(session_id):
        _signal(pid, signal.SIGTERM)
    if wait_until(lambda: not session_processes(session_id), grace_s):
        return []
    stubborn = session_processes(session_id)
    for pid in stubborn:
        _signal(pid, signal.SIGKILL)
    if not wait_until(lambda: not session_processes(session_id), grace_s):
        raise RuntimeError(f"processes {session_processes(session_id)} survived SIGKILL")
    return stubborn


def _signal(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass


def stop(process: subprocess.Popen[bytes] | None) -> list[int]:
    """Stop a stack started by `start`: `serve run` first (it shuts Serve and its Ray down),
    then whatever of its session outlived it. Returns the processes that needed SIGKILL."""
    if process is None:
        return []
    session_id = process.pid  # the session leader's pid names the session
    if process.poll() is None:
        # SIGTERM, not SIGINT: a backgrounded `serve run` inherits an ignored SIGINT.
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    return stop_session(session_id)


def tier_answers(client: httpx.Client, model: str) -> bool:
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
            pending = [model for model in pending if not tier_answers(client, model)]
            if pending:
                time.sleep(2)
    return time.monotonic() - started


def interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description="Run the cascade locally (serve run) until Ctrl-C or SIGTERM, then stop "
        "every process it started (Ray and vLLM's engines included) and nothing else."
    )
    parser.add_argument("config", nargs="?", default="configs/local.yaml")
    parser.add_argument("--log", default="serve_run.log", help="where serve run's output goes")
    parser.add_argument("--timeout-s", type=float, default=600, help="start-up deadline")
    parser.add_argument(
        "--models", nargs="*", default=["cascade-small", "cascade-large"], help="tiers to await"
    )
    args = parser.parse_args(argv)
    # Stop cleanly on Ctrl-C and on `kill`, even when started in the background.
    signal.signal(signal.SIGINT, interrupt)
    signal.signal(signal.SIGTERM, interrupt)
    process = start(args.config, Path(args.log))
    print(f"starting the cascade (serve run {args.config}); log: {args.log}", flush=True)
    try:
        url = served_url(args.config)
        seconds = wait_ready(process, url, args.models, args.timeout_s)
        print(f"ready after {seconds:.0f} s: OpenAI API on {url}/v1 (Ctrl-C stops)")
        process.wait()
    except KeyboardInterrupt:
        print("stopping", flush=True)
    finally:
        # Ignore further signals while stopping, so a second Ctrl-C cannot orphan the engines.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        killed = stop(process)
        print(f"stopped ({len(killed)} processes needed SIGKILL)", flush=True)
    sys.exit(process.returncode or 0)


if __name__ == "__main__":
    main()
