"""Open-loop load at a fixed rate against one OpenAI-compatible endpoint (the gateway comparison).

Request `i` is sent at `t0 + i / rate`, whether or not earlier ones have answered, so a slow
gateway meets the same arrivals as a fast one (a closed loop would send it fewer). Each request
is a unique question, streamed or not; what the client saw of it is one `Sample`. The client is
aiohttp on one event loop: at hundreds of requests/s it spends less CPU than httpx, and its own
lag (how late a request left against its schedule) is recorded, so a saturated client shows.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from benchmarks.cache_latency import percentile

# What each gateway says it added itself, where it says it.
SELF_REPORTED_HEADERS = ("x-cascade-gateway-ms", "x-litellm-overhead-duration-ms")
CLIENT_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class Target:
    """One endpoint under load and how to ask it."""

    name: str
    base_url: str
    model: str
    extra_body: dict[str, Any] = field(default_factory=dict)
    api_key: str = "gateway-bench"


@dataclass
class Sample:
    ok: bool
    lag_s: float  # how late it left against its schedule
    latency_s: float = 0.0
    ttft_s: float | None = None
    text: str = ""
    error: str | None = None
    self_reported_ms: float | None = None
    cache: str | None = None
    tier: str | None = None


def request_body(
    target: Target, *, stream: bool, max_tokens: int, question: str | None = None
) -> dict[str, Any]:
    """A chat body for `target`; without `question`, a unique one (never a cache hit)."""
    if question is None:
        question = f"Question {uuid.uuid4().hex}: how much latency does a gateway add?"
    return {
        "model": target.model,
        "messages": [{"role": "user", "content": question}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": stream,
        **target.extra_body,
    }


async def _read_stream(response: aiohttp.ClientResponse, sample: Sample, started: float) -> None:
    pieces = []
    async for raw in response.content:
        line = raw.decode().strip()
        if not line.startswith("data:") or line == "data: [DONE]":
            continue
        payload = json.loads(line.removeprefix("data:"))
        if "error" in payload:
            sample.error = "stream_error"
            return
        for choice in payload.get("choices") or []:
            content = (choice.get("delta") or {}).get("content")
            if content:
                if sample.ttft_s is None:
                    sample.ttft_s = time.perf_counter() - started
                pieces.append(content)
    sample.text = "".join(pieces)


async def send_one(
    session: aiohttp.ClientSession, target: Target, body: dict[str, Any], lag_s: float
) -> Sample:
    sample = Sample(ok=False, lag_s=lag_s)
    started = time.perf_counter()
    try:
        url = f"{target.base_url}/v1/chat/completions"
        headers = {"authorization": f"Bearer {target.api_key}"}
        async with session.post(url, json=body, headers=headers) as response:
            if response.status != 200:
                await response.read()
                sample.error = f"http_{response.status}"
                return sample
            if body["stream"]:
                await _read_stream(response, sample, started)
            else:
                payload = await response.json()
                sample.text = payload["choices"][0]["message"]["content"] or ""
                sample.ttft_s = time.perf_counter() - started
            _read_headers(response.headers, sample)
    except TimeoutError:
        sample.error = "timeout"
        return sample
    except aiohttp.ClientError as e:
        sample.error = type(e).__name__
        return sample
    sample.latency_s = time.perf_counter() - started
    sample.ok = sample.error is None
    return sample


def _read_headers(headers: Any, sample: Sample) -> None:
    for name in SELF_REPORTED_HEADERS:
        if name in headers:
            sample.self_reported_ms = float(headers[name])
    sample.cache = headers.get("x-cascade-cache")
    sample.tier = headers.get("x-cascade-tier")


async def open_loop(
    target: Target, *, rate: float, duration_s: float, stream: bool, max_tokens: int
) -> tuple[list[Sample], float]:
    """Send `rate * duration_s` requests at fixed intervals; the samples and the seconds from
    the first send to the last answer."""
    count = max(1, round(rate * duration_s))
    timeout = aiohttp.ClientTimeout(total=CLIENT_TIMEOUT_S)
    connector = aiohttp.TCPConnector(limit=0, force_close=False)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        bodies = [request_body(target, stream=stream, max_tokens=max_tokens) for _ in range(count)]
        tasks = []
        t0 = time.perf_counter()
        for index, body in enumerate(bodies):
            due = t0 + index / rate
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            lag_s = time.perf_counter() - due
            tasks.append(asyncio.ensure_future(send_one(session, target, body, lag_s)))
        samples = list(await asyncio.gather(*tasks))
        return samples, time.perf_counter() - t0


def summarize(samples: Sequence[Sample], duration_s: float) -> dict[str, Any]:
    """Latency and TTFT percentiles (ms), errors by class, achieved rate, client lag."""
    ok = [s for s in samples if s.ok]
    latencies = [1000 * s.latency_s for s in ok]
    ttfts = [1000 * s.ttft_s for s in ok if s.ttft_s is not None]
    reported = [s.self_reported_ms for s in ok if s.self_reported_ms is not None]

    def pcts(values: list[float]) -> dict[str, float | None]:
        return {f"p{q}": percentile(values, q) if values else None for q in (50, 99)}

    return {
        "requests": len(samples),
        "ok": len(ok),
        "errors": dict(Counter(s.error for s in samples if not s.ok)),
        "achieved_rps": len(ok) / duration_s if duration_s else 0.0,
        "latency_ms": pcts(latencies),
        "ttft_ms": pcts(ttfts),
        "self_reported_ms": pcts(reported),
        "client_lag_ms": pcts([1000 * s.lag_s for s in samples]),
        "cache": dict(Counter(s.cache for s in ok if s.cache)),
        "tiers": dict(Counter(s.tier for s in ok if s.tier)),
        "texts": sorted({s.text for s in ok}),
    }
