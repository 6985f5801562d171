"""Savings benchmark: the workload through the cascade vs. an all-large, no-cache baseline.

One run, one stack, four configurations of the same workload, each toggled per request:

| run            | model           | cache | levers on             |
| -------------- | --------------- | ----- | --------------------- |
| baseline       | cascade-large   | off   | none                  |
| cache only     | cascade-large   | on    | cache                 |
| routing only   | cascade         | off   | routing + fallback    |
| cascade        | cascade         | on    | cache + routing + fallback |

Each run uses its own API key, i.e. its own cache partition, so no run is served answers
cached by another. The quality fallback has no per-request switch (it is `quality.enabled`
in the config); its share is read from the ingress's lever ledger (`/admin/cost/summary`,
admin token in CASCADE_ADMIN_TOKEN): the small-tier answers an escalation threw away.

Quality proxy, where the workload has references:
- MMLU questions: RouteLLM's correctness labels of the production-class models (Mixtral for
  the small tier, GPT-4 for the large one), taken for the tier that answered (for a cache hit,
  the tier that produced the cached answer): the accuracy the routing decisions would give.
- Factual questions: whether the answer actually served contains a reference keyword.

    python -m benchmarks.savings_benchmark --url http://127.0.0.1:8000
    python -m benchmarks.savings_benchmark --quick

Writes a JSON report, a cost-vs-quality PNG and a latency-percentile PNG.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx

from benchmarks.load_generator import (
    DEFAULT_CONFIG,
    QUICK_GROUPS,
    REQUEST_TIMEOUT_S,
    CascadeHttpClient,
    RequestResult,
    format_summary,
    plot_latency_percentiles,
    run_load,
    select_items,
    summarize,
    tier_prices,
)
from benchmarks.workload import DEFAULT_WORKLOAD, WorkloadItem, answer_is_correct

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO_ROOT / "artifacts" / "savings_benchmark.json"


@dataclass(frozen=True)
class RunSpec:
    name: str
    model: str
    cache: bool


RUNS = (
    RunSpec("baseline (all-large, no cache)", "cascade-large", cache=False),
    RunSpec("cache only", "cascade-large", cache=True),
    RunSpec("routing only", "cascade", cache=False),
    RunSpec("cascade", "cascade", cache=True),
)


def quality_proxy(items: Sequence[WorkloadItem], results: Sequence[RequestResult]) -> dict:
    """MMLU accuracy implied by the answering tier, and reference-keyword accuracy."""
    by_id = {item.id: item for item in items}
    mmlu, keyword = [], []
    for result in results:
        item = by_id[result.id]
        if not result.ok:
            continue
        if item.weak_correct is not None and result.tier in ("small", "large"):
            correct = item.weak_correct if result.tier == "small" else item.strong_correct
            mmlu.append(bool(correct))
        verdict = answer_is_correct(item, result.text)
        if verdict is not None:
            keyword.append(verdict)
    return {
        "mmlu_accuracy_by_tier_labels": sum(mmlu) / len(mmlu) if mmlu else None,
        "mmlu_answers": len(mmlu),
        "reference_keyword_accuracy": sum(keyword) / len(keyword) if keyword else None,
        "reference_answers": len(keyword),
    }


def lever_contributions(runs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Each lever's share of the saving, by switching it off with the others left on."""
    baseline = runs[RUNS[0].name]["summary"]["usd_per_million_tokens"]
    full = runs["cascade"]["summary"]["usd_per_million_tokens"]
    without_cache = runs["routing only"]["summary"]["usd_per_million_tokens"]
    without_routing = runs["cache only"]["summary"]["usd_per_million_tokens"]

    def share(usd_per_million: float) -> float | None:
        return (baseline - usd_per_million) / baseline if baseline else None

    return {
        "baseline_usd_per_million": baseline,
        "cascade_usd_per_million": full,
        "cascade_saving_fraction": share(full),
        "cache_alone_saving_fraction": share(without_routing),
        "routing_and_fallback_alone_saving_fraction": share(without_cache),
        # What turning the lever off (others on) would add back, in $/M.
        "cache_marginal_usd_per_million": without_cache - full,
        "routing_marginal_usd_per_million": without_routing - full,
    }


async def fetch_ledger(client: httpx.AsyncClient, admin_token: str | None) -> dict | None:
    if not admin_token:
        return None
    response = await client.get(
        "/admin/cost/summary", headers={"authorization": f"Bearer {admin_token}"}
    )
    return response.json() if response.status_code == 200 else None


def ledger_delta(before: dict | None, after: dict | None) -> dict[str, float] | None:
    """Net savings by lever the ingress counted during one run (one ingress replica)."""
    if before is None or after is None or before.get("replica") != after.get("replica"):
        return None
    b, a = before["net_saved_usd_by_lever"], after["net_saved_usd_by_lever"]
    return {lever: a[lever] - b.get(lever, 0.0) for lever in a}


async def run_one(
    client: httpx.AsyncClient,
    spec: RunSpec,
    items: list[WorkloadItem],
    prices: dict,
    concurrency: int,
    admin_token: str | None,
) -> dict[str, Any]:
    # A fresh key is a fresh cache partition: this run sees none of the others' answers.
    sender = CascadeHttpClient(
        client, prices, model=spec.model, cache=spec.cache, api_key=f"savings-{uuid.uuid4().hex}"
    )
    before = await fetch_ledger(client, admin_token)
    results, duration_s = await run_load(
        sender.send, items, concurrency=concurrency, description=spec.name
    )
    after = await fetch_ledger(client, admin_token)
    return {
        "spec": asdict(spec),
        "summary": summarize(results, duration_s),
        "quality": quality_proxy(items, results),
        "ingress_net_saved_usd_by_lever": ledger_delta(before, after),
        "results": [asdict(r) for r in results],
    }


QUALITY_SERIES = (
    ("mmlu_accuracy_by_tier_labels", "o", "MMLU, accuracy by the answering tier's labels"),
    ("reference_keyword_accuracy", "s", "factual questions, reference keyword in the answer"),
)


def plot_cost_vs_quality(runs: dict[str, dict[str, Any]], path: Path) -> None:
    """One colour per run, one marker per quality proxy; x is the blended $/M."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    fig, ax = plt.subplots(figsize=(8, 4.5))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for n, run in enumerate(runs.values()):
        x = run["summary"]["usd_per_million_tokens"]
        for key, marker, _ in QUALITY_SERIES:
            y = run["quality"][key]
            if y is not None:
                ax.scatter([x], [y], marker=marker, s=60, color=colours[n % len(colours)])
    handles = [
        Line2D([], [], color=colours[n % len(colours)], marker="o", linestyle="", label=name)
        for n, name in enumerate(runs)
    ]
    handles += [
        Line2D([], [], color="grey", marker=marker, linestyle="", label=label)
        for _, marker, label in QUALITY_SERIES
    ]
    ax.legend(handles=handles, fontsize=7, loc="lower right")
    ax.set_xlabel("blended $ per million served tokens")
    ax.set_ylabel("quality proxy (accuracy)")
    ax.set_title("Cost vs. quality: cascade levers against all-large, no cache")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


async def run_benchmark(
    url: str, items: list[WorkloadItem], config: Path, concurrency: int, admin_token: str | None
) -> dict[str, Any]:
    prices = tier_prices(config)
    runs: dict[str, dict[str, Any]] = {}
    async with httpx.AsyncClient(base_url=url, timeout=REQUEST_TIMEOUT_S) as client:
        for spec in RUNS:
            runs[spec.name] = await run_one(client, spec, items, prices, concurrency, admin_token)
    return {
        "url": url,
        "requests_per_run": len(items),
        "concurrency": concurrency,
        "levers": lever_contributions(runs),
        "runs": runs,
    }


def format_report(report: dict[str, Any]) -> str:
    lines = []
    for name, run in report["runs"].items():
        lines.append(format_summary(name, run["summary"]))
        quality = run["quality"]
        lines.append(
            f"   quality: MMLU (tier labels) {_pct(quality['mmlu_accuracy_by_tier_labels'])} "
            f"of {quality['mmlu_answers']}, reference keywords "
            f"{_pct(quality['reference_keyword_accuracy'])} of {quality['reference_answers']}"
        )
        if run["ingress_net_saved_usd_by_lever"]:
            nets = run["ingress_net_saved_usd_by_lever"]
            lines.append(
                "   ingress ledger, net $ by lever: "
                + ", ".join(f"{k} {v:+.8f}" for k, v in nets.items())
            )
    levers = report["levers"]
    lines += [
        "== levers (blended $/M served tokens)",
        f"   baseline {levers['baseline_usd_per_million']:.4f} -> cascade "
        f"{levers['cascade_usd_per_million']:.4f}: saves {_pct(levers['cascade_saving_fraction'])}",
        f"   cache alone saves {_pct(levers['cache_alone_saving_fraction'])}, routing+fallback "
        f"alone {_pct(levers['routing_and_fallback_alone_saving_fraction'])}",
        f"   switching off the cache adds {levers['cache_marginal_usd_per_million']:+.4f} $/M, "
        f"routing {levers['routing_marginal_usd_per_million']:+.4f} $/M",
    ]
    return "\n".join(lines)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f} %"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.savings_benchmark", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--workload", type=Path, default=DEFAULT_WORKLOAD)
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="tier prices")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_GROUPS} question groups")
    parser.add_argument(
        "--groups", type=int, help="only this many question groups (half of them repeated)"
    )
    parser.add_argument(
        "--admin-token-env",
        default="CASCADE_ADMIN_TOKEN",
        help="variable with the admin token, to read the ingress's lever ledger (optional)",
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON report (+ PNGs)")
    return parser


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = build_parser().parse_args(argv)
    items = select_items(args.workload, args.quick, args.groups)
    report = asyncio.run(
        run_benchmark(
            args.url, items, args.config, args.concurrency, os.environ.get(args.admin_token_env)
        )
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    plot_cost_vs_quality(report["runs"], args.out.with_name(args.out.stem + "_cost_quality.png"))
    plot_latency_percentiles(
        {name: run["summary"] for name, run in report["runs"].items()},
        args.out.with_name(args.out.stem + "_latency.png"),
    )
    print(format_report(report))
    print(f"report: {args.out}")
    return report


if __name__ == "__main__":
    main()
