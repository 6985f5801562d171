"""Soak: N concurrent clients for M minutes on loopback, with memory tracked over time.

Clients send routed chat requests, a share of them repeats (cache hits) and the rest unique
(they reach a tier). Every `--sample-s` seconds the script records the resident memory of
the stack's processes (vLLM engines, Serve replicas, the rest of Ray) and the window's
success rate and latency. Reports the success rate, error classes, latency percentiles and
memory growth, and draws them in a PNG.

    python -m benchmarks.soak --clients 8 --minutes 10 --png soak.png
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import threading
import time
from typing import Any

import numpy as np
from tqdm import tqdm

from benchmarks.faults import stack_memory_mb
from benchmarks.loadgen import SIMPLE_QUESTIONS, Outcome, routed_question, run_load, summarize

DEFAULT_URL = "http://127.0.0.1:8000"


def soak_body(repeat_share: float, max_tokens: int, seed: int = 0):
    rng = random.Random(seed)

    def body_for(index: int) -> dict[str, Any]:
        repeat = rng.random() < repeat_share
        return routed_question(
            index % len(SIMPLE_QUESTIONS), max_tokens=max_tokens, unique=not repeat
        )

    return body_for


def sample_memory(stop: threading.Event, interval_s: float, samples: list[dict[str, Any]]):
    started = time.perf_counter()
    while not stop.is_set():
        samples.append({"t_s": round(time.perf_counter() - started, 1), **stack_memory_mb()})
        stop.wait(interval_s)


def windows(outcomes: list[Outcome], window_s: float) -> list[dict[str, Any]]:
    if not outcomes:
        return []
    end = max(o.started_s for o in outcomes)
    rows = []
    for start in np.arange(0, end + window_s, window_s):
        inside = [o for o in outcomes if start <= o.started_s < start + window_s]
        if inside:
            ok = [o.latency_s for o in inside if o.ok]
            rows.append(
                {
                    "t_s": float(start),
                    "requests": len(inside),
                    "success_rate": sum(o.ok for o in inside) / len(inside),
                    "p50_ms": float(np.percentile(ok, 50) * 1000) if ok else None,
                    "p95_ms": float(np.percentile(ok, 95) * 1000) if ok else None,
                }
            )
    return rows


def plot(rows: list[dict[str, Any]], memory: list[dict[str, Any]], path: str, title: str):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (latency_ax, success_ax, memory_ax) = plt.subplots(3, 1, figsize=(9, 9), sharex=True)
    t = [r["t_s"] for r in rows]
    latency_ax.plot(t, [r["p50_ms"] for r in rows], label="p50")
    latency_ax.plot(t, [r["p95_ms"] for r in rows], label="p95")
    latency_ax.set_ylabel("latency of answers (ms)")
    latency_ax.legend()
    success_ax.plot(t, [r["success_rate"] for r in rows])
    success_ax.set_ylabel("success rate")
    success_ax.set_ylim(0, 1.05)
    mt = [m["t_s"] for m in memory]
    for kind in ("vllm", "serve_replicas", "ray_other"):
        memory_ax.plot(mt, [m[kind] / 1024 for m in memory], label=kind)
    memory_ax.set_ylabel("RSS (GiB)")
    memory_ax.set_xlabel("time (s)")
    memory_ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default=DEFAULT_URL)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--repeat-share", type=float, default=0.3, help="share of cache hits")
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--sample-s", type=float, default=10.0, help="memory/window interval")
    parser.add_argument("--png", default="soak.png")
    parser.add_argument("--out", help="write the report here as JSON")
    args = parser.parse_args(argv)
    duration_s = args.minutes * 60
    memory: list[dict[str, Any]] = []
    stop = threading.Event()
    sampler = threading.Thread(target=sample_memory, args=(stop, args.sample_s, memory))
    sampler.start()
    with tqdm(desc="soak requests", unit="req") as progress:
        outcomes = asyncio.run(
            run_load(
                args.url,
                concurrency=args.clients,
                duration_s=duration_s,
                body_for=soak_body(args.repeat_share, args.max_tokens),
                timeout_s=180.0,
                on_outcome=lambda _: progress.update(),
            )
        )
    stop.set()
    sampler.join()
    rows = windows(outcomes, args.sample_s)
    first, last = memory[0], memory[-1]
    report = {
        "clients": args.clients,
        "minutes": args.minutes,
        **summarize(outcomes),
        "cache_hits": sum(o.headers.get("x-cascade-cache") == "hit" for o in outcomes),
        "memory_mb_start": first,
        "memory_mb_end": last,
        "memory_mb_peak_total": max(sum(v for k, v in m.items() if k != "t_s") for m in memory),
    }
    print(json.dumps(report, indent=2))
    plot(rows, memory, args.png, f"soak: {args.clients} clients, {args.minutes:g} min")
    print(f"plot: {args.png}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({**report, "windows": rows, "memory": memory}, f, indent=2)


if __name__ == "__main__":
    main()
