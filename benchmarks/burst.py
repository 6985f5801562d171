"""Burst: N clients each send one request in the same instant; how long until the last answer?

Measures the gateway's own per-request cost (proxy + ingress), which bounds how fast a crowd
arriving at once can be answered or refused, whatever the refusal costs by itself:

    python -m benchmarks.burst --clients 128 --kind health   # GET /health
    python -m benchmarks.burst --clients 128 --kind bad      # a 400 from request validation

Each client has its own connection, built before the clock starts.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections import Counter
from typing import Any

import httpx

from benchmarks.loadgen import percentile_ms, separate_clients

DEFAULT_URL = "http://127.0.0.1:8000"
# Refused by validation before any tier: temperature out of range.
BAD_REQUEST = {
    "model": "cascade-small",
    "messages": [{"role": "user", "content": "hi"}],
    "max_tokens": 1,
    "temperature": -5,
}


async def _one(client: httpx.AsyncClient, kind: str) -> tuple[int, float]:
    started = time.perf_counter()
    if kind == "health":
        response = await client.get("/health")
    else:
        response = await client.post("/v1/chat/completions", json=BAD_REQUEST)
    return response.status_code, time.perf_counter() - started


async def burst(url: str, clients: int, kind: str) -> dict[str, Any]:
    pool = separate_clients(url, clients, timeout_s=60.0)
    try:
        results = await asyncio.gather(*(_one(client, kind) for client in pool))
    finally:
        await asyncio.gather(*(client.aclose() for client in pool))
    latencies = [latency for _, latency in results]
    return {
        "clients": clients,
        "kind": kind,
        "statuses": dict(Counter(status for status, _ in results)),
        "p50_ms": percentile_ms(latencies, 50),
        "p99_ms": percentile_ms(latencies, 99),
        "last_ms": percentile_ms(latencies, 100),
        "gateway_ms_per_request": round(max(latencies) * 1000 / clients, 2),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default=DEFAULT_URL)
    parser.add_argument("--clients", type=int, default=128)
    parser.add_argument("--kind", choices=["health", "bad"], default="health")
    parser.add_argument("--repeat", type=int, default=3, help="bursts, one after another")
    args = parser.parse_args(argv)
    for _ in range(args.repeat):
        print(json.dumps(asyncio.run(burst(args.url, args.clients, args.kind))), flush=True)
        time.sleep(1)


if __name__ == "__main__":
    main()
