"""The engines yield the CPU to the gateway on a shared box (`local_stack.lower_tier_priority`)."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator

import psutil
import pytest

from serve_app import local_stack

# Sets its process title as vLLM's and Ray's processes do, then sleeps.
SLEEPER = [
    sys.executable,
    "-c",
    "import sys, time, setproctitle; setproctitle.setproctitle(sys.argv[1]); time.sleep(60)",
]


def _titled(title: str) -> subprocess.Popen[bytes]:
    """A process titled `title`, once the title is visible to other processes."""
    process = subprocess.Popen([*SLEEPER, title])
    deadline = time.monotonic() + 10
    while psutil.Process(process.pid).cmdline()[:1] != [title]:
        assert time.monotonic() < deadline, f"{title} never set its title"
        time.sleep(0.02)
    return process


@pytest.fixture
def sleepers() -> Iterator[tuple[psutil.Process, psutil.Process]]:
    tier = _titled("ray::ServeReplica:cascade:llm-small")
    gateway = _titled("ray::ServeReplica:cascade:ingress")
    yield psutil.Process(tier.pid), psutil.Process(gateway.pid)
    for process in (tier, gateway):
        process.kill()
        process.wait()


def test_tier_processes_get_the_lowest_priority_and_the_gateway_keeps_its_own(
    sleepers: tuple[psutil.Process, psutil.Process],
) -> None:
    tier, gateway = sleepers
    gateway_nice = gateway.nice()
    assert local_stack.lower_tier_priority() >= 1
    assert tier.nice() == local_stack.LOWEST_PRIORITY
    assert gateway.nice() == gateway_nice
    assert local_stack.lower_tier_priority() == 0  # already lowest: nothing to change


def test_the_keeper_also_lowers_processes_started_after_it(
    sleepers: tuple[psutil.Process, psutil.Process],
) -> None:
    stop = local_stack.keep_tiers_at_low_priority(interval_s=0.1)
    try:
        late = _titled("VLLM::EngineCore")  # an engine restarted by Serve after the keeper began
        deadline = time.monotonic() + 5
        while psutil.Process(late.pid).nice() != local_stack.LOWEST_PRIORITY:
            assert time.monotonic() < deadline, "the restarted engine kept its priority"
            time.sleep(0.1)
    finally:
        stop.set()
        late.kill()
        late.wait()


def _child_titled(parent: subprocess.Popen[bytes], title: str) -> psutil.Process:
    deadline = time.monotonic() + 10
    while True:
        for child in psutil.Process(parent.pid).children():
            if child.cmdline()[:1] == [title]:
                return child
        assert time.monotonic() < deadline, f"no child titled {title}"
        time.sleep(0.05)


def test_a_starting_replica_and_its_engine_keep_their_priority() -> None:
    # The replica's engine is its child, as vLLM's EngineCore is the LLMServer replica's.
    starting_title = f"ray::ServeReplica:cascade:llm-large{local_stack.STARTING_REPLICA_MARKER}"
    spawn_engine = (
        "import subprocess, sys, time, setproctitle;"
        f"setproctitle.setproctitle({starting_title!r});"
        f"subprocess.Popen({[*SLEEPER, 'VLLM::EngineCore']!r}); time.sleep(60)"
    )
    replica = subprocess.Popen([sys.executable, "-c", spawn_engine])
    try:
        family = [psutil.Process(replica.pid), _child_titled(replica, "VLLM::EngineCore")]
        before = [process.nice() for process in family]
        local_stack.lower_tier_priority()
        assert [process.nice() for process in family] == before
    finally:
        for child in psutil.Process(replica.pid).children():
            child.kill()
        replica.kill()
        replica.wait()


def _tier_niceness() -> dict[str, int]:
    return {title: process.info["nice"] for title, process in local_stack.tier_processes()}


def test_the_running_stack_engines_are_at_the_lowest_priority(http: object) -> None:
    niceness = _tier_niceness()
    assert any("VLLM::EngineCore" in title for title in niceness), "no engine processes found"
    assert any(":llm-small" in title for title in niceness), "no LLMServer replica found"
    deadline = time.monotonic() + 15  # the keeper runs every 5 s
    while set(niceness.values()) != {local_stack.LOWEST_PRIORITY}:
        assert time.monotonic() < deadline, f"engines above the lowest priority: {niceness}"
        time.sleep(1)
        niceness = _tier_niceness()
