"""The processes of the gateway comparison, each pinned to its core, and their CPU time.

- The fake backend (benchmarks/gateway_fake_backend.py) on the backend core.
- Ours: a Ray head of its own (`ray start --head --block` under `taskset`, in a session of its
  own, no dashboard), so the GCS, the raylet and every actor it starts (Serve's controller and
  proxy, the ingress, cache and router replicas) inherit the gateway core; `serve run` deploys
  the cascade onto it with FakeLLMServer as both tiers, whose replicas move themselves to the
  backend core.
- LiteLLM's proxy: `litellm --num_workers 1` from its own venv (`make litellm-venv`) under the
  same `taskset`, forwarding to the fake backend.

Each is stopped by its session (devtools.local_stack), so nothing outlives the run and no other
Ray cluster or server on the machine is touched.
"""

from __future__ import annotations

import copy
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil
import yaml

from benchmarks.faults import use_ray_token_auth_if_configured
from benchmarks.gateway_fake_backend import Pace
from devtools import local_stack

REPO_ROOT = Path(__file__).resolve().parent.parent
LOCAL_CONFIG = REPO_ROOT / "configs" / "local.yaml"
LITELLM_VENV = REPO_ROOT / ".venv-litellm"
LITELLM_MODEL = "fake-backend"
# LiteLLM's proxy refuses to start without a master key (1.108); it is its benchmark set-up's.
LITELLM_MASTER_KEY = "sk-gateway-bench-0123456789abcdef"
APP_NAME = "gateway-bench"
FAKE_TIER_MARKERS = ("llm-small", "llm-large")
STARTUP_TIMEOUT_S = 300.0


def pinned(cpus: tuple[int, ...], command: list[str]) -> list[str]:
    return ["taskset", "-c", ",".join(map(str, cpus)), *command]


# ---- CPU time ------------------------------------------------------------------------------


def core_busy_s(core: int) -> float:
    """Seconds core `core` has spent not idle since boot (/proc/stat), not counting niced
    processes: both gateways run at priority 0 (Ray's workers too, see `start_ours`), and a
    niced batch job elsewhere on the machine only takes the time they leave."""
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith(f"cpu{core} "):
            user, _nice, system, _idle, _iowait, irq, softirq, steal = map(int, line.split()[1:9])
            return (user + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")
    raise ValueError(f"no core {core} in /proc/stat")


def processes_cpu_s(pids: list[int]) -> dict[int, tuple[str, float]]:
    """Each live process's title (Ray's `ray::ServeReplica:...` names the replica) and its
    user + system seconds."""
    seconds = {}
    for pid in pids:
        try:
            process = psutil.Process(pid)
            times = process.cpu_times()
            title = (process.cmdline() or [process.name()])[0]
        except psutil.Error:
            continue
        seconds[pid] = (title, times.user + times.system)
    return seconds


@dataclass
class CpuMeter:
    """CPU seconds of a gateway over one run: its core's busy time, and its processes' own."""

    core: int
    pids: list[int]
    _core_s: float = 0.0
    _processes_s: dict[int, tuple[str, float]] = field(default_factory=dict)

    def start(self) -> None:
        self._core_s = core_busy_s(self.core)
        self._processes_s = processes_cpu_s(self.pids)

    def stop(self) -> dict[str, Any]:
        """Core busy seconds, the processes' seconds, and those seconds by process title."""
        by_title: dict[str, float] = {}
        for pid, (title, seconds) in processes_cpu_s(self.pids).items():
            used = seconds - self._processes_s.get(pid, (title, 0.0))[1]
            by_title[title] = by_title.get(title, 0.0) + used
        return {
            "core_busy_s": core_busy_s(self.core) - self._core_s,
            "processes_s": sum(by_title.values()),
            "by_process_s": {t: round(s, 3) for t, s in sorted(by_title.items()) if s > 0},
        }


# ---- the three servers ---------------------------------------------------------------------


@dataclass
class Stacks:
    """Every process of one comparison; `stop()` ends them all."""

    gateway_cpus: tuple[int, ...]
    backend_cpus: tuple[int, ...]
    pace: Pace
    log_dir: Path
    backend: subprocess.Popen[bytes] | None = None
    ray_head: subprocess.Popen[bytes] | None = None
    serve: subprocess.Popen[bytes] | None = None
    litellm: subprocess.Popen[bytes] | None = None
    ports: dict[str, int] = field(default_factory=dict)
    ray_temp_dir: str | None = None

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.ports[name]}"

    def _env(self) -> dict[str, str]:
        use_ray_token_auth_if_configured()
        return {**local_stack.GATEWAY_TUNING_ENV, **os.environ, "HF_HUB_OFFLINE": "1"}

    def start_backend(self) -> None:
        self.ports["backend"] = local_stack.free_port()
        command = [
            sys.executable, "-m", "benchmarks.gateway_fake_backend",
            "--port", str(self.ports["backend"]),
            "--first-token-ms", str(1000 * self.pace.first_token_s),
            "--token-interval-ms", str(1000 * self.pace.token_interval_s),
            "--max-tokens", str(self.pace.max_tokens),
        ]  # fmt: skip
        self.backend = local_stack.launch(
            pinned(self.backend_cpus, command), self.log_dir / "backend.log", self._env()
        )
        local_stack.wait_http_ok(self.backend, f"{self.url('backend')}/health", 60)

    def start_ours(self) -> None:
        """A Ray head pinned to the gateway core, then `serve run` of the cascade onto it."""
        gcs_port, dashboard_port, self.ports["ours"] = (local_stack.free_port() for _ in range(3))
        # Short (Ray's socket paths must be), so not under log_dir; removed by `stop`.
        self.ray_temp_dir = temp_dir = tempfile.mkdtemp(prefix="ray-", dir="/tmp")
        ray_cli = str(Path(sys.executable).parent / "ray")
        head = [
            ray_cli, "start", "--head", "--node-ip-address=127.0.0.1", f"--port={gcs_port}",
            f"--temp-dir={temp_dir}", "--num-cpus=4", "--include-dashboard=false",
            f"--dashboard-port={dashboard_port}",
            "--disable-usage-stats", "--block",
        ]  # fmt: skip
        # Ray starts its workers at niceness 15 by default; LiteLLM runs at 0. At 15 a niced
        # batch job on the machine would take a third of the core from our replicas alone.
        env = {**self._env(), "RAY_worker_niceness": "0"}
        self.ray_head = local_stack.launch(
            pinned(self.gateway_cpus, head), self.log_dir / "ray_head.log", env
        )
        config_path = self.log_dir / "gateway_bench.yaml"
        config_path.write_text(yaml.safe_dump(self.serve_config(), sort_keys=False))
        self.serve = local_stack.start(
            str(config_path), self.log_dir / "serve_run.log", ray_address=f"127.0.0.1:{gcs_port}"
        )
        local_stack.wait_ready(
            self.serve, self.url("ours"), ["cascade-small", "cascade-large"], STARTUP_TIMEOUT_S
        )

    def serve_config(self) -> dict[str, Any]:
        """configs/local.yaml's cascade, as shipped, with a fresh cache shard and the fakes."""
        local = yaml.safe_load(LOCAL_CONFIG.read_text())
        (app,) = local["applications"]
        cascade = copy.deepcopy(app["args"])
        cascade.setdefault("cache", {})["edge_path"] = str(self.log_dir / "cache-shard")
        return {
            "proxy_location": "HeadOnly",
            "http_options": {"host": "127.0.0.1", "port": self.ports["ours"]},
            "applications": [
                {
                    "name": APP_NAME,
                    "route_prefix": "/",
                    "import_path": "benchmarks.gateway_fake_backend:build_app",
                    "args": {
                        "cascade": cascade,
                        "pace": asdict(self.pace),
                        "backend_cpus": list(self.backend_cpus),
                    },
                }
            ],
        }

    def start_litellm(self, api_base: str | None = None, model: str = "openai/fake") -> None:
        """LiteLLM's proxy in front of `api_base` (default: the fake backend)."""
        litellm_cli = LITELLM_VENV / "bin" / "litellm"
        if not litellm_cli.exists():
            raise RuntimeError(f"{litellm_cli} is missing: run `make litellm-venv` first")
        self.ports["litellm"] = local_stack.free_port()
        config_path = self.log_dir / "litellm.yaml"
        config = self.litellm_config(api_base or f"{self.url('backend')}/v1", model)
        config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        command = [
            str(litellm_cli), "--config", str(config_path), "--host", "127.0.0.1",
            "--port", str(self.ports["litellm"]), "--num_workers", "1",
        ]  # fmt: skip
        env = {
            **os.environ,
            # The model price map ships in the package; do not fetch it (no network here).
            "LITELLM_LOCAL_MODEL_COST_MAP": "True",
            "LITELLM_LOG": "ERROR",
        }
        self.litellm = local_stack.launch(
            pinned(self.gateway_cpus, command), self.log_dir / "litellm.log", env
        )
        local_stack.wait_http_ok(
            self.litellm, f"{self.url('litellm')}/health/liveliness", STARTUP_TIMEOUT_S
        )

    def litellm_config(self, api_base: str, model: str) -> dict[str, Any]:
        """LiteLLM's benchmark set-up (docs.litellm.ai/docs/benchmarks): one OpenAI-compatible
        deployment, no callbacks, no retries, a master key (it refuses to start without one),
        no database."""
        return {
            "model_list": [
                {
                    "model_name": LITELLM_MODEL,
                    "litellm_params": {
                        "model": model,
                        "api_base": api_base,
                        "api_key": "fake-key",
                    },
                }
            ],
            "litellm_settings": {"callbacks": [], "num_retries": 0, "request_timeout": 30},
            "general_settings": {"master_key": LITELLM_MASTER_KEY},
        }

    def gateway_pids(self, name: str) -> list[int]:
        """The processes that make up a gateway: LiteLLM's session; our Ray head's session
        without the fake tiers' replicas (those are the backend)."""
        if name == "litellm":
            assert self.litellm is not None
            return local_stack.session_processes(self.litellm.pid)
        assert self.ray_head is not None
        pids = []
        for pid in local_stack.session_processes(self.ray_head.pid):
            try:
                cmdline = " ".join(psutil.Process(pid).cmdline())
            except psutil.Error:
                continue
            if not any(marker in cmdline for marker in FAKE_TIER_MARKERS):
                pids.append(pid)
        return pids

    def stop(self) -> None:
        for process in (self.serve, self.ray_head, self.litellm, self.backend):
            local_stack.stop(process)
        if self.ray_temp_dir is not None:
            shutil.rmtree(self.ray_temp_dir, ignore_errors=True)
