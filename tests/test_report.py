"""The cost report sums the cascade's counters over replicas and nodes as Ray exports them."""

from __future__ import annotations

import json

import pytest

from serve_app.ops.report import ScrapedCounters, discovered_metrics_urls, format_summary, summarize

# Two ingress replicas' counters, as two nodes' metrics endpoints expose them.
NODE_A = """
# HELP ray_cascade_cost_usd_total Dollars spent
# TYPE ray_cascade_cost_usd_total counter
ray_cascade_cost_usd_total{component="small",replica="a"} 0.002
ray_cascade_cost_usd_total{component="cache",replica="a"} 0.0001
# TYPE ray_cascade_counterfactual_usd_total counter
ray_cascade_counterfactual_usd_total{replica="a"} 0.01
# TYPE ray_cascade_served_tokens_total counter
ray_cascade_served_tokens_total{kind="prompt",replica="a"} 1000
ray_cascade_served_tokens_total{kind="completion",replica="a"} 1000
# TYPE ray_cascade_requests_total counter
ray_cascade_requests_total{cache="hit",tier="small",escalated="false",route="routed"} 3
ray_cascade_requests_total{cache="miss",tier="small",escalated="false",route="routed"} 5
# TYPE ray_cascade_lever_saved_usd_total counter
ray_cascade_lever_saved_usd_total{lever="cache"} 0.005
ray_cascade_lever_saved_usd_total{lever="routing"} 0.003
# TYPE ray_cascade_lever_cost_usd_total counter
ray_cascade_lever_cost_usd_total{lever="cache"} 0.0001
"""
NODE_B = """
# TYPE ray_cascade_cost_usd_total counter
ray_cascade_cost_usd_total{component="large",replica="b"} 0.003
# TYPE ray_cascade_counterfactual_usd_total counter
ray_cascade_counterfactual_usd_total{replica="b"} 0.003
# TYPE ray_cascade_served_tokens_total counter
ray_cascade_served_tokens_total{kind="prompt",replica="b"} 500
ray_cascade_served_tokens_total{kind="completion",replica="b"} 500
# TYPE ray_cascade_requests_total counter
ray_cascade_requests_total{cache="miss",tier="large",escalated="true",route="routed"} 2
# TYPE ray_cascade_escalations_total counter
ray_cascade_escalations_total{reason="empty"} 2
# TYPE ray_vllm_num_requests_running gauge
ray_vllm_num_requests_running 4
"""


def test_report_sums_every_replica_and_node() -> None:
    summary = summarize(ScrapedCounters([NODE_A, NODE_B]))
    assert summary["requests"] == 10 and summary["cache_hits"] == 3
    assert summary["escalations"] == 2
    assert summary["spent_usd"] == pytest.approx(0.0051)
    assert summary["counterfactual_usd"] == pytest.approx(0.013)
    assert summary["blended_usd_per_million_tokens"] == pytest.approx(0.0051 / 3000 * 1e6)
    assert summary["net_saved_usd_by_lever"]["cache"] == pytest.approx(0.0049)
    assert summary["net_saved_usd_by_lever"]["routing"] == pytest.approx(0.003)
    text = format_summary(summary)
    assert "blended $/M" in text and "cache" in text


def test_report_finds_rays_scrape_targets(tmp_path) -> None:
    discovery = tmp_path / "discovery.json"
    discovery.write_text(json.dumps([{"labels": {"job": "ray"}, "targets": ["10.0.0.1:8080"]}]))
    assert discovered_metrics_urls(discovery) == ["http://10.0.0.1:8080/metrics"]
    assert discovered_metrics_urls(tmp_path / "missing.json") == []


# One replica's counters with the tenant label: a configured tenant and everyone else.
TENANTS = """
# TYPE ray_cascade_cost_usd_total counter
ray_cascade_cost_usd_total{component="small",tenant="acme"} 0.002
ray_cascade_cost_usd_total{component="cache",tenant="acme"} 0.0001
ray_cascade_cost_usd_total{component="large",tenant="other"} 0.003
# TYPE ray_cascade_counterfactual_usd_total counter
ray_cascade_counterfactual_usd_total{tenant="acme"} 0.01
ray_cascade_counterfactual_usd_total{tenant="other"} 0.003
# TYPE ray_cascade_served_tokens_total counter
ray_cascade_served_tokens_total{kind="prompt",tenant="acme"} 1000
ray_cascade_served_tokens_total{kind="completion",tenant="acme"} 1000
ray_cascade_served_tokens_total{kind="prompt",tenant="other"} 500
# TYPE ray_cascade_requests_total counter
ray_cascade_requests_total{cache="hit",tier="small",escalated="false",tenant="acme"} 3
ray_cascade_requests_total{cache="miss",tier="large",escalated="true",tenant="other"} 2
# TYPE ray_cascade_escalations_total counter
ray_cascade_escalations_total{reason="empty",tenant="other"} 2
# TYPE ray_cascade_lever_saved_usd_total counter
ray_cascade_lever_saved_usd_total{lever="cache",tenant="acme"} 0.005
"""


def test_report_filters_by_tenant() -> None:
    counters = ScrapedCounters([TENANTS])
    acme, other = summarize(counters, "acme"), summarize(counters, "other")
    assert (acme["requests"], acme["cache_hits"], acme["escalations"]) == (3, 3, 0)
    assert acme["spent_usd"] == pytest.approx(0.0021)
    assert acme["spent_usd_by_component"] == pytest.approx({"small": 0.002, "cache": 0.0001})
    assert acme["blended_usd_per_million_tokens"] == pytest.approx(0.0021 / 2000 * 1e6)
    assert acme["net_saved_usd_by_lever"]["cache"] == pytest.approx(0.005)
    assert (other["requests"], other["escalations"]) == (2, 2)
    assert other["spent_usd"] == pytest.approx(0.003)
    everyone = summarize(counters)
    assert everyone["tenant"] is None and everyone["requests"] == 5
    assert everyone["spent_usd"] == pytest.approx(acme["spent_usd"] + other["spent_usd"])
    assert "tenant acme" in format_summary(acme)
    assert summarize(counters, "nobody")["requests"] == 0
