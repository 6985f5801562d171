"""Cost report of a running cascade: spend, savings by lever, blended $/M.

Reads the cascade's Prometheus counters, summed over every ingress replica and node:

    python -m serve_app.ops.report                                 # Ray's metrics ports (local Ray)
    python -m serve_app.ops.report --metrics-url http://10.0.0.5:8080/metrics
    python -m serve_app.ops.report --prometheus-url http://prometheus:9090
    python -m serve_app.ops.report --summary-url http://127.0.0.1:8000   # one ingress replica

Without a URL it reads the scrape targets Ray writes for Prometheus
(`/tmp/ray/prom_metrics_service_discovery.json`). Ray's workers push metrics to the node's
agent every few seconds, so the newest requests can take ~10 s to show up there;
`--summary-url` (`GET /admin/cost/summary`, admin token) is immediate but covers only the
replica that answers it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Protocol

import httpx
from prometheus_client.parser import text_string_to_metric_families

from serve_app.accounting.cost_model import LEVERS, cost_summary

RAY_DISCOVERY_FILE = Path("/tmp/ray/prom_metrics_service_discovery.json")
METRIC_PREFIX = "ray_cascade_"
HTTP_TIMEOUT_S = 10.0


class CounterSource(Protocol):
    def sum_by(self, metric: str, label: str | None = None) -> dict[str, float]:
        """Counter `metric` (without prefix and `_total`) summed per value of `label`."""
        ...


class ScrapedCounters:
    """Counters parsed from Prometheus text exposition (Ray's per-node metrics endpoints)."""

    def __init__(self, texts: Iterable[str]):
        self.samples: list[tuple[str, dict[str, str], float]] = []
        for text in texts:
            for family in text_string_to_metric_families(text):
                for sample in family.samples:
                    if sample.name.startswith(METRIC_PREFIX):
                        self.samples.append((sample.name, sample.labels, sample.value))

    def sum_by(self, metric: str, label: str | None = None) -> dict[str, float]:
        name = f"{METRIC_PREFIX}{metric}_total"
        totals: dict[str, float] = defaultdict(float)
        for sample_name, labels, value in self.samples:
            if sample_name == name:
                totals[labels.get(label, "") if label else ""] += value
        return dict(totals)


class PrometheusCounters:
    """The same sums asked of a Prometheus server that scrapes every node."""

    def __init__(self, url: str):
        self.url = url.rstrip("/")

    def sum_by(self, metric: str, label: str | None = None) -> dict[str, float]:
        by = f" by ({label})" if label else ""
        query = f"sum{by}({METRIC_PREFIX}{metric}_total)"
        response = httpx.get(
            f"{self.url}/api/v1/query", params={"query": query}, timeout=HTTP_TIMEOUT_S
        )
        response.raise_for_status()
        return {
            row["metric"].get(label, "") if label else "": float(row["value"][1])
            for row in response.json()["data"]["result"]
        }


def discovered_metrics_urls(discovery_file: Path = RAY_DISCOVERY_FILE) -> list[str]:
    """Scrape targets Ray lists for Prometheus on this machine's cluster."""
    if not discovery_file.exists():
        return []
    groups = json.loads(discovery_file.read_text())
    return [f"http://{target}/metrics" for group in groups for target in group["targets"]]


def scrape(urls: Sequence[str]) -> ScrapedCounters:
    texts = []
    for url in urls:
        try:
            response = httpx.get(url, timeout=HTTP_TIMEOUT_S)
            response.raise_for_status()
        except httpx.HTTPError as e:
            # A stale discovery entry (a dead Ray agent) must not hide the live ones.
            print(f"skipping {url}: {e}", file=sys.stderr)
            continue
        texts.append(response.text)
    return ScrapedCounters(texts)


def summarize(counters: CounterSource) -> dict[str, Any]:
    """The cost summary (same shape as `/admin/cost/summary`) from summed counters."""
    requests_by_cache = counters.sum_by("requests", "cache")
    served_tokens = counters.sum_by("served_tokens", "kind")
    summary = cost_summary(
        spent_usd=counters.sum_by("cost_usd", "component"),
        counterfactual_usd=sum(counters.sum_by("counterfactual_usd").values()),
        served_tokens=sum(served_tokens.values()),
        lever_saved_usd=counters.sum_by("lever_saved_usd", "lever"),
        lever_cost_usd=counters.sum_by("lever_cost_usd", "lever"),
    )
    return summary | {
        "scope": "all replicas",
        "requests": int(sum(requests_by_cache.values())),
        "cache_hits": int(requests_by_cache.get("hit", 0)),
        "escalations": int(sum(counters.sum_by("escalations", "reason").values())),
        "served_prompt_tokens": int(served_tokens.get("prompt", 0)),
        "served_completion_tokens": int(served_tokens.get("completion", 0)),
    }


def fetch_replica_summary(url: str, admin_token: str) -> dict[str, Any]:
    response = httpx.get(
        f"{url.rstrip('/')}/admin/cost/summary",
        headers={"authorization": f"Bearer {admin_token}"},
        timeout=HTTP_TIMEOUT_S,
    )
    response.raise_for_status()
    return response.json()


def format_summary(summary: dict[str, Any]) -> str:
    lines = [
        f"scope: {summary.get('scope')}",
        f"requests {summary['requests']}  cache hits {summary['cache_hits']}  "
        f"escalations {summary['escalations']}  served tokens "
        f"{summary['served_prompt_tokens']} prompt + {summary['served_completion_tokens']} "
        "completion",
        f"spent          ${summary['spent_usd']:.8f}",
        f"all-large, no cache ${summary['counterfactual_usd']:.8f}",
        f"saved          ${summary['saved_usd']:.8f} ({100 * summary['saved_fraction']:.1f} %)",
        f"blended $/M    {summary['blended_usd_per_million_tokens']:.4f}  "
        f"(all-large, no cache: {summary['baseline_usd_per_million_tokens']:.4f})",
        "net savings by lever:",
    ]
    for lever in LEVERS:
        lines.append(f"  {lever:<9} ${summary['net_saved_usd_by_lever'].get(lever, 0.0):+.8f}")
    lines.append("spend by component:")
    for component, usd in sorted(summary["spent_usd_by_component"].items()):
        lines.append(f"  {component:<9} ${usd:.8f}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m serve_app.ops.report",
        description="Spend, savings by lever and blended $/M of a running cascade.",
    )
    source = parser.add_mutually_exclusive_group()
    source.add_argument(
        "--metrics-url",
        action="append",
        help="a Prometheus text endpoint (Ray's node metrics port); repeat for every node. "
        f"Default: the targets in {RAY_DISCOVERY_FILE}",
    )
    source.add_argument("--prometheus-url", help="a Prometheus server scraping the cluster")
    source.add_argument(
        "--summary-url",
        help="the cascade's HTTP address: report one ingress replica's /admin/cost/summary",
    )
    parser.add_argument(
        "--admin-token-env",
        default="CASCADE_ADMIN_TOKEN",
        help="environment variable holding the admin token (for --summary-url)",
    )
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.summary_url:
        summary = fetch_replica_summary(args.summary_url, os.environ.get(args.admin_token_env, ""))
    elif args.prometheus_url:
        summary = summarize(PrometheusCounters(args.prometheus_url))
    else:
        urls = args.metrics_url or discovered_metrics_urls()
        if not urls:
            print("no metrics endpoint: pass --metrics-url or start Ray", file=sys.stderr)
            return 2
        summary = summarize(scrape(urls))
    print(json.dumps(summary, indent=2) if args.json else format_summary(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
