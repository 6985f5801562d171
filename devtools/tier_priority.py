"""The engines yield the CPU to the gateway when both share a box (the local CPU stack).

On a cluster the engines have GPU nodes of their own; on the 2-core box they share the cores
with the gateway (proxy, ingress, router, cache), and a refusal must not queue behind token
generation. Two things decide who runs first, and both are set here:

- Each thread's niceness. Linux keeps it per thread, so every thread of a tier process is
  lowered, not only the main one (vLLM's engine threads start before the keeper sees them).
- The scheduling autogroup. With `kernel.sched_autogroup_enabled=1` (the default of most
  distributions' kernels) the CPU is shared fairly between sessions first, and niceness only
  orders threads inside one session. An engine at nice 19 in the gateway's session still
  held the CPU for up to 1.4 s while a nice -15 process of another session waited (measured:
  docs/reliability.md, "Overload"). So a CPU tier's replica starts a session of its own before
  vLLM starts (`start_own_session`, called by the tier's callback), and the keeper lowers that
  session's autogroup, which its engines inherit.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import psutil

ENGINE_TITLES = ("VLLM::EngineCore", "VLLM::Worker")
LOWEST_PRIORITY = 19
# Ray titles an actor's process after the task it runs: a Serve replica is titled so for
# its whole start-up (constructor, vLLM engine start), and the engines it spawns are its
# children.
STARTING_REPLICA_MARKER = ".initialize_and_get_metadata"


def start_own_session() -> bool:
    """Move this process into a session, hence a scheduling autogroup, of its own.

    Its children (vLLM's engine processes) inherit it. A Ray worker leads its own process
    group, and a group leader may not start a session: it first joins its parent's group,
    which leaves its old group empty. Returns whether this process now leads a session.
    """
    pid = os.getpid()
    if os.getsid(0) == pid:
        return True
    led_group = os.getpgid(0) == pid
    try:
        if led_group:
            os.setpgid(0, os.getpgid(os.getppid()))
        os.setsid()
    except OSError:  # e.g. a child of ours still in the old group
        if led_group:
            with contextlib.suppress(OSError):
                os.setpgid(0, pid)
        return False
    return True


def is_tier_process(title: str) -> bool:
    """vLLM's engine and worker, or the LLMServer replica that feeds them: a Serve replica
    titled `ray::ServeReplica:<app>:llm-<tier>` (names: serve_app/tiers/deployment.py)."""
    if any(title.startswith(engine) for engine in ENGINE_TITLES):
        return True
    return title.startswith("ray::ServeReplica:") and ":llm-" in title


def tier_processes() -> Iterator[tuple[str, psutil.Process]]:
    """(title, process) of every tier process running."""
    for process in psutil.process_iter(["cmdline", "name"]):
        title = _title(process.info["cmdline"], process.info["name"])
        if is_tier_process(title):
            yield title, process


def is_starting(process: psutil.Process) -> bool:
    """Whether `process` is a replica still starting, or an engine such a replica spawned."""
    try:
        lineage = [process, *process.parents()]
        return any(STARTING_REPLICA_MARKER in " ".join(p.cmdline()) for p in lineage)
    except psutil.Error:
        return False


def thread_niceness(pid: int) -> list[int]:
    """The niceness of each thread of process `pid`."""
    return [os.getpriority(os.PRIO_PROCESS, tid) for tid in _thread_ids(pid)]


def autogroup_niceness(pid: int) -> int | None:
    """The niceness of the autogroup process `pid` is in (None without autogroups)."""
    try:
        return int(Path(f"/proc/{pid}/autogroup").read_text().split()[-1])  # "/autogroup-7 nice 0"
    except (OSError, ValueError, IndexError):
        return None


def lower_tier_priority(gateway_session: int | None = None) -> int:
    """Give every running tier process the lowest CPU priority; returns how many changed.

    All its threads go to the lowest niceness; a tier process in a session its replica
    started also gets that session's autogroup lowered (never the gateway's own). Lowering
    a priority needs no privilege. Run repeatedly: a killed replica comes back as new
    processes at Ray's default priority. A replica that is still starting is left at that
    priority until it serves: at the lowest one, its imports and engine start-up queued
    behind the surviving engine and stretched a restart under load.
    """
    changed = 0
    for _, process in tier_processes():
        if is_starting(process):
            continue
        try:
            lowered = _lower_threads(process.pid)
            if gateway_session is not None and _in_a_tier_session(process.pid, gateway_session):
                lowered = _lower_autogroup(process.pid) or lowered
        except (psutil.Error, ProcessLookupError, PermissionError):
            continue
        changed += lowered
    return changed


def keep_tiers_at_low_priority(
    gateway_session: int | None = None, interval_s: float = 5.0
) -> threading.Event:
    """Apply `lower_tier_priority` now and every `interval_s` until the returned event is set."""
    stopped = threading.Event()

    def loop() -> None:
        while not stopped.is_set():
            lower_tier_priority(gateway_session)
            stopped.wait(interval_s)

    threading.Thread(target=loop, name="tier-priority", daemon=True).start()
    return stopped


def _thread_ids(pid: int) -> list[int]:
    try:
        return [int(tid) for tid in os.listdir(f"/proc/{pid}/task")]
    except FileNotFoundError as gone:
        raise ProcessLookupError(pid) from gone


def _lower_threads(pid: int) -> bool:
    lowered = False
    for tid in _thread_ids(pid):
        try:
            if os.getpriority(os.PRIO_PROCESS, tid) < LOWEST_PRIORITY:
                os.setpriority(os.PRIO_PROCESS, tid, LOWEST_PRIORITY)
                lowered = True
        except ProcessLookupError:
            continue  # a thread that just ended
    return lowered


def _title(cmdline: list[str] | None, name: str | None) -> str:
    """A process's title as Ray and vLLM set it (their titles replace the command line)."""
    return " ".join(cmdline or [name or ""])


def _in_a_tier_session(pid: int, gateway_session: int) -> bool:
    """Whether `pid` is in a session a tier replica of this stack started for itself
    (`start_own_session`): its leader is a tier process whose parent (Ray's raylet) is in
    the gateway's session. Never the gateway's session, nor anyone else's (a user's shell
    that happens to run a process titled like an engine)."""
    leader_pid = os.getsid(pid)
    if leader_pid == gateway_session:
        return False
    leader = psutil.Process(leader_pid)
    leader_title = _title(leader.cmdline(), leader.name())
    return is_tier_process(leader_title) and os.getsid(leader.ppid()) == gateway_session


def _lower_autogroup(pid: int) -> bool:
    niceness = autogroup_niceness(pid)
    if niceness is None or niceness >= LOWEST_PRIORITY:
        return False
    try:
        Path(f"/proc/{pid}/autogroup").write_text(str(LOWEST_PRIORITY))
    except OSError:
        return False  # EAGAIN: unprivileged changes are rate-limited; the next round retries
    return True
