"""The engine-levers benchmark and prompt cost audit of issue 6.

`test_quick_run_reports_every_lever` is the smoke run of `benchmarks.engine_levers --quick`: it
STARTS THREE REAL vLLM CPU ENGINES (one after another, each in its own process group) and a
transformers model: 9 min 54 s on 2 cores with a load average of ~10 from other jobs (engine
start-up and warm-up dominate; less on an idle box). It checks that every lever reports its
figures with sane values (positive throughputs, rates in [0, 1], exact token counts); it never
asserts a timing or a speed-up, which depend on the machine and its neighbours.

The audit arithmetic is checked on its own, without an engine.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.engine_levers import build_parser, options_from_args, run_benchmark
from benchmarks.engine_plan import LeverOptions
from benchmarks.engine_report import plot_report, write_report
from benchmarks.engine_workloads import output_lengths
from benchmarks.prompt_audit import audit_prompts, shared_prefix_length, tier_input_prices


def test_shared_prefix_share_and_trim_savings_follow_the_tokens() -> None:
    shared = list(range(100))
    prompts = [shared + [1000 + i, 2000 + i] for i in range(4)]
    price = {"tier": 2e-6}

    audit = audit_prompts(
        prompts,
        price,
        measured_hit_tokens=288,
        measured_query_tokens=408,
        trim_to_tokens=40,
        block_size_tokens=16,
    )

    assert shared_prefix_length(prompts) == 100
    assert audit["shared_prefix_share_of_prefill"] == pytest.approx(400 / 408)
    # 3 later requests x 96 tokens (6 whole 16-token blocks of the 100 shared).
    assert audit["shared_prefix_hit_rate"] == pytest.approx(288 / 408)
    assert audit["prefix_cache_hit_rate_measured"] == pytest.approx(288 / 408)
    usd = audit["usd_per_million_requests"]["tier"]
    assert usd["prompts"] == pytest.approx(102 * 2.0)
    assert usd["shared_prefix"] == pytest.approx(100 * 2.0)
    assert usd["trim_saves_without_prefix_cache"] == pytest.approx(60 * 2.0)
    # With 288 of the 400 shared tokens served from cache, trimming saves only the rest.
    assert usd["trim_saves_with_prefix_cache"] == pytest.approx(60 * (1 - 288 / 400) * 2.0)


def test_every_shipped_tier_is_priced_from_its_config() -> None:
    prices = tier_input_prices()

    assert set(prices) == {
        f"{config}/{tier}" for config in ("local", "production") for tier in ("small", "large")
    }
    assert all(0 < usd < 1e-3 for usd in prices.values())


def test_command_line_quick_mode_and_output_lengths() -> None:
    options = options_from_args(build_parser().parse_args(["--quick", "--levers", "prefix"]))

    assert options.levers == ("prefix",)
    assert options.batching_requests < LeverOptions().batching_requests
    lengths = output_lengths(200, 16, 384, seed=0)
    assert min(lengths) >= 16 and max(lengths) <= 384
    assert len(set(lengths)) > 50, "output lengths must vary for the batching comparison"


def test_quick_run_reports_every_lever(tmp_path: Path) -> None:
    """Starts vLLM engines (see the module docstring); run it under the live-stack lock."""
    out = tmp_path / "engine_levers.json"
    options = LeverOptions.quick(out=out, progress=False)

    report = run_benchmark(options)
    write_report(report, out)
    plots = plot_report(report, out)

    assert report["errors"] == {}, report["errors"]
    cb = report["continuous_batching"]
    assert cb["continuous_vllm"]["output_tokens"] == cb["output_length_tokens"]["total"]
    assert cb["static_transformers"]["output_tokens"] == cb["output_length_tokens"]["total"]
    assert cb["continuous_vllm"]["output_tokens_per_s"] > 0
    assert cb["static_transformers"]["output_tokens_per_s"] > 0
    assert 0 <= cb["static_transformers"]["padded_slot_fraction"] < 1
    assert cb["throughput_ratio"] > 0

    prefix = report["prefix_caching"]
    assert prefix["system_prompt_tokens"] >= 900
    assert prefix["off"]["prefix_cache_hit_tokens"] == 0
    assert prefix["off"]["cached_prompt_tokens"] == 0
    # Every request after the first reuses the shared system prompt's KV blocks.
    warm_requests = options.prefix_requests - 1
    assert prefix["on"]["cached_prompt_tokens"] >= warm_requests * 800
    assert 0.5 < prefix["on"]["prefix_cache_hit_rate"] <= 1
    assert prefix["on"]["warm_requests_ttft"]["mean_s"] > 0

    spec = report["speculative_decoding"]
    assert set(spec["workloads"]) == {
        f"{w}/{mode}" for w in ("copy", "open") for mode in ("sequential", "batched")
    }
    for workload in spec["workloads"].values():
        assert workload["draft_tokens"] > 0
        assert 0 <= workload["acceptance_rate"] <= 1
        assert workload["on"]["output_tokens"] > 0 and workload["off"]["output_tokens"] > 0
    # Copying the prompt is n-gram lookup's best case: some drafts must be accepted.
    assert spec["workloads"]["copy/sequential"]["accepted_tokens"] > 0

    audit = report["prompt_audit"]
    assert audit["requests"] == options.audit_requests
    assert 0.5 < audit["shared_prefix_share_of_prefill"] < 1
    # Reusing the prefix shared by all is most of the hits (pairs may share a block more).
    measured = audit["prefix_cache_hit_rate_measured"]
    assert 0.8 * audit["shared_prefix_hit_rate"] <= measured <= 1
    for usd in audit["usd_per_million_requests"].values():
        assert 0 < usd["prefix_cache_saves"] < usd["shared_prefix"] < usd["prompts"]

    assert json.loads(out.read_text())["prefix_caching"]["system_prompt_tokens"] > 0
    assert [path.name for path in plots] == ["engine_levers.png", "engine_levers_audit.png"]
    assert all(path.stat().st_size > 0 for path in plots)
