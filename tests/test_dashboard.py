"""The Grafana dashboard only plots metrics the cascade actually declares."""

from __future__ import annotations

import json
import re
from pathlib import Path

from serve_app.accounting.metrics import CacheMetrics, IngressMetrics

DASHBOARD = Path(__file__).resolve().parent.parent / "deploy" / "grafana" / "cascade-dashboard.json"


def _declared_names() -> set[str]:
    names = set()
    for metrics in (CacheMetrics.create(), IngressMetrics.create()):
        for metric in vars(metrics).values():
            names.add(metric.info["name"])
    return names


def test_every_cascade_metric_in_the_dashboard_is_declared() -> None:
    exprs = [t["expr"] for p in json.loads(DASHBOARD.read_text())["panels"] for t in p["targets"]]
    used = set(re.findall(r"ray_(cascade_\w+)", " ".join(exprs)))
    declared = _declared_names()
    for name in used:
        base = re.sub(r"_(total|bucket|count|sum)$", "", name)
        assert base in declared, f"dashboard plots {name}, but no metric {base} is declared"
    assert len(used) >= 8


def test_dashboard_has_the_operator_panels() -> None:
    titles = " ".join(p["title"] for p in json.loads(DASHBOARD.read_text())["panels"]).lower()
    for needed in (
        "tokens per dollar",
        "savings",
        "tier split",
        "cache hit rate",
        "ttft",
        "kv-cache",
        "queue depth",
        "spend by tenant",
    ):
        assert needed in titles, needed


def test_spend_by_tenant_is_plotted_by_the_tenant_label_the_counters_carry() -> None:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    (panel,) = [p for p in panels if p["title"].lower().startswith("spend by tenant")]
    assert [t["legendFormat"] for t in panel["targets"]] == ["{{tenant}}"]
    assert "sum by (tenant) (rate(ray_cascade_cost_usd_total" in panel["targets"][0]["expr"]
    assert "tenant" in IngressMetrics.create().cost_usd.info["tag_keys"]
