"""Load generator for the cascade (in the spirit of the seed lesson's InferenceBenchmarker).

Replays a workload file (`benchmarks/data/workload.jsonl`) against an OpenAI-compatible
endpoint with streamed chat requests, at a bounded concurrency and an optional Poisson request
rate, and reports TTFT and end-to-end latency p50/p95/p99, output tokens/s, successes and
failures by class, and dollars from the `x-cascade-*` cost headers: blended $/M served tokens
against the all-large, no-cache counterfactual. Writes a JSON report and a PNG of the latency
percentiles.

    python -m benchmarks.load_generator --url http://127.0.0.1:8000 --concurrency 8
    python -m benchmarks.load_generator --model cascade-large --no-cache --request-rate 2
    python -m benchmarks.load_generator --quick

A relayed stream (pinned tier, or routed to the large tier) sends its headers before the
tokens exist (`x-cascade-cost-final: false`); its generated tokens are then priced from the
usage chunk with the tier prices of `--config`, exactly as the ingress prices them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from tqdm import tqdm

from benchmarks.workload import DEFAULT_WORKLOAD, WorkloadItem, load_workload, quick_subset
from serve_app.accounting.cost_model import TOKENS_PER_MILLION, TierPrice
from serve_app.config import TIER_NAMES, TierName
from serve_app.ops.planner.plan import load_cascade_config

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG = REPO_ROOT / "configs" / "local.yaml"
DEFAULT_OUT = REPO_ROOT / "artifacts" / "load_generator.json"
PERCENTILES = (50, 95, 99)
QUICK_GROUPS = 2
REQUEST_TIMEOUT_S = 300.0


@dataclass
class RequestResult:
    """What the client saw of one request."""

    id: str
    kind: str
    group: str
    ok: bool
    error_class: str | None = None  # http_4xx, http_5xx, timeout, connection, protocol
    status: int | None = None
    started_s: float = 0.0
    ttft_s: float | None = None
    latency_s: float | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    counterfactual_usd: float = 0.0
    tier: str | None = None
    cache: str | None = None
    escalated: bool = False
    gateway_ms: float | None = None  # the ingress's own time besides tier calls (header)
    text: str = ""


Sender = Callable[[WorkloadItem], Awaitable[RequestResult]]


def tier_prices(config_path: Path) -> dict[TierName, TierPrice]:
    config = load_cascade_config(config_path)
    return {name: TierPrice.from_config(config.tiers[name].cost) for name in TIER_NAMES}


class CascadeHttpClient:
    """Streams chat requests to the cascade over HTTP and reads its cost headers."""

    def __init__(
        self,
        client: httpx.AsyncClient,
        prices: dict[TierName, TierPrice],
        *,
        model: str,
        cache: bool = True,
        api_key: str = "benchmark",
    ):
        self.client = client
        self.prices = prices
        self.model = model
        self.cache = cache
        self.headers = {"authorization": f"Bearer {api_key}"}

    async def send(self, item: WorkloadItem) -> RequestResult:
        result = RequestResult(id=item.id, kind=item.kind, group=item.group, ok=False)
        body = item.body(self.model, stream=True, cache=self.cache)
        result.started_s = time.perf_counter()
        try:
            async with self.client.stream(
                "POST", "/v1/chat/completions", json=body, headers=self.headers
            ) as response:
                result.status = response.status_code
                if response.status_code != 200:
                    await response.aread()
                    result.error_class = f"http_{response.status_code // 100}xx"
                    return result
                await self._read_stream(response, result)
        except httpx.TimeoutException:
            result.error_class = "timeout"
            return result
        except httpx.TransportError:
            result.error_class = "connection"
            return result
        result.latency_s = time.perf_counter() - result.started_s
        return result

    async def _read_stream(self, response: httpx.Response, result: RequestResult) -> None:
        pieces: list[str] = []
        usage = None
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            payload = json.loads(line[len("data: ") :])
            if "error" in payload:
                result.error_class = "protocol"
                return
            for choice in payload.get("choices") or []:
                content = (choice.get("delta") or {}).get("content")
                if content:
                    if result.ttft_s is None:
                        result.ttft_s = time.perf_counter() - result.started_s
                    pieces.append(content)
            usage = payload.get("usage") or usage
        result.text = "".join(pieces)
        if usage:
            result.prompt_tokens = int(usage.get("prompt_tokens") or 0)
            result.completion_tokens = int(usage.get("completion_tokens") or 0)
        self._read_cost(response.headers, result)
        result.ok = True

    def _read_cost(self, headers: httpx.Headers, result: RequestResult) -> None:
        result.tier = headers.get("x-cascade-tier")
        result.cache = headers.get("x-cascade-cache")
        result.escalated = headers.get("x-cascade-escalated") == "true"
        if "x-cascade-gateway-ms" in headers:
            result.gateway_ms = float(headers["x-cascade-gateway-ms"])
        result.cost_usd = float(headers.get("x-cascade-cost-usd", 0) or 0)
        result.counterfactual_usd = float(headers.get("x-cascade-counterfactual-usd", 0) or 0)
        if headers.get("x-cascade-cost-final") == "false" and result.tier in self.prices:
            # The relayed tier's tokens came after the headers: price them like the ingress.
            tier_price = self.prices[result.tier]  # type: ignore[index]
            result.cost_usd += tier_price.cost_usd(result.prompt_tokens, result.completion_tokens)
            result.counterfactual_usd = self.prices["large"].cost_usd(
                result.prompt_tokens, result.completion_tokens
            )


async def run_load(
    send: Sender,
    items: Sequence[WorkloadItem],
    *,
    concurrency: int,
    request_rate: float = math.inf,
    seed: int = 0,
    description: str = "requests",
) -> tuple[list[RequestResult], float]:
    """Send every item (arrivals Poisson at `request_rate`/s), at most `concurrency` at once.

    Requests start in workload order; a paraphrase or repeat of a question is sent only once
    the first ask of its group has been answered (otherwise it would race its original).
    """
    semaphore = asyncio.Semaphore(concurrency)
    rng = random.Random(seed)
    progress = tqdm(total=len(items), desc=description, unit="req", leave=False)
    # A question asked again waits for its first ask's answer, as a returning user would.
    answered: dict[str, asyncio.Event] = {}

    async def bounded(item: WorkloadItem, first_ask: asyncio.Event | None) -> RequestResult:
        if first_ask is not None:
            await first_ask.wait()
        async with semaphore:
            result = await send(item)
        answered[item.group].set()
        progress.update(1)
        return result

    started_s = time.perf_counter()
    tasks = []
    for item in items:
        if math.isfinite(request_rate):
            await asyncio.sleep(rng.expovariate(request_rate))
        first_ask = answered.get(item.group)
        if first_ask is None:
            answered[item.group] = asyncio.Event()
        tasks.append(asyncio.ensure_future(bounded(item, first_ask)))
        await asyncio.sleep(0)
    results = await asyncio.gather(*tasks)
    duration_s = time.perf_counter() - started_s
    progress.close()
    return list(results), duration_s


def _percentiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {f"p{p}": None for p in PERCENTILES}
    return {f"p{p}": float(np.percentile(values, p)) for p in PERCENTILES}


def summarize(results: Sequence[RequestResult], duration_s: float) -> dict[str, Any]:
    """Latency percentiles, throughput, outcomes and dollars of one run."""
    ok = [r for r in results if r.ok]
    output_tokens = sum(r.completion_tokens for r in ok)
    served_tokens = sum(r.prompt_tokens + r.completion_tokens for r in ok)
    cost = sum(r.cost_usd for r in ok)
    counterfactual = sum(r.counterfactual_usd for r in ok)
    per_million = TOKENS_PER_MILLION / served_tokens if served_tokens else 0.0
    return {
        "requests": len(results),
        "succeeded": len(ok),
        "failed_by_class": dict(Counter(r.error_class for r in results if not r.ok)),
        "duration_s": duration_s,
        "requests_per_s": len(ok) / duration_s if duration_s else 0.0,
        "output_tokens": output_tokens,
        "output_tokens_per_s": output_tokens / duration_s if duration_s else 0.0,
        "ttft_ms": _ms(_percentiles([r.ttft_s for r in ok if r.ttft_s is not None])),
        "latency_ms": _ms(_percentiles([r.latency_s for r in ok if r.latency_s is not None])),
        "cost_usd": cost,
        "counterfactual_usd": counterfactual,
        "usd_per_million_tokens": cost * per_million,
        "counterfactual_usd_per_million_tokens": counterfactual * per_million,
        "by_tier": dict(Counter(r.tier for r in ok)),
        "by_cache": dict(Counter(r.cache for r in ok)),
        "escalations": sum(r.escalated for r in ok),
    }


def _ms(percentiles: dict[str, float | None]) -> dict[str, float | None]:
    return {k: (v * 1000 if v is not None else None) for k, v in percentiles.items()}


def format_summary(name: str, summary: dict[str, Any]) -> str:
    ttft, latency = summary["ttft_ms"], summary["latency_ms"]

    def ms(values: dict[str, float | None]) -> str:
        return " / ".join("-" if v is None else f"{v:.0f}" for v in values.values())

    return "\n".join(
        [
            f"== {name}: {summary['succeeded']}/{summary['requests']} ok "
            f"(failed: {summary['failed_by_class'] or 'none'}) in {summary['duration_s']:.1f} s",
            f"   TTFT p50/p95/p99 ms    {ms(ttft)}",
            f"   latency p50/p95/p99 ms {ms(latency)}",
            f"   {summary['requests_per_s']:.2f} req/s, "
            f"{summary['output_tokens_per_s']:.1f} output tok/s",
            f"   ${summary['cost_usd']:.8f} spent, ${summary['counterfactual_usd']:.8f} "
            f"all-large no-cache; $/M {summary['usd_per_million_tokens']:.4f} vs "
            f"{summary['counterfactual_usd_per_million_tokens']:.4f}",
            f"   tiers {summary['by_tier']}  cache {summary['by_cache']}  "
            f"escalations {summary['escalations']}",
        ]
    )


def plot_latency_percentiles(runs: dict[str, dict[str, Any]], path: Path) -> None:
    """Grouped bars: TTFT and end-to-end latency p50/p95/p99 per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    width = 0.8 / max(len(runs), 1)
    for ax, metric, title in zip(
        axes, ("ttft_ms", "latency_ms"), ("Time to first token", "End-to-end latency"), strict=True
    ):
        for n, (name, summary) in enumerate(runs.items()):
            values = [summary[metric][f"p{p}"] or 0 for p in PERCENTILES]
            xs = [i + n * width for i in range(len(PERCENTILES))]
            ax.bar(xs, values, width=width, label=name)
        ax.set_xticks([i + width * (len(runs) - 1) / 2 for i in range(len(PERCENTILES))])
        ax.set_xticklabels([f"p{p}" for p in PERCENTILES])
        ax.set_ylabel("ms")
        ax.set_title(title)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


@dataclass
class LoadOptions:
    url: str
    model: str
    concurrency: int
    request_rate: float
    cache: bool
    workload: Path
    config: Path
    quick: bool
    out: Path
    seed: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


def select_items(workload: Path, quick: bool, groups: int | None = None) -> list[WorkloadItem]:
    """The workload; or `groups` question groups of it; or, quick, a few with short answers."""
    items = load_workload(workload)
    if quick:
        return quick_subset(items, QUICK_GROUPS, short_only=True)
    return quick_subset(items, groups) if groups else items


async def run(options: LoadOptions) -> dict[str, Any]:
    items = select_items(options.workload, options.quick)
    prices = tier_prices(options.config)
    async with httpx.AsyncClient(base_url=options.url, timeout=REQUEST_TIMEOUT_S) as client:
        sender = CascadeHttpClient(client, prices, model=options.model, cache=options.cache)
        results, duration_s = await run_load(
            sender.send,
            items,
            concurrency=options.concurrency,
            request_rate=options.request_rate,
            seed=options.seed,
        )
    summary = summarize(results, duration_s)
    report = {
        "options": {k: str(v) for k, v in asdict(options).items()},
        "summary": summary,
        "results": [asdict(r) for r in results],
    }
    options.out.parent.mkdir(parents=True, exist_ok=True)
    options.out.write_text(json.dumps(report, indent=2))
    plot_latency_percentiles({options.model: summary}, options.out.with_suffix(".png"))
    return report


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.load_generator", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="the cascade's address")
    parser.add_argument(
        "--model", default="cascade", help="cascade (routed), cascade-small or cascade-large"
    )
    parser.add_argument("--concurrency", type=int, default=8, help="requests in flight at most")
    parser.add_argument(
        "--request-rate",
        type=float,
        default=math.inf,
        help="mean arrivals per second (Poisson); default: all at once, bounded by concurrency",
    )
    parser.add_argument("--no-cache", action="store_true", help="send the per-request opt-out")
    parser.add_argument("--workload", type=Path, default=DEFAULT_WORKLOAD)
    parser.add_argument(
        "--config", type=Path, default=DEFAULT_CONFIG, help="Serve config with the tier prices"
    )
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_GROUPS} question groups")
    parser.add_argument("--seed", type=int, default=0, help="seeds the arrival times")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON report (+ .png)")
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    options = LoadOptions(
        url=args.url,
        model=args.model,
        concurrency=args.concurrency,
        request_rate=args.request_rate,
        cache=not args.no_cache,
        workload=args.workload,
        config=args.config,
        quick=args.quick,
        out=args.out,
        seed=args.seed,
    )
    report = asyncio.run(run(options))
    print(format_summary(options.model, report["summary"]))
    print(f"report: {options.out} (+ {options.out.with_suffix('.png').name})")


if __name__ == "__main__":
    main()
