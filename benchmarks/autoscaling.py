"""Autoscaling, seen: Serve adds a small-tier replica under load and removes it when load drops.

The profile is configs/local.yaml with the small tier autoscaled between 1 and 2 replicas on
ongoing requests: production's `autoscaling_config` fields, with delays of seconds instead of
minutes (`autoscaling_profile`). The benchmark starts that stack (unless `--url` names one
already running it), then:
1. `--clients` closed-loop clients send pinned `cascade-small` requests, cache bypassed, so
   every request reaches the engine, until Serve reports 2 replicas RUNNING; the load goes on
   for `--hold-s` more;
2. the load drops to `--idle-clients` (1: a trickle below the target, so requests keep
   meeting the tier while Serve drains and removes the replica; 0: no traffic at all) until
   Serve is back to 1 replica, plus `--tail-s`.
The replica count is read from `serve.status()` every `--poll-s`. It reports the time to scale
up and down and, for the requests overlapping each transition (Serve starting the second
replica, then stopping it), how many were answered, refused with an OpenAI error, or lost.
0 lost is the expectation. One table on stdout, the figures in JSON (`--out`), a PNG of
replicas and requests over time (`--png`).

    python -m benchmarks.autoscaling                                    # start, run, stop
    python -m benchmarks.autoscaling --url http://127.0.0.1:8000        # a running profile
    python -m benchmarks.autoscaling --write-profile local-autoscaling.yaml   # for serve run
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import yaml

from benchmarks.faults import APP_NAME, connect_to_stack, stack_memory_mb
from benchmarks.loadgen import (
    Outcome,
    request_outcome,
    routed_question,
    separate_clients,
    summarize,
)
from devtools import local_stack
from serve_app.config import tier_deployment_name

LOCAL_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "local.yaml"
SMALL_TIER_MODEL = "cascade-small"
SMALL_TIER_DEPLOYMENT = tier_deployment_name("small")
SMALL_TIER_AUTOSCALING: dict[str, Any] = {
    "min_replicas": 1,
    "max_replicas": 2,
    # Serve's default. Serve wants (ongoing requests ÷ target) replicas, the requests averaged
    # over its 30 s look-back: 8 clients ask for 4 (capped at 2), 1 idle client for 1.
    "target_ongoing_requests": 2,
    # Production waits 60 s / 300 s; seconds here, so a run takes minutes, not a quarter hour.
    "upscale_delay_s": 5,
    "downscale_delay_s": 20,
}
STATUS_CALL_TIMEOUT_S = 15.0
PROGRESS_EVERY_S = 5.0
RETRY_PAUSE_S = 1.0


# ---- the profile -----------------------------------------------------------------------------


def _share_cpus(resources: dict[str, Any], replicas: int) -> dict[str, Any]:
    if "CPU" not in resources:
        return dict(resources)
    return {**resources, "CPU": resources["CPU"] / replicas}


def autoscaling_profile(serve_config: dict[str, Any]) -> dict[str, Any]:
    """configs/local.yaml's Serve config with the small tier autoscaled (1 to 2 replicas).

    The tier's CPU reservation (placement bundle + replica actor, 0.5 + 0.25 locally) is split
    between its `max_replicas` replicas: local.yaml's deployments reserve 1.8 of the box's 2
    CPUs, so a second replica reserving 0.75 more would wait forever for resources. These are
    Ray's scheduling units, not cores: each replica's processes still get OMP_NUM_THREADS=1
    and share the same 2 cores either way.
    """
    profile = copy.deepcopy(serve_config)
    (app,) = profile["applications"]
    small = app["args"]["tiers"]["small"]
    replicas = SMALL_TIER_AUTOSCALING["max_replicas"]
    # New dicts, never edits: the YAML anchors make both tiers share these mappings.
    deployment = {k: v for k, v in small["deployment_config"].items() if k != "num_replicas"}
    deployment["autoscaling_config"] = dict(SMALL_TIER_AUTOSCALING)
    actor_options = deployment.get("ray_actor_options", {})
    deployment["ray_actor_options"] = {
        **actor_options,
        # LLMServer reserves 1 CPU for its replica actor when num_cpus is unset.
        "num_cpus": actor_options.get("num_cpus", 1) / replicas,
    }
    small["deployment_config"] = deployment
    placement = small.get("placement_group_config")
    if placement and "bundles" in placement:
        small["placement_group_config"] = {
            **placement,
            "bundles": [_share_cpus(bundle, replicas) for bundle in placement["bundles"]],
        }
    return profile


def write_profile(path: Path, local_config: Path = LOCAL_CONFIG) -> Path:
    profile = autoscaling_profile(yaml.safe_load(local_config.read_text()))
    path.write_text(
        f"# Generated by `python -m benchmarks.autoscaling` from {local_config.name}; only\n"
        "# the small tier differs: autoscaled 1-2 replicas, its CPU reservation split in two.\n"
        + yaml.safe_dump(profile, sort_keys=False)
    )
    return path


# ---- the replica count -----------------------------------------------------------------------


@dataclass(frozen=True)
class ReplicaSample:
    t_s: float
    running: int
    total: int
    """Every replica Serve tracks, in any state (STARTING, RUNNING, STOPPING, ...)."""
    states: dict[str, int]
    status: str
    in_flight: int
    answered: int


def _name(value: Any) -> str:
    return str(getattr(value, "value", value))  # Serve's str enums, or their values


def read_replica_states(deployment: str = SMALL_TIER_DEPLOYMENT) -> tuple[dict[str, int], str]:
    """(replicas by state, deployment status) from `serve.status()`; needs `ray.init` first."""
    from ray import serve

    overview = serve.status().applications[APP_NAME].deployments[deployment]
    states = {_name(state): count for state, count in overview.replica_states.items()}
    return states, _name(overview.status)


class ReplicaWatch:
    """Polls the small tier's replica count into `samples`, each call bounded in time."""

    def __init__(self, load: ClosedLoop, poll_s: float) -> None:
        self.load = load
        self.poll_s = poll_s
        self.samples: list[ReplicaSample] = []
        # serve.status() blocks on the controller without a timeout of its own.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="serve-status")

    def sample(self) -> ReplicaSample:
        future = self._executor.submit(read_replica_states)
        try:
            states, status = future.result(timeout=STATUS_CALL_TIMEOUT_S)
        except FutureTimeout as error:
            raise TimeoutError(f"serve.status() took over {STATUS_CALL_TIMEOUT_S:.0f} s") from error
        answered = sum(o.ok for o in self.load.outcomes)
        sample = ReplicaSample(
            self.load.clock_s(),
            states.get("RUNNING", 0),
            sum(states.values()),
            states,
            status,
            self.load.in_flight,
            answered,
        )
        self.samples.append(sample)
        return sample

    def wait_for(
        self, condition: Callable[[ReplicaSample], bool], timeout_s: float, label: str
    ) -> ReplicaSample | None:
        """The first sample meeting `condition`; None past `timeout_s`. Prints progress."""
        started = time.monotonic()
        last_print = -PROGRESS_EVERY_S
        while True:
            sample = self.sample()
            if condition(sample):
                print(f"  {label}: done after {time.monotonic() - started:.0f} s", flush=True)
                return sample
            elapsed = time.monotonic() - started
            if elapsed > timeout_s:
                print(f"  {label}: not reached after {timeout_s:.0f} s", flush=True)
                return None
            if elapsed - last_print >= PROGRESS_EVERY_S:
                last_print = elapsed
                print(f"  {label}: {elapsed:4.0f} s  {progress(sample, self.load)}", flush=True)
            time.sleep(self.poll_s)

    def keep_sampling(self, duration_s: float) -> None:
        deadline = time.monotonic() + duration_s
        while time.monotonic() < deadline:
            self.sample()
            time.sleep(min(self.poll_s, max(0.0, deadline - time.monotonic())))

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


def progress(sample: ReplicaSample, load: ClosedLoop) -> str:
    states = " ".join(f"{state} {count}" for state, count in sorted(sample.states.items()))
    failed = sum(not o.ok for o in load.outcomes)
    return (
        f"{SMALL_TIER_DEPLOYMENT}: {states or 'no replicas'} ({sample.status}); "
        f"clients {load.active}, in flight {sample.in_flight}, answered {sample.answered}, "
        f"not answered {failed}"
    )


# ---- the load --------------------------------------------------------------------------------


def small_tier_request(index: int, max_tokens: int) -> dict[str, Any]:
    """A unique chat request pinned to the small tier, past the cache: it reaches the engine."""
    return {
        **routed_question(index, max_tokens=max_tokens),
        "model": SMALL_TIER_MODEL,
        "cache": False,
    }


class ClosedLoop:
    """Up to `clients` closed-loop clients in a thread of their own; `active` of them send.

    Clients past `active` wait; changing it while the load runs moves from busy to idle.
    """

    def __init__(
        self, base_url: str, clients: int, *, max_tokens: int, request_timeout_s: float
    ) -> None:
        self.base_url = base_url
        self.clients = clients
        self.max_tokens = max_tokens
        self.request_timeout_s = request_timeout_s
        self.active = 0
        self.in_flight = 0
        self.outcomes: list[Outcome] = []
        self._t0 = time.perf_counter()
        self._stop = threading.Event()
        self._counter = itertools.count()
        self._thread = threading.Thread(target=self._run, name="autoscaling-load", daemon=True)

    def clock_s(self) -> float:
        """Seconds on the clock every outcome and sample is timed with."""
        return time.perf_counter() - self._t0

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout_s: float) -> bool:
        """Stop sending; True once every client's last request has ended (within `timeout_s`)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=timeout_s)
        return not self._thread.is_alive()

    def _run(self) -> None:
        asyncio.run(self._clients())

    async def _clients(self) -> None:
        clients = separate_clients(self.base_url, self.clients, timeout_s=self.request_timeout_s)
        try:
            await asyncio.gather(*(self._send(i, c) for i, c in enumerate(clients)))
        finally:
            await asyncio.gather(*(client.aclose() for client in clients))

    async def _send(self, index: int, client: httpx.AsyncClient) -> None:
        while not self._stop.is_set():
            if index >= self.active:
                await asyncio.sleep(0.1)
                continue
            body = small_tier_request(next(self._counter), self.max_tokens)
            self.in_flight += 1
            try:
                outcome = await request_outcome(client, body, {}, self._t0)
            finally:
                self.in_flight -= 1
            self.outcomes.append(outcome)
            if not outcome.ok:
                await asyncio.sleep(RETRY_PAUSE_S)  # no hot loop against a failing stack


# ---- the figures -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Window:
    start_s: float
    end_s: float


@dataclass
class Timeline:
    samples: list[ReplicaSample]
    load_started_s: float
    idle_started_s: float | None = None
    stopped_s: float | None = None
    memory_mb: dict[str, dict[str, float]] = field(default_factory=dict)


def _first(
    samples: list[ReplicaSample],
    after_s: float | None,
    condition: Callable[[ReplicaSample], bool],
) -> ReplicaSample | None:
    if after_s is None:
        return None
    return next((s for s in samples if s.t_s >= after_s and condition(s)), None)


def _window(
    samples: list[ReplicaSample],
    after_s: float | None,
    began: Callable[[ReplicaSample], bool],
    done: Callable[[ReplicaSample], bool],
) -> Window | None:
    """From the last poll before `began` was first seen (the change happened after it) to the
    first poll where `done` holds; None if either never happened."""
    if after_s is None:
        return None
    later = [s for s in samples if s.t_s >= after_s]
    first = next((i for i, s in enumerate(later) if began(s)), None)
    if first is None:
        return None
    end = next((s for s in later[first:] if done(s)), None)
    if end is None:
        return None
    start_s = later[first - 1].t_s if first > 0 else after_s
    return Window(start_s, end.t_s)


def scale_up_window(timeline: Timeline) -> Window | None:
    """Serve starting the second replica: from its first sight (any state) to it RUNNING."""
    return _window(
        timeline.samples,
        timeline.load_started_s,
        began=lambda s: s.total >= 2,
        done=lambda s: s.running >= 2,
    )


def scale_down_window(timeline: Timeline) -> Window | None:
    """Serve removing the replica: from it leaving RUNNING to it gone (drained and stopped)."""
    return _window(
        timeline.samples,
        timeline.idle_started_s,
        began=lambda s: s.running <= 1,
        done=lambda s: s.total <= 1,
    )


def window_counts(outcomes: list[Outcome], window: Window | None) -> dict[str, Any] | None:
    """Requests in flight at any moment of the window, by how they ended."""
    if window is None:
        return None
    overlapping = [
        o
        for o in outcomes
        if o.started_s < window.end_s and o.started_s + o.latency_s > window.start_s
    ]
    return {
        "from_s": round(window.start_s, 1),
        "to_s": round(window.end_s, 1),
        "requests": len(overlapping),
        "answered": sum(o.ok for o in overlapping),
        "failed": sum(o.well_formed and not o.ok for o in overlapping),
        "lost": sum(not o.well_formed for o in overlapping),
    }


def _since(sample: ReplicaSample | None, start_s: float | None) -> float | None:
    if sample is None or start_s is None:
        return None
    return round(sample.t_s - start_s, 1)


def autoscaling_report(timeline: Timeline, outcomes: list[Outcome]) -> dict[str, Any]:
    samples, up_from, down_from = timeline.samples, timeline.load_started_s, timeline.idle_started_s
    overall = summarize(outcomes)
    return {
        # Timings are at poll resolution: the change happened within one poll before.
        "scale_up_s": _since(_first(samples, up_from, lambda s: s.running >= 2), up_from),
        "scale_up_decided_s": _since(_first(samples, up_from, lambda s: s.total >= 2), up_from),
        "scale_down_s": _since(_first(samples, down_from, lambda s: s.running <= 1), down_from),
        "scale_down_removed_s": _since(
            _first(samples, down_from, lambda s: s.total <= 1), down_from
        ),
        "max_replicas_running": max((s.running for s in samples), default=0),
        "during_scale_up": window_counts(outcomes, scale_up_window(timeline)),
        "during_scale_down": window_counts(outcomes, scale_down_window(timeline)),
        "whole_run": {
            "requests": overall["requests"],
            "answered": sum(o.ok for o in outcomes),
            "failed": sum(o.well_formed and not o.ok for o in outcomes),
            "lost": sum(not o.well_formed for o in outcomes),
            "classes": overall["classes"],
            "latency_ms": overall["latency_ms"],
        },
        "stack_memory_mb": timeline.memory_mb,
    }


def passed(report: dict[str, Any]) -> bool:
    """Scaled up and back down, and no request lost."""
    return (
        report["scale_up_s"] is not None
        and report["scale_down_removed_s"] is not None
        and report["whole_run"]["lost"] == 0
    )


def _seconds(value: float | None) -> str:
    return "never" if value is None else f"{value:.1f}"


def table(report: dict[str, Any]) -> str:
    """Time to scale and what the requests overlapping each transition got, in one table."""
    columns = ("requests", "answered", "failed", "lost")

    def row(name: str, seconds: str, counts: dict[str, Any] | None) -> str:
        cells = [str(counts[column]) for column in columns] if counts else ["-"] * len(columns)
        return f"{name:<36} {seconds:>8} " + " ".join(f"{cell:>9}" for cell in cells)

    return "\n".join(
        [
            f"{'':<36} {'seconds':>8} " + " ".join(f"{column:>9}" for column in columns),
            row(
                "scale up (load start -> 2 RUNNING)",
                _seconds(report["scale_up_s"]),
                report["during_scale_up"],
            ),
            row(
                "scale down (load drop -> 1 RUNNING)",
                _seconds(report["scale_down_s"]),
                report["during_scale_down"],
            ),
            row("whole run", "", report["whole_run"]),
            f"Serve started the 2nd replica {_seconds(report['scale_up_decided_s'])} s after the "
            f"load started; it was gone {_seconds(report['scale_down_removed_s'])} s after the "
            "load dropped.",
            "Requests: those in flight at any moment of a transition (Serve starting the 2nd "
            "replica until it ran;",
            "it leaving RUNNING until it was gone).",
        ]
    )


def answered_per_s(outcomes: list[Outcome], bin_s: float = 5.0) -> list[dict[str, float]]:
    """Answers completed per second, in bins of `bin_s` by completion time."""
    ends = [o.started_s + o.latency_s for o in outcomes if o.ok]
    if not ends:
        return []
    counts: dict[int, int] = {}
    for end in ends:
        counts[int(end // bin_s)] = counts.get(int(end // bin_s), 0) + 1
    return [
        {"t_s": index * bin_s, "answered_per_s": counts.get(index, 0) / bin_s}
        for index in range(max(counts) + 1)
    ]


def plot(timeline: Timeline, outcomes: list[Outcome], report: dict[str, Any], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    samples = timeline.samples
    t = [s.t_s for s in samples]
    fig, (replica_ax, load_ax) = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    replica_ax.step(t, [s.running for s in samples], where="post", label="RUNNING")
    replica_ax.step(t, [s.total for s in samples], where="post", linestyle="--", label="any state")
    replica_ax.set_ylabel(f"{SMALL_TIER_DEPLOYMENT} replicas")
    replica_ax.set_yticks([0, 1, 2])
    replica_ax.legend(loc="upper right")
    load_ax.plot(t, [s.in_flight for s in samples], label="requests in flight")
    rates = answered_per_s(outcomes)
    load_ax.step(
        [r["t_s"] for r in rates],
        [r["answered_per_s"] for r in rates],
        where="post",
        label="answered / s (5 s bins)",
    )
    load_ax.set_ylabel("requests")
    load_ax.set_xlabel("time (s); dotted: load start, load drop, load stop")
    load_ax.legend(loc="upper right")
    for key, colour in (("during_scale_up", "tab:green"), ("during_scale_down", "tab:orange")):
        window = report[key]
        if window is not None:
            for ax in (replica_ax, load_ax):
                ax.axvspan(window["from_s"], window["to_s"], color=colour, alpha=0.2)
    for moment in (timeline.load_started_s, timeline.idle_started_s, timeline.stopped_s):
        if moment is not None:
            for ax in (replica_ax, load_ax):
                ax.axvline(moment, color="grey", linewidth=0.8, linestyle=":")
    lost = report["whole_run"]["lost"]
    fig.suptitle(
        f"{SMALL_TIER_DEPLOYMENT} autoscaling: up in {report['scale_up_s']} s, "
        f"down in {report['scale_down_s']} s, {lost} lost (shaded: transitions)"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# ---- the run ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunOptions:
    clients: int = 8
    idle_clients: int = 1
    max_tokens: int = 32
    hold_s: float = 20.0
    tail_s: float = 10.0
    poll_s: float = 1.0
    settle_timeout_s: float = 300.0
    scale_up_timeout_s: float = 600.0
    scale_down_timeout_s: float = 300.0
    request_timeout_s: float = 180.0


def _one_replica(sample: ReplicaSample) -> bool:
    return sample.total == 1 and sample.running == 1


def run_benchmark(base_url: str, options: RunOptions) -> tuple[Timeline, list[Outcome]]:
    """Busy until 2 replicas RUNNING (+ hold), idle until 1 again (+ tail); every wait bounded."""
    connect_to_stack(base_url)
    load = ClosedLoop(
        base_url,
        max(options.clients, options.idle_clients),
        max_tokens=options.max_tokens,
        request_timeout_s=options.request_timeout_s,
    )
    watch = ReplicaWatch(load, options.poll_s)
    try:
        if watch.wait_for(_one_replica, options.settle_timeout_s, "settle at 1 replica") is None:
            raise TimeoutError(f"{SMALL_TIER_DEPLOYMENT} did not settle at 1 replica")
        timeline = Timeline(watch.samples, load_started_s=load.clock_s())
        timeline.memory_mb["one_replica"] = stack_memory_mb()
        load.active = options.clients
        load.start()
        print(f"busy: {options.clients} clients on {SMALL_TIER_MODEL}", flush=True)
        up = watch.wait_for(lambda s: s.running >= 2, options.scale_up_timeout_s, "scale up")
        if up is not None:
            timeline.memory_mb["two_replicas"] = stack_memory_mb()
            watch.keep_sampling(options.hold_s)
            load.active = options.idle_clients
            timeline.idle_started_s = load.clock_s()
            print(f"idle: {options.idle_clients} clients", flush=True)
            watch.wait_for(_one_replica, options.scale_down_timeout_s, "scale down")
            watch.keep_sampling(options.tail_s)
        timeline.stopped_s = load.clock_s()
        if not load.stop(timeout_s=options.request_timeout_s + 10):
            print("warning: the load's last requests had not ended", flush=True)
    finally:
        load.stop(timeout_s=5)  # on an error or Ctrl-C: the stack is about to go anyway
        watch.close()
    return timeline, list(load.outcomes)


def _port_in_use(base_url: str) -> bool:
    parts = urlsplit(base_url)
    with socket.socket() as probe:
        probe.settimeout(1.0)
        return probe.connect_ex((parts.hostname or "127.0.0.1", parts.port or 80)) == 0


def _interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def start_profile_stack(workdir: Path, ready_timeout_s: float) -> subprocess.Popen[bytes]:
    """`serve run` the profile in its own session; returns the process once both tiers answer."""
    if _port_in_use(local_stack.DEFAULT_URL):
        raise SystemExit(
            f"{local_stack.DEFAULT_URL} is already served (another stack?): stop it, or pass "
            "--url to measure a stack that runs the autoscaling profile"
        )
    # The tiers start through `nice -n 19 python`: the venv's python must come first on PATH,
    # as `make run` arranges.
    venv_bin = str(Path(sys.executable).parent)
    if os.environ.get("PATH", "").split(os.pathsep)[0] != venv_bin:
        os.environ["PATH"] = venv_bin + os.pathsep + os.environ.get("PATH", "")
    config = write_profile(workdir / "local-autoscaling.yaml")
    log_path = workdir / "serve_run.log"
    process = local_stack.start(str(config), log_path)
    print(f"starting the autoscaling profile ({config}); log: {log_path}", flush=True)
    try:
        seconds = local_stack.wait_ready(
            process, local_stack.DEFAULT_URL, ["cascade-small", "cascade-large"], ready_timeout_s
        )
    except (RuntimeError, TimeoutError):
        local_stack.stop(process)
        print(log_path.read_text(errors="replace")[-5000:])
        raise
    print(f"ready after {seconds:.0f} s", flush=True)
    return process


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--url", help="a stack already running the autoscaling profile (default: start one)"
    )
    parser.add_argument("--write-profile", metavar="PATH", help="write the profile and exit")
    parser.add_argument("--clients", type=int, default=RunOptions.clients, help="busy load")
    parser.add_argument(
        "--idle-clients", type=int, default=RunOptions.idle_clients, help="load while idle"
    )
    parser.add_argument("--max-tokens", type=int, default=RunOptions.max_tokens)
    parser.add_argument(
        "--hold-s", type=float, default=RunOptions.hold_s, help="busy load kept after scale-up"
    )
    parser.add_argument(
        "--tail-s", type=float, default=RunOptions.tail_s, help="idle load kept after scale-down"
    )
    parser.add_argument("--poll-s", type=float, default=RunOptions.poll_s)
    parser.add_argument("--ready-timeout-s", type=float, default=900.0, help="stack start-up")
    parser.add_argument("--scale-up-timeout-s", type=float, default=RunOptions.scale_up_timeout_s)
    parser.add_argument(
        "--scale-down-timeout-s", type=float, default=RunOptions.scale_down_timeout_s
    )
    parser.add_argument("--out", help="write the report, samples and rates here as JSON")
    parser.add_argument("--png", default="autoscaling.png", help="replicas and load over time")
    args = parser.parse_args(argv)
    if args.write_profile:
        print(write_profile(Path(args.write_profile)))
        return
    options = RunOptions(
        clients=args.clients,
        idle_clients=args.idle_clients,
        max_tokens=args.max_tokens,
        hold_s=args.hold_s,
        tail_s=args.tail_s,
        poll_s=args.poll_s,
        scale_up_timeout_s=args.scale_up_timeout_s,
        scale_down_timeout_s=args.scale_down_timeout_s,
    )
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    process = None
    with tempfile.TemporaryDirectory(prefix="autoscaling-") as workdir:
        try:
            if args.url is None:
                process = start_profile_stack(Path(workdir), args.ready_timeout_s)
            timeline, outcomes = run_benchmark(args.url or local_stack.DEFAULT_URL, options)
        finally:
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            import ray

            ray.shutdown()  # leave the cluster before it goes away
            if process is not None:
                killed = local_stack.stop(process)
                print(f"stack stopped ({len(killed)} processes needed SIGKILL)", flush=True)
    report = {
        "profile": {"deployment": SMALL_TIER_DEPLOYMENT, **SMALL_TIER_AUTOSCALING},
        "options": asdict(options),
        **autoscaling_report(timeline, outcomes),
    }
    print(table(report))
    plot(timeline, outcomes, report, args.png)
    print(f"plot: {args.png}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(
                {
                    **report,
                    "timeline": {
                        "load_started_s": timeline.load_started_s,
                        "idle_started_s": timeline.idle_started_s,
                        "stopped_s": timeline.stopped_s,
                    },
                    "samples": [asdict(s) for s in timeline.samples],
                    "answered_per_s": answered_per_s(outcomes),
                },
                f,
                indent=2,
            )
        print(f"report: {args.out}")
    sys.exit(0 if passed(report) else 1)


if __name__ == "__main__":
    main()
