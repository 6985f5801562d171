"""Overload: offer a tier 4x the requests it admits and time the refusals.

A tier admits `max_ongoing_requests + max_queued_requests` requests at once (32 in
configs/local.yaml); beyond that the ingress refuses with an OpenAI-shaped 503 + Retry-After
instead of letting requests wait into a timeout. This runs `--factor` x that many clients
(closed loop, loopback) against the pinned small tier, cache bypassed, and reports:
- how fast refusals are answered (target: p99 <= 100 ms), overall and past the opening
  window: with every client starting in the same instant (`--ramp-s 0`), the opening burst
  measures the gateway's throughput (it takes ~1 s to answer 128 requests at once on 2
  cores, benchmarks/burst.py), not how it queues,
- lost requests: no HTTP answer, a hang, or an error that is not OpenAI-shaped (target: 0),
- the admitted requests' latency and the refusal share.
Clients honour Retry-After (as the OpenAI SDK does) unless `--no-retry-after`.

The crowd's own timings include its client: 128 connections in one Python process on the
same 2 cores as the server. A probe in a separate process sends the same request every
`--probe-interval-s` (one at a time, one kept-alive connection, like a lone SDK user) and
reports the refusal latency an independent client sees during the overload.

    python -m benchmarks.overload --factor 4 --duration-s 60
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import httpx

from benchmarks.loadgen import Outcome, classify, percentile_ms, run_load, summarize

DEFAULT_URL = "http://127.0.0.1:8000"
TIER_ADMITS = 32  # max_ongoing_requests (16) + max_queued_requests (16) of configs/local.yaml


def overload_body(model: str, max_tokens: int) -> dict[str, Any]:
    return {
        "model": model,
        "messages": [{"role": "user", "content": "Write one sentence about the sea."}],
        "max_tokens": max_tokens,
        "temperature": 0.7,
        "cache": False,
    }


def _latency_ms(latencies_s: list[float]) -> dict[str, float | None]:
    return {
        "p50": percentile_ms(latencies_s, 50),
        "p99": percentile_ms(latencies_s, 99),
        "max": percentile_ms(latencies_s, 100),
    }


def _refusal_windows(refused: list[Outcome], window_s: float) -> list[dict[str, Any]]:
    """Refusal latency by the window the request was sent in: the opening burst (every
    client at once, Retry-After not yet learnt) against the steady state."""
    windows: dict[int, list[float]] = {}
    for outcome in refused:
        windows.setdefault(int(outcome.started_s // window_s), []).append(outcome.latency_s)
    return [
        {
            "from_s": index * window_s,
            "refused": len(latencies),
            "p50_ms": percentile_ms(latencies, 50),
            "p99_ms": percentile_ms(latencies, 99),
        }
        for index, latencies in sorted(windows.items())
    ]


def overload_report(
    outcomes: list[Outcome], clients: int, wall_s: float, *, window_s: float = 10.0
) -> dict[str, Any]:
    refused = [o for o in outcomes if o.status in (429, 503) and o.well_formed]
    rejected = [o.latency_s for o in refused]
    lost = [o for o in outcomes if not o.well_formed]
    return {
        "clients": clients,
        "wall_s": round(wall_s, 1),
        **summarize(outcomes),
        "rejected": len(rejected),
        "rejected_latency_ms": _latency_ms(rejected),
        # Past the opening window: the steady overload, once clients have learnt Retry-After.
        "rejected_after_opening_ms": _latency_ms(
            [o.latency_s for o in refused if o.started_s >= window_s]
        ),
        "rejected_by_window": _refusal_windows(refused, window_s),
        "retry_after_s": sorted({o.headers.get("retry-after", "") for o in refused}),
        "lost": len(lost),
        "answered_per_s": round(sum(o.ok for o in outcomes) / wall_s, 2),
    }


def probe(
    url: str, body: dict[str, Any], duration_s: float, interval_s: float
) -> list[tuple[str, float]]:
    """(outcome class, latency s) of one request every `interval_s`, sent one at a time."""
    results = []
    deadline = time.monotonic() + duration_s
    with httpx.Client(base_url=url, timeout=180.0) as client:
        while time.monotonic() < deadline:
            started = time.perf_counter()
            try:
                kind = classify(client.post("/v1/chat/completions", json=body))
            except httpx.HTTPError as error:
                kind = type(error).__name__
            results.append((kind, time.perf_counter() - started))
            time.sleep(interval_s)
    return results


def probe_report(results: list[tuple[str, float]]) -> dict[str, Any]:
    refused = [latency for kind, latency in results if kind in ("http_429", "http_503")]
    answered = [latency for kind, latency in results if kind == "ok"]
    return {
        "sent": len(results),
        "refused": len(refused),
        "answered": len(answered),
        "lost": sum(1 for kind, _ in results if kind != "ok" and not kind.startswith("http_")),
        "refused_latency_ms": _latency_ms(refused),
        "answered_latency_ms_p50": percentile_ms(answered, 50),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default=DEFAULT_URL)
    parser.add_argument("--model", default="cascade-small", help="pinned tier (or `cascade`)")
    parser.add_argument("--factor", type=float, default=4.0, help="clients / tier admission")
    parser.add_argument("--duration-s", type=float, default=60.0)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--no-retry-after", action="store_true", help="retry refusals at once")
    parser.add_argument(
        "--ramp-s",
        type=float,
        default=0.0,
        help="start the clients evenly over this many seconds (0: all in the same instant)",
    )
    parser.add_argument(
        "--probe-interval-s", type=float, default=0.25, help="the lone probe's pause; 0: no probe"
    )
    parser.add_argument("--out", help="write the report here as JSON")
    args = parser.parse_args(argv)
    clients = int(args.factor * TIER_ADMITS)
    body = overload_body(args.model, args.max_tokens)
    print(
        f"{clients} clients on {args.model} for {args.duration_s:.0f} s"
        f" (started over {args.ramp_s:g} s)",
        flush=True,
    )
    with ProcessPoolExecutor(max_workers=1) as pool:
        probing = None
        if args.probe_interval_s > 0:
            probing = pool.submit(probe, args.url, body, args.duration_s, args.probe_interval_s)
        started = time.perf_counter()
        outcomes = asyncio.run(
            run_load(
                args.url,
                concurrency=clients,
                duration_s=args.duration_s,
                body_for=lambda _: body,
                timeout_s=180.0,
                respect_retry_after=not args.no_retry_after,
                ramp_s=args.ramp_s,
            )
        )
        report = overload_report(outcomes, clients, time.perf_counter() - started)
        if probing is not None:
            report["probe"] = probe_report(probing.result())
    print(json.dumps(report, indent=2))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(report, f, indent=2)


if __name__ == "__main__":
    main()
