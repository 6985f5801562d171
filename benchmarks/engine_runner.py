"""Engine subprocesses of the engine benchmarks, parent side: what runs, and running it.

Every engine runs in its own subprocess (`python -m benchmarks.engine_levers --child SPEC`,
see `benchmarks.engine_child`), in its own process group that is killed afterwards, so memory
is freed between configurations and no engine process outlives its run.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
CHILD_MODULE = "benchmarks.engine_levers"
"""The command line whose hidden `--child SPEC` runs one EngineRun (`engine_child.child_main`)."""

# Settings that work for vLLM's CPU build on a small CPU box (measured: docs/engine_levers.md).
ENGINE_BASE_KWARGS: dict[str, Any] = {
    "dtype": "float32",  # as configs/local.yaml: bf16 has no oneDNN matmul on AVX2 CPUs
    "enforce_eager": True,
    "max_model_len": 2048,
    "disable_log_stats": False,  # the prefix-cache and spec-decode counters need stats on
    "seed": 0,
}
ENGINE_ENV = {"VLLM_CPU_KVCACHE_SPACE": "2", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "0"}


@dataclass
class EngineRun:
    """One subprocess: an engine configuration and the tasks it runs, in order."""

    name: str
    kind: str  # "vllm" or "transformers"
    engine_kwargs: dict[str, Any] = field(default_factory=dict)
    tasks: list[dict[str, Any]] = field(default_factory=list)


def task(name: str, waves: list[list[dict]]) -> dict[str, Any]:
    """Requests of one wave are submitted together; waves run one after another."""
    return {"name": name, "waves": waves}


def run_engine_subprocess(
    run: EngineRun, log_path: Path, timeout_s: float = 3600.0
) -> dict[str, Any]:
    """Run one EngineRun in a fresh process group; kill whatever it leaves behind."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="engine-levers-") as tmp:
        spec_path, result_path = Path(tmp) / "spec.json", Path(tmp) / "result.json"
        spec_path.write_text(json.dumps({**asdict(run), "result_path": str(result_path)}))
        env = {**os.environ, **ENGINE_ENV}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", CHILD_MODULE, "--child", str(spec_path)],
                cwd=REPO_ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            try:
                returncode: int | str = process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                returncode = f"none (killed after {timeout_s:.0f} s)"
            finally:
                _kill_process_group(process.pid)
        if result_path.exists():
            return json.loads(result_path.read_text())
    tail = log_path.read_text(errors="replace")[-2000:]
    return {"error": f"engine process exited with code {returncode} and no result", "log": tail}


def _kill_process_group(pgid: int) -> None:
    """vLLM's EngineCore/Worker processes can outlive their parent process."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def measure_audit_on_engine(requests: list[dict], out: Path) -> dict[str, int]:
    """Run the audit workload on a prefix-caching engine; vLLM's hit and query token counts."""
    run = EngineRun("prefix-caching", "vllm", ENGINE_BASE_KWARGS | {"enable_prefix_caching": True})
    run.tasks.append(task("audit", [requests[:1], requests[1:]]))
    result = run_engine_subprocess(run, out.with_name(f"{out.stem}_engine.log"))
    if "error" in result:
        raise RuntimeError(f"audit engine failed: {result['error']}")
    return audit_counts(result["tasks"]["audit"])


def audit_counts(task_result: dict[str, Any]) -> dict[str, int]:
    counters = task_result["counters"]
    return {
        "hit_tokens": int(counters.get("vllm:prefix_cache_hits", 0)),
        "query_tokens": int(counters.get("vllm:prefix_cache_queries", 0)),
    }
