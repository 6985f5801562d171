"""Cost report of a running cascade: spend, savings by lever, blended $/M.

Reads the cascade's Prometheus counters, summed over every ingress replica and node:

    python -m serve_app.ops.report                                 # Ray's metrics ports (local Ray)
    python -m serve_app.ops.report --metrics-url http://10.0.0.5:8080/metrics
    python -m serve_app.ops.report --prometheus http://prometheus:9090
    python -m serve_app.ops.report --prometheus http://prometheus:9090 --plot cascade.png
    python -m serve_app.ops.report --summary-url http://127.0.0.1:8000   # one ingress replica
    python -m serve_app.ops.report --prometheus http://prometheus:9090 --tenant acme

`--tenant` reports one tenant's share: a configured API key's tenant, or `other` for every
caller without one (the counters' `tenant` label, serve_app/accounting/metrics.py).

Without a URL it reads the scrape targets Ray writes for Prometheus
(`/tmp/ray/prom_metrics_service_discovery.json`). Ray's workers push metrics to the node's
agent every few seconds (10 s by default), so the newest requests can take ~10 s to show up
there; `--summary-url` (`GET /admin/cost/summary`, admin token) is immediate but covers only
the replica that answers it.

`--prometheus` asks a Prometheus server that scrapes every node (PromQL over its HTTP API):
the same summary, and with `--plot` the main panels of the Grafana dashboard
(`deploy/grafana/cascade-dashboard.json`: net savings by lever, blended $/M against all-large,
latency) drawn to a PNG over `--since`. On a dev box `python -m devtools.prometheus` runs one.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import httpx
from prometheus_client.parser import text_string_to_metric_families

from serve_app.accounting.cost_model import LEVERS, cost_summary

RAY_DISCOVERY_FILE = Path("/tmp/ray/prom_metrics_service_discovery.json")
METRIC_PREFIX = "ray_cascade_"
HTTP_TIMEOUT_S = 10.0
PLOT_POINTS = 300  # per series: the query_range step is the plotted range / PLOT_POINTS
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(s|m|h|d)$")
_DURATION_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_LEGEND_LABEL = re.compile(r"\{\{\s*(\w+)\s*\}\}")


class PrometheusQueryError(RuntimeError):
    """Prometheus answered a query with an error (bad PromQL, timeout)."""


@dataclass(frozen=True)
class PlotPanel:
    """One panel of the Grafana dashboard: its title, unit and (legend, PromQL) targets.

    The expressions are the dashboard's own (tests/test_prometheus_dashboard.py checks)."""

    title: str
    unit: str
    targets: tuple[tuple[str, str], ...]


_LEVER_NET = (
    "3600 * ((sum by (lever) (rate(ray_cascade_lever_saved_usd_total[5m]))) or "
    "(0 * sum by (lever) (rate(ray_cascade_lever_cost_usd_total[5m])))) - "
    "3600 * ((sum by (lever) (rate(ray_cascade_lever_cost_usd_total[5m]))) or "
    "(0 * sum by (lever) (rate(ray_cascade_lever_saved_usd_total[5m]))))"
)
PLOT_PANELS = (
    PlotPanel(
        "Savings by lever: net dollars per hour (cache, routing, fallback, pinned)",
        "$/h",
        (("{{lever}}", _LEVER_NET),),
    ),
    PlotPanel(
        "Blended $ per million served tokens: cascade vs. all-large without cache",
        "$/M tokens",
        (
            (
                "cascade",
                "1e6 * sum(rate(ray_cascade_cost_usd_total[5m])) / "
                "sum(rate(ray_cascade_served_tokens_total[5m]))",
            ),
            (
                "all-large, no cache",
                "1e6 * sum(rate(ray_cascade_counterfactual_usd_total[5m])) / "
                "sum(rate(ray_cascade_served_tokens_total[5m]))",
            ),
        ),
    ),
    PlotPanel(
        "TTFT and latency",
        "s",
        (
            (
                "TTFT p95",
                "histogram_quantile(0.95, sum by (le) (rate(ray_cascade_ttft_s_bucket[5m])))",
            ),
            (
                "latency p50",
                "histogram_quantile(0.5, sum by (le) "
                "(rate(ray_cascade_request_latency_s_bucket[5m])))",
            ),
            (
                "latency p99",
                "histogram_quantile(0.99, sum by (le) "
                "(rate(ray_cascade_request_latency_s_bucket[5m])))",
            ),
        ),
    ),
)


class CounterSource(Protocol):
    def sum_by(
        self, metric: str, label: str | None = None, *, tenant: str | None = None
    ) -> dict[str, float]:
        """Counter `metric` (without prefix and `_total`) summed per value of `label`, over
        every tenant or only `tenant`'s series."""
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

    def sum_by(
        self, metric: str, label: str | None = None, *, tenant: str | None = None
    ) -> dict[str, float]:
        name = f"{METRIC_PREFIX}{metric}_total"
        totals: dict[str, float] = defaultdict(float)
        for sample_name, labels, value in self.samples:
            if sample_name == name and tenant in (None, labels.get("tenant")):
                totals[labels.get(label, "") if label else ""] += value
        return dict(totals)


def _prometheus_api(url: str, endpoint: str, params: dict[str, str | float]) -> list[dict]:
    response = httpx.get(
        f"{url.rstrip('/')}/api/v1/{endpoint}", params=params, timeout=HTTP_TIMEOUT_S
    )
    body = (
        response.json()
        if response.headers.get("content-type", "").startswith("application/json")
        else {}
    )
    if response.status_code != 200 or body.get("status") != "success":
        raise PrometheusQueryError(
            f"{endpoint} {params.get('query')!r}: HTTP {response.status_code} "
            f"{body.get('errorType', '')} {body.get('error', response.text[:200])}"
        )
    return body["data"]["result"]


def prometheus_query(url: str, promql: str, at_s: float | None = None) -> list[dict]:
    """Instant query: `[{"metric": {labels}, "value": [ts, "value"]}, ...]`."""
    params: dict[str, str | float] = {"query": promql}
    if at_s is not None:
        params["time"] = at_s
    return _prometheus_api(url, "query", params)


def prometheus_query_range(
    url: str, promql: str, start_s: float, end_s: float, step_s: float
) -> list[dict]:
    """Range query: `[{"metric": {labels}, "values": [[ts, "value"], ...]}, ...]`."""
    params: dict[str, str | float] = {
        "query": promql,
        "start": start_s,
        "end": end_s,
        "step": step_s,
    }
    return _prometheus_api(url, "query_range", params)


class PrometheusCounters:
    """The same sums asked of a Prometheus server that scrapes every node."""

    def __init__(self, url: str):
        self.url = url.rstrip("/")

    def sum_by(
        self, metric: str, label: str | None = None, *, tenant: str | None = None
    ) -> dict[str, float]:
        by = f" by ({label})" if label else ""
        # json.dumps quotes and escapes the name as a PromQL string literal.
        selector = f"{{tenant={json.dumps(tenant)}}}" if tenant is not None else ""
        rows = prometheus_query(self.url, f"sum{by}({METRIC_PREFIX}{metric}_total{selector})")
        return {
            row["metric"].get(label, "") if label else "": float(row["value"][1]) for row in rows
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


def summarize(counters: CounterSource, tenant: str | None = None) -> dict[str, Any]:
    """The cost summary (same shape as `/admin/cost/summary`) from summed counters, of every
    tenant or of one."""

    def sum_by(metric: str, label: str | None = None) -> dict[str, float]:
        return counters.sum_by(metric, label, tenant=tenant)

    requests_by_cache = sum_by("requests", "cache")
    served_tokens = sum_by("served_tokens", "kind")
    summary = cost_summary(
        spent_usd=sum_by("cost_usd", "component"),
        counterfactual_usd=sum(sum_by("counterfactual_usd").values()),
        served_tokens=sum(served_tokens.values()),
        lever_saved_usd=sum_by("lever_saved_usd", "lever"),
        lever_cost_usd=sum_by("lever_cost_usd", "lever"),
    )
    return summary | {
        "scope": "all replicas",
        "tenant": tenant,
        "requests": int(sum(requests_by_cache.values())),
        "cache_hits": int(requests_by_cache.get("hit", 0)),
        "escalations": int(sum(sum_by("escalations", "reason").values())),
        "served_prompt_tokens": int(served_tokens.get("prompt", 0)),
        "served_completion_tokens": int(served_tokens.get("completion", 0)),
    }


def fetch_replica_summary(url: str, admin_token: str, tenant: str | None = None) -> dict[str, Any]:
    response = httpx.get(
        f"{url.rstrip('/')}/admin/cost/summary",
        params={"tenant": tenant} if tenant is not None else None,
        headers={"authorization": f"Bearer {admin_token}"},
        timeout=HTTP_TIMEOUT_S,
    )
    response.raise_for_status()
    return response.json()


def format_summary(summary: dict[str, Any]) -> str:
    tenant = summary.get("tenant")
    lines = [
        f"scope: {summary.get('scope')}" + (f", tenant {tenant}" if tenant else ""),
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


def parse_duration_s(text: str) -> float:
    """`90s`, `15m`, `1h`, `2d` (Prometheus-style) in seconds."""
    match = _DURATION.match(text.strip())
    if match is None:
        raise argparse.ArgumentTypeError(f"not a duration like 15m or 1h: {text!r}")
    return float(match.group(1)) * _DURATION_UNIT_S[match.group(2)]


def legend(template: str, labels: dict[str, str]) -> str:
    """A Grafana legend format (`{{lever}}`) filled in with a series' labels."""
    return _LEGEND_LABEL.sub(lambda match: labels.get(match.group(1), ""), template)


def plot_panels(url: str, path: Path, since_s: float, end_s: float | None = None) -> dict[str, int]:
    """Draw PLOT_PANELS from `url`'s query_range over the last `since_s` seconds to a PNG.

    Returns the number of series drawn in each panel (0: the panel would say "No data").
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.dates as mdates
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise SystemExit("--plot needs matplotlib: pip install matplotlib") from e
    from datetime import datetime

    end_s = time.time() if end_s is None else end_s
    start_s = end_s - since_s
    step_s = max(1.0, since_s / PLOT_POINTS)
    figure, axes = plt.subplots(
        len(PLOT_PANELS), 1, figsize=(11, 3.2 * len(PLOT_PANELS)), sharex=True
    )
    drawn: dict[str, int] = {}
    for ax, panel in zip(axes, PLOT_PANELS, strict=True):
        drawn[panel.title] = 0
        for template, expr in panel.targets:
            for series in prometheus_query_range(url, expr, start_s, end_s, step_s):
                points = [
                    (datetime.fromtimestamp(float(ts)), float(value))
                    for ts, value in series["values"]
                    if math.isfinite(float(value))
                ]
                if not points:
                    continue
                times, values = zip(*points, strict=True)
                ax.plot(times, values, label=legend(template, series["metric"]) or template)
                drawn[panel.title] += 1
        ax.set_title(panel.title, fontsize=10)
        ax.set_ylabel(panel.unit)
        ax.grid(alpha=0.3)
        ax.set_xlim(datetime.fromtimestamp(start_s), datetime.fromtimestamp(end_s))
        ax.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M"))
        if drawn[panel.title]:
            ax.legend(fontsize=8, loc="upper left")
        else:
            ax.text(0.5, 0.5, "No data", transform=ax.transAxes, ha="center", va="center")
    figure.suptitle(f"llm-cascade from {url}, last {since_s / 60:g} min", fontsize=11)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return drawn


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
    source.add_argument(
        "--prometheus",
        "--prometheus-url",
        dest="prometheus",
        help="a Prometheus server scraping the cluster, e.g. http://127.0.0.1:9090",
    )
    source.add_argument(
        "--summary-url",
        help="the cascade's HTTP address: report one ingress replica's /admin/cost/summary",
    )
    parser.add_argument(
        "--admin-token-env",
        default="CASCADE_ADMIN_TOKEN",
        help="environment variable holding the admin token (for --summary-url)",
    )
    parser.add_argument(
        "--tenant",
        help="summarize only this tenant's requests: a configured API key's tenant, or `other` "
        "for every caller without one (--plot still draws every tenant)",
    )
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    parser.add_argument(
        "--plot",
        type=Path,
        metavar="PNG",
        help="with --prometheus: draw savings by lever, blended $/M against all-large and "
        "latency over --since to this PNG",
    )
    parser.add_argument(
        "--since",
        type=parse_duration_s,
        default=parse_duration_s("1h"),
        metavar="DURATION",
        help="time range of --plot, e.g. 15m, 6h (default 1h)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.plot and not args.prometheus:
        parser.error("--plot reads time series from a Prometheus server: add --prometheus URL")
    if args.summary_url:
        admin_token = os.environ.get(args.admin_token_env, "")
        summary = fetch_replica_summary(args.summary_url, admin_token, args.tenant)
    elif args.prometheus:
        summary = summarize(PrometheusCounters(args.prometheus), args.tenant)
    else:
        urls = args.metrics_url or discovered_metrics_urls()
        if not urls:
            print("no metrics endpoint: pass --metrics-url or start Ray", file=sys.stderr)
            return 2
        summary = summarize(scrape(urls), args.tenant)
    print(json.dumps(summary, indent=2) if args.json else format_summary(summary))
    if args.plot:
        drawn = plot_panels(args.prometheus, args.plot, args.since)
        empty = [title for title, count in drawn.items() if not count]
        print(
            f"wrote {args.plot}" + (f" (no data: {'; '.join(empty)})" if empty else ""),
            file=sys.stderr,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
