"""A bounded closed-loop load on loopback: N concurrent clients, each outcome classified.

Shared by the benchmarks (fault drill, soak, overload, burst; the fuzzer's error check) and by
the tests of the live stack. Every request ends in exactly one class: `ok` (a complete answer),
`http_<status>` with a well-formed OpenAI error, `malformed_<status>` (an error that is not
OpenAI-shaped, or a 200 without an answer), `hang` (no answer within the client timeout) or
`lost` (connection error, no HTTP answer).
"""

from __future__ import annotations

import asyncio
import itertools
import ssl
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
import numpy as np

SIMPLE_QUESTIONS = (
    "What is the capital of France?",
    "Name a primary colour.",
    "What colour is the sky on a clear day?",
    "Say hello to Bob.",
    "What is the opposite of hot?",
    "Name a fruit that is yellow.",
    "How many legs does a cat have?",
    "What do bees make?",
)
OPENAI_ERROR_FIELDS = {"message", "type", "param", "code"}
"""The keys of an OpenAI error object (`{"error": {...}}`), no more, no fewer."""
RECORDED_HEADERS = (
    "x-cascade-tier",
    "x-cascade-route",
    "x-cascade-cache",
    "x-cascade-escalation-reason",
    "retry-after",
)
"""Response headers an Outcome keeps: the cascade's routing and cache decisions, Retry-After."""


@dataclass(frozen=True)
class Outcome:
    started_s: float
    latency_s: float
    status: int | None
    kind: str
    headers: dict[str, str]

    @property
    def ok(self) -> bool:
        return self.kind == "ok"

    @property
    def well_formed(self) -> bool:
        """A complete answer or an OpenAI-shaped error: what every request must end in."""
        return self.kind == "ok" or self.kind.startswith("http_")


def routed_question(index: int, *, max_tokens: int = 8, unique: bool = True) -> dict[str, Any]:
    """A short routed chat request; unique ones miss the cache and reach a tier."""
    question = SIMPLE_QUESTIONS[index % len(SIMPLE_QUESTIONS)]
    if unique:
        question = f"{question} (request {uuid.uuid4().hex[:8]})"
    return {
        "model": "cascade",
        "messages": [{"role": "user", "content": question}],
        "max_tokens": max_tokens,
        "temperature": 0,
    }


def is_openai_error(response: httpx.Response) -> bool:
    """An OpenAI-shaped error body: `error` holds exactly the four keys, with a message."""
    try:
        error = response.json()["error"]
    except (ValueError, KeyError, TypeError):
        return False
    return isinstance(error, dict) and set(error) == OPENAI_ERROR_FIELDS and bool(error["message"])


def has_answer(response: httpx.Response) -> bool:
    """A complete chat or text completion: a finish reason of stop or length, and content."""
    try:
        choice = response.json()["choices"][0]
    except (ValueError, KeyError, IndexError, TypeError):
        return False
    message = choice.get("message") or {}
    return choice.get("finish_reason") in {"stop", "length"} and (
        message.get("content") is not None or choice.get("text") is not None
    )


def classify(response: httpx.Response) -> str:
    if response.status_code == 200:
        return "ok" if has_answer(response) else "malformed_200"
    if is_openai_error(response):
        return f"http_{response.status_code}"
    return f"malformed_{response.status_code}"


async def request_outcome(
    client: httpx.AsyncClient, body: dict[str, Any], headers: dict[str, str], t0: float
) -> Outcome:
    """Send one chat or text completion; its class, latency and start relative to `t0`."""
    started = time.perf_counter()
    status, kind, recorded = None, "lost", {}
    path = "/v1/chat/completions" if "messages" in body else "/v1/completions"
    try:
        response = await client.post(path, json=body, headers=headers)
        status, kind = response.status_code, classify(response)
        recorded = {k: response.headers[k] for k in RECORDED_HEADERS if k in response.headers}
    except httpx.TimeoutException:
        kind = "hang"
    except httpx.TransportError:
        kind = "lost"
    return Outcome(started - t0, time.perf_counter() - started, status, kind, recorded)


def separate_clients(base_url: str, count: int, *, timeout_s: float) -> list[httpx.AsyncClient]:
    """`count` clients with a connection each, as separate users have; build them before
    the clock starts.

    A single pool shared by many coroutines queues them inside httpx, and that wait was
    showing up as server latency (4x overload: refusals p50 1-4 s in one shared pool, 40 ms
    from a separate client). The clients share one TLS context: each building its own costs
    ~55 ms of blocking CPU (the CA bundle), seconds for 128 clients.
    """
    tls = ssl.create_default_context()
    return [
        httpx.AsyncClient(base_url=base_url, timeout=timeout_s, verify=tls) for _ in range(count)
    ]


def ramp_offsets(count: int, ramp_s: float) -> list[float]:
    """When each of `count` clients starts: evenly over `ramp_s`, the first at once."""
    return [ramp_s * index / count for index in range(count)]


async def run_load(
    base_url: str,
    *,
    concurrency: int,
    duration_s: float | None = None,
    total_requests: int | None = None,
    body_for: Callable[[int], dict[str, Any]] = routed_question,
    headers: dict[str, str] | None = None,
    timeout_s: float = 120.0,
    on_outcome: Callable[[Outcome], None] | None = None,
    respect_retry_after: bool = False,
    ramp_s: float = 0.0,
) -> list[Outcome]:
    """`concurrency` clients send back-to-back requests until the duration or count is spent.

    With `respect_retry_after`, a client told to come back later (429/503 + Retry-After)
    waits that long first, as the OpenAI SDK does; otherwise it retries at once. The clients
    start evenly spread over `ramp_s` (0: all in the same instant).
    """
    if duration_s is None and total_requests is None:
        raise ValueError("give duration_s or total_requests")
    counter = itertools.count()
    outcomes: list[Outcome] = []
    clients = separate_clients(base_url, concurrency, timeout_s=timeout_s)
    t0 = time.perf_counter()
    deadline = t0 + duration_s if duration_s is not None else float("inf")

    async def requests_until_done(client: httpx.AsyncClient, start_s: float) -> None:
        await asyncio.sleep(start_s)
        while time.perf_counter() < deadline:
            index = next(counter)
            if total_requests is not None and index >= total_requests:
                return
            outcome = await request_outcome(client, body_for(index), headers or {}, t0)
            outcomes.append(outcome)
            if on_outcome is not None:
                on_outcome(outcome)
            retry_after = outcome.headers.get("retry-after", "")
            if respect_retry_after and retry_after.isdigit():
                await asyncio.sleep(
                    min(float(retry_after), max(0.0, deadline - time.perf_counter()))
                )

    try:
        await asyncio.gather(
            *(
                requests_until_done(client, start_s)
                for client, start_s in zip(clients, ramp_offsets(concurrency, ramp_s), strict=True)
            )
        )
    finally:
        await asyncio.gather(*(client.aclose() for client in clients))
    return outcomes


def percentile_ms(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)) * 1000, 1) if values else None


def summarize(outcomes: list[Outcome]) -> dict[str, Any]:
    latencies = [o.latency_s for o in outcomes if o.ok]
    total = len(outcomes)
    return {
        "requests": total,
        "success_rate": round(sum(o.ok for o in outcomes) / total, 4) if total else None,
        "well_formed_rate": round(sum(o.well_formed for o in outcomes) / total, 4)
        if total
        else None,
        "classes": dict(Counter(o.kind for o in outcomes).most_common()),
        "latency_ms": {
            "p50": percentile_ms(latencies, 50),
            "p95": percentile_ms(latencies, 95),
            "p99": percentile_ms(latencies, 99),
            "max": percentile_ms(latencies, 100),
        },
    }
