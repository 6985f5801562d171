"""Semantic cache benchmark (issue 3): store latency, hit/false-hit rates, ingress hit vs miss.

Three parts, each printed as a table and written to one JSON file, plus two PNG plots:

a) Lookup latency of the vector stores alone (embedding excluded): Qdrant Edge embedded, and
   qdrant-client's local mode (the pure-Python baseline the embedded store replaces), at 1k,
   10k and 100k entries spread over partitions and searched inside one partition, as serving
   does. Also exact-path (`get_exact`) latency and one-at-a-time upsert throughput.
b) Hit rate and false-hit rate on the hand-labelled pairs in `benchmarks/data/cache_pairs.jsonl`,
   through `SemanticCache` with the real embedder and the Edge store, sweeping the similarity
   threshold with and without the near-miss guard (`verify_candidates`), and the threshold the
   measurements recommend.
c) End-to-end latency of a cache miss and of a cache hit through a running HTTP ingress (`--url`).

    nice -n 10 python -m benchmarks.cache_benchmark          # full run, a few minutes
    python -m benchmarks.cache_benchmark --quick             # smoke run
    python -m benchmarks.cache_benchmark --url http://127.0.0.1:8000

It prints figures and asserts nothing about timings: machines (and their neighbours) differ.

This module is the command line and the run; the parts are `cache_options` (what a run
measures), `cache_pairs` (the labelled pairs), `cache_latency` (parts a and c),
`cache_hit_rates` (part b) and `cache_report` (tables, plots, JSON).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict
from importlib import metadata
from pathlib import Path
from typing import Any

from benchmarks.cache_hit_rates import (
    MemoEmbedder,
    PairOutcome,
    SweepPoint,
    evaluate_pairs,
    recommend_threshold,
)
from benchmarks.cache_latency import measure_ingress, percentile, run_latency
from benchmarks.cache_options import (
    DEFAULT_OUT,
    EMBEDDING_DIM,
    FULL_SIZES,
    PAIRS_PATH,
    BenchmarkOptions,
)
from benchmarks.cache_pairs import Pair, first_of_each_group, load_pairs
from benchmarks.cache_report import format_report, plot_report, write_report
from serve_app.cache.embedder import Embedder, make_embedder
from serve_app.config import CacheConfig

# ---- the run ----------------------------------------------------------------------------


def run_benchmark(options: BenchmarkOptions, *, embedder: Embedder | None = None) -> dict[str, Any]:
    """Run every part `options` selects; returns the report that is written as JSON."""
    report: dict[str, Any] = {
        "generated_at_unix_s": time.time(),
        "machine": _machine(),
        "options": {
            **asdict(options),
            "pairs_path": str(options.pairs_path),
            "out": str(options.out),
        },
        "configured_default": {
            "embedding_model": CacheConfig().embedding_model,
            "similarity_threshold": CacheConfig().similarity_threshold,
            "verify_candidates": CacheConfig().verify_candidates,
        },
    }
    latency = run_latency(options) if options.sizes else []
    report["store_latency"] = [asdict(result) for result in latency]
    report["pairs"] = _pairs_report(options, embedder) if options.evaluate_pairs else None
    if options.url is None:
        report["ingress"] = {"skipped": "no --url given"}
    else:
        report["ingress"] = asdict(measure_ingress(options))
    report["machine"]["loadavg_at_end"] = list(os.getloadavg())
    report["machine"]["torch_threads"] = _machine()["torch_threads"]
    return report


def _pairs_report(options: BenchmarkOptions, embedder: Embedder | None) -> dict[str, Any]:
    all_pairs = load_pairs(options.pairs_path)
    pairs = (
        first_of_each_group(all_pairs, options.pairs_per_group)
        if options.pairs_per_group
        else all_pairs
    )
    if embedder is None:
        embedder = make_embedder(
            options.embedding_model or CacheConfig().embedding_model,
            CacheConfig().embedding_threads,
        )
    memo = MemoEmbedder(embedder)
    points = evaluate_pairs(
        pairs, memo, thresholds=options.swept_thresholds(), progress=options.progress
    )
    recommended = recommend_threshold(points, verify_candidates=True)
    without_guard = recommend_threshold(points, verify_candidates=False)
    chosen = next(
        (p for p in points if p.verify_candidates and p.threshold == recommended.threshold), None
    )
    return {
        "path": str(options.pairs_path),
        "evaluated": len(pairs),
        "in_file": len(all_pairs),
        "counts": _pair_counts(pairs),
        "embedding_p50_ms": percentile(memo.latencies_ms, 50),
        "embedding_p99_ms": percentile(memo.latencies_ms, 99),
        "sweep": [point.summary() for point in points],
        "recommended": asdict(recommended),
        "recommended_without_guard": asdict(without_guard),
        "at_recommended": _details(chosen) if chosen else None,
        "pairs": [_pair_detail(o) for o in points[0].outcomes],
    }


def _pair_counts(pairs: Sequence[Pair]) -> dict[str, dict[str, int]]:
    counts: dict[str, dict[str, int]] = {}
    for pair in pairs:
        kind = counts.setdefault(pair.kind, {"should_hit": 0, "should_not_hit": 0})
        kind["should_hit" if pair.should_hit else "should_not_hit"] += 1
    return counts


def _pair_detail(outcome: PairOutcome) -> dict[str, Any]:
    return {
        **asdict(outcome.pair),
        "cosine": round(outcome.cosine, 4),
        "guard_reason": outcome.guard_reason,
    }


def _details(point: SweepPoint) -> dict[str, Any]:
    return {
        "threshold": point.threshold,
        "false_hits": [_pair_detail(o) for o in point.false_hits],
        "missed": [_pair_detail(o) for o in point.missed],
    }


def _machine() -> dict[str, Any]:
    versions = {}
    for dist in (
        "qdrant-edge-py",
        "qdrant-client",
        "sentence-transformers",
        "torch",
        "onnxruntime",
    ):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = None
    torch = sys.modules.get("torch")  # loaded by the embedder, if part (b) runs
    return {
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads() if torch is not None else None,
        "loadavg_at_start": list(os.getloadavg()),
        "python": sys.version.split()[0],
        "versions": versions,
    }


# ---- command line ------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.cache_benchmark",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: 1k entries, few queries, 3 pairs per group, 3 thresholds",
    )
    parser.add_argument(
        "--sizes",
        type=int,
        nargs="*",
        default=None,
        help=f"store sizes for part (a); none skips it (default {FULL_SIZES})",
    )
    parser.add_argument(
        "--queries",
        type=int,
        default=None,
        help="timed searches per size on the Edge store (default 1000, quick 30)",
    )
    parser.add_argument(
        "--partitions", type=int, default=50, help="partitions of part (a) (%(default)s)"
    )
    parser.add_argument(
        "--dim", type=int, default=EMBEDDING_DIM, help="vector size of part (a) (%(default)s)"
    )
    parser.add_argument(
        "--thresholds",
        type=float,
        nargs="+",
        default=None,
        help="thresholds swept on the pairs (default 0.80 … 0.98)",
    )
    parser.add_argument("--skip-pairs", action="store_true", help="skip part (b)")
    parser.add_argument(
        "--embedding-model",
        default=None,
        help="embedder of part (b), e.g. packaged://all-minilm-l6-v2 for torch fp32 "
        f"(default: the configured {CacheConfig().embedding_model})",
    )
    parser.add_argument(
        "--pairs",
        type=Path,
        default=PAIRS_PATH,
        help="labelled pair file (benchmarks/data/cache_pairs.jsonl)",
    )
    parser.add_argument(
        "--url",
        default=None,
        help="base URL of a running cascade, e.g. http://127.0.0.1:8000 (part c)",
    )
    parser.add_argument(
        "--repetitions",
        type=int,
        default=None,
        help="unique questions sent twice through the ingress (default 20)",
    )
    parser.add_argument(
        "--api-key",
        default="cache-benchmark",
        help="bearer token sent to the ingress; it names the tenant (%(default)s)",
    )
    parser.add_argument(
        "--store-wait-s",
        type=float,
        default=0.5,
        help="pause between a miss and its repeat, the store being asynchronous (%(default)s)",
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (%(default)s)")
    parser.add_argument(
        "--out",
        type=Path,
        default=DEFAULT_OUT,
        help="JSON report path; PNGs go beside it (%(default)s)",
    )
    parser.add_argument("--no-plot", action="store_true", help="do not write PNG plots")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument(
        "--torch-threads",
        type=int,
        default=1,
        help="intra-op threads of the embedder (%(default)s); two threads on a busy 2-core "
        "box spin against each other: 1.3 s per embedding instead of 0.17 s, measured",
    )
    return parser


def options_from_args(args: argparse.Namespace) -> BenchmarkOptions:
    given: dict[str, Any] = {
        "partitions": args.partitions,
        "dim": args.dim,
        "evaluate_pairs": not args.skip_pairs,
        "pairs_path": args.pairs,
        "url": args.url,
        "api_key": args.api_key,
        "store_wait_s": args.store_wait_s,
        "seed": args.seed,
        "out": args.out,
        "plot": not args.no_plot,
        "progress": not args.no_progress,
    }
    optional = {
        "sizes": tuple(args.sizes) if args.sizes is not None else None,
        "queries": args.queries,
        "thresholds": tuple(args.thresholds) if args.thresholds else None,
        "embedding_model": args.embedding_model,
        "repetitions": args.repetitions,
    }
    given |= {name: value for name, value in optional.items() if value is not None}
    return BenchmarkOptions.quick(**given) if args.quick else BenchmarkOptions(**given)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    options = options_from_args(args)
    if options.evaluate_pairs:
        import torch

        torch.set_num_threads(args.torch_threads)
    report = run_benchmark(options)
    write_report(report, options.out)
    print(format_report(report))
    written = [options.out]
    if options.plot:
        written += plot_report(report, options.out)
    print("\nWrote " + ", ".join(str(path) for path in written))
    return 0


if __name__ == "__main__":
    sys.exit(main())
