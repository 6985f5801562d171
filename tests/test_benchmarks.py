"""The benchmarks of issue 6: their workload, and a smoke run of each against the live stack.

The smoke runs check that every benchmark runs end to end and reports what it promises
(latency percentiles, dollars, lever shares, overhead ratios); they never assert a timing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import load_generator, savings_benchmark
from benchmarks.build_workload import MMLU_DIR, build_workload
from benchmarks.load_generator import RequestResult, select_items, summarize
from benchmarks.loadgen import Outcome, ramp_offsets
from benchmarks.overload import overload_report
from benchmarks.workload import DEFAULT_WORKLOAD, load_workload
from serve_app.ops.report import discovered_metrics_urls

REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.skipif(not MMLU_DIR.exists(), reason="the shared MMLU data is not on this machine")
def test_shipped_workload_is_what_the_builder_makes() -> None:
    shipped = load_workload(DEFAULT_WORKLOAD)
    assert [item.id for item in shipped] == [
        item.id for item in build_workload(30, 40, 0.25, 0.4, seed=7)
    ]
    kinds = {item.kind for item in shipped}
    assert {"mmlu_easy", "mmlu_hard", "faq_first", "faq_paraphrase", "faq_repeat"} <= kinds
    assert {item.length for item in shipped} == {"short", "long"}
    position = {item.id: n for n, item in enumerate(shipped)}
    for item in shipped:
        if item.kind in ("faq_paraphrase", "faq_repeat"):
            assert position[item.id] > position[f"{item.group}-asked"]


def test_quick_workload_repeats_questions_and_asks_for_short_answers() -> None:
    items = select_items(DEFAULT_WORKLOAD, quick=True)
    groups = [item.group for item in items]
    assert len(set(groups)) < len(groups)  # something to hit the cache with
    assert {item.length for item in items} == {"short"}


def test_summary_counts_failures_by_class_and_prices_served_tokens() -> None:
    ok = RequestResult(
        id="a", kind="k", group="a", ok=True, ttft_s=0.1, latency_s=0.5,
        prompt_tokens=600, completion_tokens=400, cost_usd=0.001, counterfactual_usd=0.004,
    )  # fmt: skip
    failed = RequestResult(id="b", kind="k", group="b", ok=False, error_class="http_5xx")
    summary = summarize([ok, failed], duration_s=2.0)
    assert summary["succeeded"] == 1 and summary["failed_by_class"] == {"http_5xx": 1}
    assert summary["usd_per_million_tokens"] == pytest.approx(1.0)
    assert summary["counterfactual_usd_per_million_tokens"] == pytest.approx(4.0)
    assert summary["output_tokens_per_s"] == pytest.approx(200)
    assert summary["latency_ms"]["p50"] == pytest.approx(500)


def test_quick_benchmarks_run_against_the_stack(cascade_url: str, tmp_path: Path) -> None:
    load_out = tmp_path / "load.json"
    load_generator.main(["--url", cascade_url, "--quick", "--concurrency", "4", "--out",
                         str(load_out)])  # fmt: skip
    load = json.loads(load_out.read_text())["summary"]
    assert load["succeeded"] == load["requests"] > 0
    assert load["ttft_ms"]["p50"] > 0 and load["usd_per_million_tokens"] > 0
    assert load_out.with_suffix(".png").stat().st_size > 0

    savings_out = tmp_path / "savings.json"
    report = savings_benchmark.main(["--url", cascade_url, "--quick", "--out", str(savings_out)])
    runs = report["runs"]
    baseline = runs["baseline (all-large, no cache)"]["summary"]
    assert baseline["by_tier"] == {"large": baseline["succeeded"]}
    assert set(baseline["by_cache"]) == {"bypass"}
    assert "hit" in runs["cache only"]["summary"]["by_cache"]
    # Answers served from the cache cost less per token than the all-large baseline.
    assert (
        runs["cache only"]["summary"]["usd_per_million_tokens"]
        < (baseline["usd_per_million_tokens"])
    )
    assert report["levers"]["cache_alone_saving_fraction"] > 0
    assert (tmp_path / "savings_cost_quality.png").stat().st_size > 0

    if not discovered_metrics_urls():
        return  # the stack's Ray runs elsewhere (CASCADE_URL): no driver can attach here
    overhead_out = tmp_path / "overhead.json"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    subprocess.run(
        [sys.executable, "-m", "benchmarks.overhead_benchmark", "--url", cascade_url, "--quick",
         "--out", str(overhead_out)],
        cwd=REPO_ROOT, env=env, check=True, timeout=180,
    )  # fmt: skip
    overhead = json.loads(overhead_out.read_text())
    assert set(overhead["ways"]) == {"direct", "cascade miss", "cascade bypass"}
    assert overhead["ways"]["cascade miss"]["cache_results"] == ["miss"]
    assert overhead["ways"]["cascade bypass"]["throughput_ratio"] > 0
    # Every cascade response carried the ingress's own measure of what it added.
    assert overhead["ways"]["cascade miss"]["gateway_ms"]["count"] == overhead["latency_requests"]
    assert overhead["ways"]["direct"]["gateway_ms"] is None


def test_overload_report_tells_the_opening_burst_from_the_steady_overload() -> None:
    retry = {"retry-after": "3"}
    opening = [Outcome(0.01 * i, 0.9, 503, "http_503", retry) for i in range(20)]
    steady = [Outcome(10.0 + i, 0.02 + 0.001 * i, 503, "http_503", retry) for i in range(40)]
    answered = [Outcome(1.0, 12.0, 200, "ok", {})]
    report = overload_report([*opening, *steady, *answered], clients=128, wall_s=60.0)
    assert report["rejected"] == 60 and report["lost"] == 0
    assert report["rejected_latency_ms"]["max"] == pytest.approx(900)
    assert report["rejected_after_opening_ms"]["max"] == pytest.approx(59)
    assert [w["refused"] for w in report["rejected_by_window"]] == [20, 10, 10, 10, 10]


def test_load_clients_start_spread_over_the_ramp() -> None:
    assert ramp_offsets(4, 2.0) == [0.0, 0.5, 1.0, 1.5]
    assert ramp_offsets(3, 0.0) == [0.0, 0.0, 0.0]  # all in the same instant
