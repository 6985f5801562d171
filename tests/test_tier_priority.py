"""The engines yield the CPU to the gateway on a shared box (devtools/tier_priority.py)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator

import psutil
import pytest

from devtools import tier_priority
from devtools.tier_priority import LOWEST_PRIORITY, autogroup_niceness, thread_niceness

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


def _python(code: str, **popen: object) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", code], **popen)


def _kill_with_children(process: subprocess.Popen[bytes]) -> None:
    for child in psutil.Process(process.pid).children():
        child.kill()
    process.kill()
    process.wait()


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
    assert tier_priority.lower_tier_priority() >= 1
    assert tier.nice() == LOWEST_PRIORITY
    assert gateway.nice() == gateway_nice
    assert tier_priority.lower_tier_priority() == 0  # already lowest: nothing to change


def test_the_keeper_also_lowers_processes_started_after_it(
    sleepers: tuple[psutil.Process, psutil.Process],
) -> None:
    stop = tier_priority.keep_tiers_at_low_priority(interval_s=0.1)
    try:
        late = _titled("VLLM::EngineCore")  # an engine restarted by Serve after the keeper began
        deadline = time.monotonic() + 5
        while psutil.Process(late.pid).nice() != LOWEST_PRIORITY:
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
    starting_title = f"ray::ServeReplica:cascade:llm-large{tier_priority.STARTING_REPLICA_MARKER}"
    spawn_engine = (
        "import subprocess, sys, time, setproctitle;"
        f"setproctitle.setproctitle({starting_title!r});"
        f"subprocess.Popen({[*SLEEPER, 'VLLM::EngineCore']!r}); time.sleep(60)"
    )
    replica = _python(spawn_engine)
    try:
        family = [psutil.Process(replica.pid), _child_titled(replica, "VLLM::EngineCore")]
        before = [process.nice() for process in family]
        tier_priority.lower_tier_priority()
        assert [process.nice() for process in family] == before
    finally:
        _kill_with_children(replica)


def _tier_threads_niceness() -> dict[str, set[int]]:
    return {title: set(thread_niceness(p.pid)) for title, p in tier_priority.tier_processes()}


def test_every_thread_of_a_tier_process_is_lowered() -> None:
    # vLLM's engine threads exist before the keeper first sees the process.
    engine = _python(
        "import threading, time, setproctitle; setproctitle.setproctitle('VLLM::Worker');"
        "threading.Thread(target=time.sleep, args=(60,)).start(); time.sleep(60)"
    )
    try:
        deadline = time.monotonic() + 10
        while psutil.Process(engine.pid).cmdline()[:1] != ["VLLM::Worker"] or (
            psutil.Process(engine.pid).num_threads() < 2
        ):
            assert time.monotonic() < deadline, "the engine never started its thread"
            time.sleep(0.05)
        tier_priority.lower_tier_priority()
        assert set(thread_niceness(engine.pid)) == {LOWEST_PRIORITY}
    finally:
        engine.kill()
        engine.wait()


def test_a_ray_worker_like_process_group_leader_can_start_its_own_session() -> None:
    checker = _python(
        "import os; from devtools.tier_priority import start_own_session;"
        "print(start_own_session(), os.getsid(0) == os.getpid(), os.getpgid(0) == os.getpid())",
        stdout=subprocess.PIPE,
        process_group=0,  # a group leader in our session, as Ray starts its workers
    )
    out, _ = checker.communicate(timeout=30)
    assert out.split() == [b"True", b"True", b"True"]


def _own_session(title: str, child_title: str) -> subprocess.Popen[bytes]:
    """A process that starts a session of its own, as the tier's callback has the LLMServer
    replica do, takes `title`, spawns a SLEEPER titled `child_title`, and sleeps."""
    return _python(
        "import subprocess, sys, time, setproctitle;"
        "from devtools.tier_priority import start_own_session;"
        f"assert start_own_session(); setproctitle.setproctitle({title!r});"
        f"subprocess.Popen({[*SLEEPER, child_title]!r}); time.sleep(60)"
    )


def _session_members(leader: subprocess.Popen[bytes], count: int) -> list[psutil.Process]:
    deadline = time.monotonic() + 10
    while True:
        members = [psutil.Process(leader.pid), *psutil.Process(leader.pid).children()]
        if len(members) == count and all(os.getsid(m.pid) == leader.pid for m in members):
            return members
        assert time.monotonic() < deadline, "the session never formed"
        time.sleep(0.05)


@pytest.mark.skipif(autogroup_niceness(os.getpid()) is None, reason="kernel without autogroups")
def test_only_the_sessions_our_tiers_started_get_their_autogroup_lowered() -> None:
    # A tier replica of "our" stack: this test's session stands for the gateway's (the
    # replica's parent, Ray's raylet, is in it).
    tier = _own_session("ray::ServeReplica:cascade:llm-small", "VLLM::EngineCore")
    # A user's own session (a shell) that runs a process titled like an engine.
    users = _own_session("bash", "VLLM::Worker")
    other_gateway = subprocess.Popen([*SLEEPER, "serve"], start_new_session=True)
    try:
        replica, engine = _session_members(tier, 2)
        _, users_engine = _session_members(users, 2)
        ours = autogroup_niceness(os.getpid())
        # Another stack's keeper leaves our tier alone.
        tier_priority.lower_tier_priority(gateway_session=other_gateway.pid)
        assert autogroup_niceness(engine.pid) == ours
        deadline = time.monotonic() + 10
        while autogroup_niceness(engine.pid) != LOWEST_PRIORITY:
            assert time.monotonic() < deadline, "the tier's autogroup was never lowered"
            tier_priority.lower_tier_priority(gateway_session=os.getsid(0))
            time.sleep(0.2)  # unprivileged autogroup changes are rate-limited
        assert autogroup_niceness(replica.pid) == LOWEST_PRIORITY  # one session, one autogroup
        assert autogroup_niceness(users_engine.pid) == ours
        assert autogroup_niceness(os.getpid()) == ours
    finally:
        for process in (tier, users, other_gateway):
            _kill_with_children(process)


def test_the_running_stack_engines_are_at_the_lowest_priority(http: object) -> None:
    niceness = _tier_threads_niceness()
    assert any("VLLM::EngineCore" in title for title in niceness), "no engine processes found"
    assert any(":llm-small" in title for title in niceness), "no LLMServer replica found"
    deadline = time.monotonic() + 15  # the keeper runs every 5 s
    while set().union(*niceness.values()) != {LOWEST_PRIORITY}:
        assert time.monotonic() < deadline, f"engine threads above the lowest priority: {niceness}"
        time.sleep(1)
        niceness = _tier_threads_niceness()


@pytest.mark.skipif(autogroup_niceness(os.getpid()) is None, reason="kernel without autogroups")
def test_the_running_stack_engines_share_the_cpu_apart_from_the_gateway(http: object) -> None:
    (ingress,) = [
        process
        for process in psutil.process_iter(["cmdline"])
        if " ".join(process.info["cmdline"] or []).startswith("ray::ServeReplica:cascade:ingress")
    ]
    engines = [p for title, p in tier_priority.tier_processes() if "VLLM::EngineCore" in title]
    assert engines, "no engine processes found"
    for engine in engines:
        assert os.getsid(engine.pid) != os.getsid(ingress.pid)
        assert autogroup_niceness(engine.pid) == LOWEST_PRIORITY
    assert autogroup_niceness(ingress.pid) == 0
