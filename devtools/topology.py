"""Production's topology in miniature: a Ray cluster of two nodes on this machine.

Production (cluster.yaml, deploy/rayservice.yaml) has CPU nodes for the gateway (ingress,
semantic cache, router) and GPU nodes for the tiers, and configs/production.yaml places each
deployment by the resources those node types advertise. Here the head raylet stands in for a
CPU serving node and a second raylet (`ray start --address ...`) for a GPU node: each
advertises its node type's custom resources from cluster.yaml, the GPU stand-in also the
`accelerator_type:<type>` resources Ray would detect on the real GPUs. The Serve config is
configs/local.yaml (CPU vLLM, packaged models) with production's placement copied in, so the
same rules decide where each replica runs, and the GPU stand-in can be killed and restarted.

Dev-box tooling: the product never imports it.

    python -m devtools.topology --help
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from devtools import local_stack

REPO_ROOT = Path(__file__).resolve().parent.parent
CLUSTER_YAML = REPO_ROOT / "cluster.yaml"
PRODUCTION_CONFIG = REPO_ROOT / "configs" / "production.yaml"
LOCAL_CONFIG = REPO_ROOT / "configs" / "local.yaml"
GATEWAY_NODE_TYPE = "cpu_serving"
GPU_NODE_TYPES = ("gpu_small", "gpu_large")
# The router and the cache run in the ingress (serve_app.routing.placement,
# serve_app.cache.placement): they have no deployment to place.
GATEWAY_DEPLOYMENTS = ("ingress",)
"""The `args` blocks of the builder whose deployments run on CPU serving nodes."""
# What Ray itself adds to a node with GPUs of a type (cluster.yaml adds finer labels).
DETECTED_ACCELERATORS = {"gpu_small": "A10G", "gpu_large": "A100"}
# Logical CPUs of each stand-in: what its deployments ask for, not this machine's cores.
NODE_CPUS = 4
DEFAULT_PORT = 8300


def _builder_args(serve_config: dict[str, Any]) -> dict[str, Any]:
    (app,) = [a for a in serve_config["applications"] if a["import_path"].endswith(":build_app")]
    return app["args"]


def _custom_resources(resources: dict[str, float]) -> dict[str, float]:
    return {k: v for k, v in resources.items() if k not in ("CPU", "GPU", "memory")}


def node_resources(cluster: dict[str, Any]) -> tuple[dict[str, float], dict[str, float]]:
    """Custom resources of the gateway stand-in and of the GPU stand-in (the union of the GPU
    node types, plus the accelerator types Ray detects on them), from cluster.yaml."""
    types = cluster["available_node_types"]
    gateway = _custom_resources(types[GATEWAY_NODE_TYPE].get("resources", {}))
    gpu: dict[str, float] = {}
    for name in GPU_NODE_TYPES:
        gpu.update(_custom_resources(types[name].get("resources", {})))
        gpu[f"accelerator_type:{DETECTED_ACCELERATORS[name]}"] = 8
    return gateway, gpu


def _tier_bundles(production_tier: dict[str, Any], local_tier: dict[str, Any]) -> list[dict]:
    """Local CPU bundles carrying production's custom resources and accelerator type: the
    replica's placement group can only be scheduled where production's could."""
    production_bundle = production_tier["placement_group_config"]["bundle_per_worker"]
    extra = _custom_resources(production_bundle)
    if production_tier.get("accelerator_type"):
        # Ray Serve LLM asks each bundle for this much of the accelerator type's resource.
        extra[f"accelerator_type:{production_tier['accelerator_type']}"] = 0.001
    bundles = local_tier["placement_group_config"]["bundles"]
    return [{**bundle, **extra} for bundle in bundles]


def miniature_config(
    local: dict[str, Any], production: dict[str, Any], *, port: int = DEFAULT_PORT
) -> dict[str, Any]:
    """configs/local.yaml with configs/production.yaml's placement of every deployment."""
    config = copy.deepcopy(local)
    config["http_options"] = {**config.get("http_options", {}), "port": port}
    args, production_args = _builder_args(config), _builder_args(production)
    for part in GATEWAY_DEPLOYMENTS:
        production_options = production_args[part]["deployment_config"]["ray_actor_options"]
        deployment = args.setdefault(part, {}).setdefault("deployment_config", {})
        options = deployment.setdefault("ray_actor_options", {})
        options["resources"] = dict(production_options["resources"])
    # A shard of its own, removed with the stack: the default path holds the operator's cache
    # (and `make run` may be holding it).
    args.setdefault("cache", {})["edge_path"] = None
    for name, tier in args["tiers"].items():
        tier["placement_group_config"] = {
            **tier["placement_group_config"],
            "bundles": _tier_bundles(production_args["tiers"][name], tier),
        }
    return config


def _token_auth_env() -> dict[str, str]:
    """With ~/.ray/auth_token the head requires the token, and Ray reads it by itself only for
    "auto" addresses; the worker and `serve run` name the head's address. An operator's own
    RAY_AUTH_MODE wins."""
    if "RAY_AUTH_MODE" not in os.environ and (Path.home() / ".ray" / "auth_token").exists():
        return {"RAY_AUTH_MODE": "token"}
    return {}


def _ray_cli() -> str:
    return str(Path(sys.executable).parent / "ray")


@dataclass
class TwoNodeCluster:
    """A head (gateway node stand-in) and a worker (GPU node stand-in), each `ray start
    --block` in a session of its own, so the worker can be killed like a lost machine."""

    gateway_resources: dict[str, float]
    gpu_resources: dict[str, float]
    log_dir: Path
    gcs_port: int = field(default_factory=local_stack.free_port)
    dashboard_port: int = field(default_factory=local_stack.free_port)
    temp_dir: str = field(default_factory=lambda: tempfile.mkdtemp(prefix="ray-", dir="/tmp"))
    head: subprocess.Popen[bytes] | None = None
    worker: subprocess.Popen[bytes] | None = None
    serve: subprocess.Popen[bytes] | None = None

    @property
    def dashboard_url(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    @property
    def address(self) -> str:
        return f"{socket.gethostbyname(socket.gethostname())}:{self.gcs_port}"

    def _env(self) -> dict[str, str]:
        return {
            **local_stack.GATEWAY_TUNING_ENV,
            **_token_auth_env(),
            **os.environ,
            "HF_HUB_OFFLINE": "1",
        }

    def _ray_start(self, role: list[str], resources: dict[str, float], log: str) -> Any:
        command = [
            _ray_cli(),
            "start",
            *role,
            f"--num-cpus={NODE_CPUS}",
            f"--resources={json.dumps(resources)}",
            "--disable-usage-stats",
            "--block",
        ]
        return local_stack.launch(command, self.log_dir / log, self._env())

    def start_head(self) -> None:
        role = [
            "--head",
            f"--port={self.gcs_port}",
            f"--temp-dir={self.temp_dir}",
            # The dashboard serves Ray's state API: where each replica runs.
            f"--dashboard-port={self.dashboard_port}",
        ]
        self.head = self._ray_start(role, self.gateway_resources, "head.log")

    def start_worker(self) -> None:
        self.worker = self._ray_start(
            [f"--address={self.address}"], self.gpu_resources, "worker.log"
        )

    def kill_worker(self) -> None:
        """The GPU node is lost: every process of its raylet dies at once (SIGKILL)."""
        assert self.worker is not None
        for pid in local_stack.session_processes(self.worker.pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.worker.wait()
        local_stack.stop_session(self.worker.pid)
        self.worker = None

    def serve_run(self, config_path: Path) -> None:
        self.serve = local_stack.start(
            str(config_path),
            self.log_dir / "serve_run.log",
            ray_address=self.address,
            **_token_auth_env(),
        )

    def stop(self) -> None:
        local_stack.stop(self.serve)
        for process in (self.worker, self.head):
            if process is not None:
                local_stack.stop(process)


def write_miniature_config(path: Path, port: int = DEFAULT_PORT) -> Path:
    local = yaml.safe_load(LOCAL_CONFIG.read_text())
    production = yaml.safe_load(PRODUCTION_CONFIG.read_text())
    path.write_text(yaml.safe_dump(miniature_config(local, production, port=port)))
    return path


def start_miniature(log_dir: Path, port: int = DEFAULT_PORT) -> TwoNodeCluster:
    """Start both nodes and the cascade on them; returns once both tiers answer."""
    gateway, gpu = node_resources(yaml.safe_load(CLUSTER_YAML.read_text()))
    cluster = TwoNodeCluster(gateway, gpu, log_dir)
    try:
        cluster.start_head()
        cluster.start_worker()
        cluster.serve_run(write_miniature_config(log_dir / "miniature.yaml", port))
        assert cluster.serve is not None
        url = f"http://127.0.0.1:{port}"
        local_stack.wait_ready(cluster.serve, url, ["cascade-small", "cascade-large"], 900)
    except BaseException:
        cluster.stop()
        raise
    return cluster


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--log-dir", default="topology-logs", help="raylet and serve run logs")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="HTTP port of the proxy")
    args = parser.parse_args(argv)
    log_dir = Path(args.log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    # Ctrl-C or `kill` while starting or serving stops every process of both nodes.
    signal.signal(signal.SIGINT, local_stack.interrupt)
    signal.signal(signal.SIGTERM, local_stack.interrupt)
    started = time.monotonic()
    cluster = start_miniature(log_dir, args.port)
    print(
        f"two nodes up after {time.monotonic() - started:.0f} s: GCS {cluster.address}, "
        f"OpenAI API on http://127.0.0.1:{args.port}/v1 (Ctrl-C stops)",
        flush=True,
    )
    try:
        assert cluster.serve is not None
        cluster.serve.wait()
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        cluster.stop()


if __name__ == "__main__":
    main()
