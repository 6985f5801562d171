"""Fault drill: kill a replica of the running cascade while a concurrency-16 load runs.

For each fault (an LLM tier replica, the semantic-cache replica, the router replica where the
router has a deployment: `router.placement`, serve_app/routing/placement.py) the
drill runs a closed-loop load of routed requests on loopback, kills the deployment's replica
actors a few seconds in, and reports what clients saw: success rate, error classes (every
failure must be a well-formed OpenAI error; hangs and lost requests count separately),
failovers (routed to the small tier, answered by the large one) and the recovery time (kill
to the replacement replica serving again).

    python -m benchmarks.fault_drill                       # all faults, 16 clients
    python -m benchmarks.fault_drill --faults llm-small --duration-s 120
    python -m benchmarks.fault_drill --faults router --app my-gateway --url http://.../prefix
"""

from __future__ import annotations

import argparse
import asyncio
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx

from benchmarks.faults import (
    APP_NAME,
    cache_answers,
    connect_to_stack,
    kill_replicas,
    orphaned_engine_processes,
    replica_actor_names,
    tier_answers,
    wait_until,
)
from benchmarks.loadgen import Outcome, request_outcome, routed_question, run_load, summarize

DEFAULT_URL = "http://127.0.0.1:8000"
# Escalation reasons that mean the small tier failed, not its answer
# (serve_app/quality/fallback.py).
_FAILURE_REASONS = ("error", "timeout", "small_circuit_open", "small_unavailable")


@dataclass(frozen=True)
class Fault:
    deployment: str
    recovered: Callable[[str], bool]
    """Whether the service works through the replacement replica again."""


FAULTS: dict[str, Fault] = {
    "llm-small": Fault("llm-small", lambda url: tier_answers(url, "cascade-small")),
    "llm-large": Fault("llm-large", lambda url: tier_answers(url, "cascade-large")),
    "semantic-cache": Fault("semantic-cache", cache_answers),
    # Routing falls back to the heuristic at once; recovery is the replica being back.
    "router": Fault("router", lambda url: tier_answers(url, "cascade-small")),
}


# Why a gateway has no replica of a helper to kill (its placement).
_IN_THE_INGRESS = {
    "router": " (its router scores in the ingress: router.placement)",
    "semantic-cache": " (its cache looks up in the ingress: cache.placement)",
}


class NoReplicaToKill(LookupError):
    """The fault's deployment has no replica in this stack."""


@dataclass
class DrillResult:
    fault: str
    killed_replicas: int
    kill_at_s: float
    outcomes: list[Outcome]
    first_after_kill: Outcome
    """A request sent the moment the killed replica was gone: it meets the outage for sure,
    whatever the load's requests happened to be doing then (under load they may all be waiting
    on an engine past a short outage)."""
    recovery_s: float | None
    orphaned_engines_before: int
    orphaned_engines_after: int

    def failovers(self) -> int:
        """Requests after the kill the router sent to the small tier that the large one
        answered because the small tier failed (not because the quality gate escalated)."""
        return sum(
            1
            for o in self.outcomes
            if o.ok
            and o.started_s >= self.kill_at_s
            and o.headers.get("x-cascade-route") == "small"
            and o.headers.get("x-cascade-tier") == "large"
            and o.headers.get("x-cascade-escalation-reason") in _FAILURE_REASONS
        )

    def service_recovery_s(self) -> float:
        """Kill to the end of the last failed request (0 if none failed): after it every request
        got a complete answer, whether or not the killed replica was back yet."""
        failures_end_s = [o.started_s + o.latency_s for o in self.outcomes if not o.ok]
        return max(0.0, max(failures_end_s, default=self.kill_at_s) - self.kill_at_s)

    def summary(self) -> dict[str, Any]:
        return {
            "fault": self.fault,
            "killed_replicas": self.killed_replicas,
            **summarize(self.outcomes),
            "failovers_small_to_large": self.failovers(),
            "cache_fail_opens": sum(
                o.headers.get("x-cascade-cache") == "error" for o in self.outcomes
            ),
            "first_request_after_kill": {
                "kind": self.first_after_kill.kind,
                **self.first_after_kill.headers,
            },
            "service_recovery_s": round(self.service_recovery_s(), 1),
            "recovery_s": None if self.recovery_s is None else round(self.recovery_s, 1),
            "orphaned_vllm_processes_before_after": [
                self.orphaned_engines_before,
                self.orphaned_engines_after,
            ],
        }


async def _one_routed_request(base_url: str, t0: float, timeout_s: float) -> Outcome:
    async with httpx.AsyncClient(base_url=base_url, timeout=timeout_s) as client:
        return await request_outcome(client, routed_question(0), {}, t0)


def run_drill(
    fault_name: str,
    base_url: str = DEFAULT_URL,
    *,
    concurrency: int = 16,
    duration_s: float = 60.0,
    kill_at_s: float = 5.0,
    recovery_timeout_s: float = 300.0,
    timeout_s: float = 180.0,
    app: str = APP_NAME,
) -> DrillResult:
    """Load for `duration_s`, kill at `kill_at_s`, then wait (load still running) for recovery.
    `app` is the Serve application whose replica is killed; `base_url` is its gateway."""
    fault = FAULTS[fault_name]
    connect_to_stack(base_url)
    if not replica_actor_names(fault.deployment, app):
        raise NoReplicaToKill(
            f"application {app!r} has no {fault.deployment!r} replica"
            + _IN_THE_INGRESS.get(fault_name, "")
        )
    orphans_before = orphaned_engine_processes()
    outcomes: list[Outcome] = []

    def load() -> None:
        outcomes.extend(
            asyncio.run(
                run_load(
                    base_url, concurrency=concurrency, duration_s=duration_s, timeout_s=timeout_s
                )
            )
        )

    load_thread = threading.Thread(target=load, name="drill-load")
    started = time.perf_counter()
    load_thread.start()
    time.sleep(kill_at_s)
    killed = kill_replicas(fault.deployment, app)
    actual_kill_at_s = time.perf_counter() - started
    first_after_kill = asyncio.run(_one_routed_request(base_url, started, timeout_s))
    outcomes.append(first_after_kill)
    try:
        recovery_s = wait_until(lambda: fault.recovered(base_url), recovery_timeout_s, 2.0)
    except TimeoutError:
        recovery_s = None
    load_thread.join()
    return DrillResult(
        fault_name,
        killed,
        actual_kill_at_s,
        outcomes,
        first_after_kill,
        recovery_s,
        orphans_before,
        orphaned_engine_processes(),
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default=DEFAULT_URL)
    parser.add_argument("--app", default=APP_NAME, help="Serve application of the replicas")
    parser.add_argument("--faults", nargs="*", default=list(FAULTS), choices=list(FAULTS))
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--duration-s", type=float, default=90.0, help="load per fault")
    parser.add_argument("--kill-at-s", type=float, default=10.0)
    parser.add_argument("--recovery-timeout-s", type=float, default=300.0)
    parser.add_argument("--out", help="write the summaries here as JSON")
    args = parser.parse_args(argv)
    summaries = []
    for name in args.faults:
        print(f"fault {name}: {args.concurrency} clients for {args.duration_s:.0f} s", flush=True)
        try:
            result = run_drill(
                name,
                args.url,
                concurrency=args.concurrency,
                duration_s=args.duration_s,
                kill_at_s=args.kill_at_s,
                recovery_timeout_s=args.recovery_timeout_s,
                app=args.app,
            )
        except NoReplicaToKill as e:
            print(f"fault {name} skipped: {e}", flush=True)
            continue
        summaries.append(result.summary())
        print(json.dumps(result.summary(), indent=2), flush=True)
        # The next fault starts on a healthy stack: every tier serving again.
        for model in ("cascade-small", "cascade-large"):
            wait_until(lambda m=model: tier_answers(args.url, m), args.recovery_timeout_s, 2.0)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(summaries, f, indent=2)


if __name__ == "__main__":
    main()
