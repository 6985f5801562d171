"""The cache benchmark of issue 3: its smoke run, its labelled pairs, and the no-false-hit promise.

The benchmark prints timings and these tests never assert one; they check that every part
runs and reports, and that the cache as configured by default serves none of the near-miss
pairs (negations, other numbers, entities, directions, polarity), through the shipped embedder
(`CacheConfig().embedding_model`) and the real Edge store.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.cache_benchmark import build_parser, options_from_args, run_benchmark
from benchmarks.cache_hit_rates import evaluate_pairs
from benchmarks.cache_latency import STORE_NAMES
from benchmarks.cache_options import BenchmarkOptions
from benchmarks.cache_pairs import NEAR_MISS_KINDS, Pair, load_pairs
from benchmarks.cache_report import format_report, plot_report, write_report
from devtools.models import prepare_source
from serve_app.cache.embedder import Embedder, make_embedder
from serve_app.config import CacheConfig

DEFAULT_THRESHOLD = CacheConfig().similarity_threshold


@pytest.fixture(scope="module")
def embedder() -> Embedder:
    prepare_source(CacheConfig().embedding_model)
    return make_embedder(CacheConfig().embedding_model, CacheConfig().embedding_threads)


@pytest.fixture(scope="module")
def pairs() -> list[Pair]:
    return load_pairs()


def test_pair_set_has_both_labels_for_every_near_miss_kind(pairs: list[Pair]) -> None:
    labels = {(pair.kind, pair.should_hit) for pair in pairs}

    for kind in NEAR_MISS_KINDS:
        assert (kind, True) in labels, f"no {kind} pair that should hit"
        assert (kind, False) in labels, f"no {kind} pair that must not hit"
    assert ("paraphrase", True) in labels
    assert len({(pair.stored, pair.asked) for pair in pairs}) == len(pairs), "duplicate pairs"
    assert all(pair.stored != pair.asked for pair in pairs), "identical questions hit exactly"


def test_quick_run_reports_every_part(tmp_path: Path, embedder: Embedder) -> None:
    out = tmp_path / "cache_benchmark.json"
    options = BenchmarkOptions.quick(out=out, queries=10, progress=False)

    report = run_benchmark(options, embedder=embedder)
    write_report(report, out)
    plots = plot_report(report, out)

    latency = report["store_latency"]
    assert [(row["store"], row["entries"]) for row in latency] == [
        (name, 1_000) for name in STORE_NAMES
    ]
    for row in latency:
        assert 0 < row["search_p50_ms"] <= row["search_p99_ms"]
        assert 0 < row["exact_p50_ms"] <= row["exact_p99_ms"]
        assert row["upserts_per_s"] > 0
        # Half the queries are near-duplicates of a stored entry (cosine ~0.95), half random:
        # any other fraction means the thresholded, partition-filtered search is broken.
        assert row["search_hit_fraction"] == pytest.approx(0.5, abs=0.01)

    sweep = report["pairs"]["sweep"]
    settings = {(point["verify_candidates"], point["threshold"]) for point in sweep}
    assert settings == {(v, t) for v in (False, True) for t in options.swept_thresholds()}
    assert DEFAULT_THRESHOLD in options.swept_thresholds()
    for point in sweep:
        assert set(point["by_kind"]) <= {pair["kind"] for pair in report["pairs"]["pairs"]}
        assert 0 <= point["hits"] <= point["positives"]
        assert point["near_miss_negatives"] > 0
        assert 0 <= point["near_miss_false_hits"] <= point["near_miss_negatives"]
    assert {"threshold", "meets_requirement", "reason"} <= set(report["pairs"]["recommended"])
    assert report["ingress"] == {"skipped": "no --url given"}

    assert json.loads(out.read_text())["pairs"]["evaluated"] == report["pairs"]["evaluated"]
    assert [path.name for path in plots] == [
        "cache_benchmark_thresholds.png",
        "cache_benchmark_latency.png",
    ]
    assert all(path.stat().st_size > 0 for path in plots)
    assert "Recommended threshold" in format_report(report)


def test_command_line_selects_quick_mode_and_parts(tmp_path: Path) -> None:
    parser = build_parser()

    quick = options_from_args(parser.parse_args(["--quick", "--out", str(tmp_path / "r.json")]))
    pairs_only = options_from_args(parser.parse_args(["--sizes", "--thresholds", "0.9"]))

    assert quick.sizes == (1_000,) and quick.pairs_per_group is not None
    assert quick.out == tmp_path / "r.json" and quick.url is None
    assert pairs_only.sizes == () and pairs_only.pairs_per_group is None
    assert pairs_only.swept_thresholds() == sorted({0.9, DEFAULT_THRESHOLD})


def test_no_near_miss_pair_hits_at_the_configured_threshold(
    pairs: list[Pair], embedder: Embedder
) -> None:
    """Issue 3: zero false hits on the near-miss set at the chosen threshold, guard on."""
    near_misses = [p for p in pairs if p.kind in NEAR_MISS_KINDS and not p.should_hit]

    (point,) = evaluate_pairs(
        near_misses, embedder, thresholds=[DEFAULT_THRESHOLD], verify_options=[True]
    )

    served = [
        f"[{o.pair.kind}, cos {o.cosine:.3f}] {o.pair.stored!r} -> {o.pair.asked!r}"
        for o in point.false_hits
    ]
    assert not served, (
        f"{len(served)} near-miss pair(s) served at threshold {DEFAULT_THRESHOLD}:\n"
        + "\n".join(served)
    )


def test_the_pair_evaluation_leaves_the_operators_cache_alone(
    pairs: list[Pair], embedder: Embedder, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The sweep stores every pair set's questions: in a temporary shard, never in the default
    `edge_path`, where the operator's `make run` keeps its answers (and may hold the shard)."""
    monkeypatch.setenv("HOME", str(tmp_path))
    evaluate_pairs(pairs[:4], embedder, thresholds=[DEFAULT_THRESHOLD], verify_options=[True])
    assert not any(tmp_path.rglob("*")), sorted(tmp_path.rglob("*"))
