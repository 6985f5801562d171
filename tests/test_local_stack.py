"""Stopping the local stack stops every process it started, and nothing else on the machine."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from devtools import local_stack

# A stand-in for `serve run`'s process tree, as Ray and vLLM build it: the leader (serve run)
# exits on SIGTERM, but its descendants do not. A child leads a process group of its own (as
# Ray's workers do) and ignores SIGTERM (as vLLM's engine processes did), and so does its own
# child. Each prints its pid, so the test can check on them.
_STACK = """
import os, signal, subprocess, sys, time
depth = int(sys.argv[1])
if depth > 0:
    os.setpgrp()
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
print(os.getpid(), flush=True)
if depth < 2:
    subprocess.Popen([sys.executable, "-c", sys.argv[2], str(depth + 1), sys.argv[2]])
time.sleep(600)
"""


def _alive(pid: int) -> bool:
    return pid in local_stack.session_processes(os.getsid(pid)) if _exists(pid) else False


def _exists(pid: int) -> bool:
    try:
        os.getsid(pid)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture
def outsider() -> subprocess.Popen[bytes]:
    """A process of someone else's Ray/vLLM on the same machine, titled like one."""
    process = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(600)", "ray::ServeReplica VLLM::Worker"],
        start_new_session=True,
    )
    yield process
    process.kill()
    process.wait()


def test_stop_reaps_the_whole_stack_and_spares_other_sessions(
    tmp_path: Path, outsider: subprocess.Popen[bytes]
) -> None:
    log = tmp_path / "stack.log"
    stack = local_stack.launch(
        [sys.executable, "-c", _STACK, "0", _STACK], log, env=dict(os.environ)
    )
    assert local_stack.wait_until(lambda: len(log.read_text().split()) == 3, timeout_s=60)
    pids = [int(pid) for pid in log.read_text().split()]
    assert all(os.getsid(pid) == stack.pid for pid in pids)

    killed = local_stack.stop(stack)

    assert not [pid for pid in pids if _alive(pid)]
    assert sorted(killed) == sorted(pids[1:])  # the two that ignored SIGTERM
    assert outsider.poll() is None, "stopping our stack killed another session's process"


def test_a_ray_cluster_started_by_hand_survives_a_stack_stop(tmp_path: Path) -> None:
    """`ray stop --force` would end every cluster on the machine; the stack's stop must not."""
    ray_bin = Path(sys.executable).parent / "ray"
    # Short: Ray's socket paths under it must fit a Unix socket name (107 bytes).
    temp_dir = tempfile.mkdtemp(prefix="ray-", dir="/tmp")
    other = subprocess.Popen(
        [str(ray_bin), "start", "--head", "--port=0", "--num-cpus=0", "--include-dashboard=false",
         "--disable-usage-stats", f"--temp-dir={temp_dir}", "--block"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        assert local_stack.wait_until(
            lambda: len(local_stack.session_processes(other.pid)) >= 3, timeout_s=120
        )
        cluster = local_stack.session_processes(other.pid)
        stack = local_stack.launch(
            [sys.executable, "-c", _STACK, "0", _STACK], tmp_path / "stack.log", dict(os.environ)
        )
        local_stack.stop(stack)
        assert other.poll() is None
        assert all(_alive(pid) for pid in cluster)
    finally:
        local_stack.stop(other)
        shutil.rmtree(temp_dir, ignore_errors=True)


def _replica_pids(address: str, deployment: str) -> list[int]:
    from ray.util.state import list_actors

    filters = [("state", "=", "ALIVE")]
    actors = list_actors(address=address, filters=filters, detail=True, limit=1000)
    return [a.pid for a in actors if f"#{deployment}#" in (a.name or "")]


def _thread_niceness(pid: int) -> set[int]:
    return {os.getpriority(os.PRIO_PROCESS, int(tid)) for tid in os.listdir(f"/proc/{pid}/task")}


def test_local_engines_run_below_the_gateway(cascade_url: str) -> None:
    """configs/local.yaml starts each tier's replica through `nice` (Ray's runtime_env
    py_executable): the replica and every vLLM process and thread under it run at the lowest
    CPU priority, while the ingress keeps Ray's, so the gateway is served first."""
    import psutil

    from benchmarks.faults import stack_ray_address

    address = stack_ray_address(cascade_url)
    for tier in ("llm-small", "llm-large"):
        (replica,) = _replica_pids(address, tier)
        tree = [replica, *(p.pid for p in psutil.Process(replica).children(recursive=True))]
        assert len(tree) >= 3, f"{tier}: no vLLM engine processes under the replica"
        assert {pid: _thread_niceness(pid) for pid in tree} == {pid: {19} for pid in tree}
    # Every gateway of the stack (the test stack has three, in front of the same tiers).
    ingresses = _replica_pids(address, "ingress")
    assert ingresses
    for ingress in ingresses:
        assert max(_thread_niceness(ingress)) < 19
