"""The cache's embedder backends side by side (issue 20, part 2): latency, agreement, pair set.

One run, every backend, the same texts:

- latency of one text per call at one thread (what a cache lookup does), p50/p99, for the
  pair-set questions (9-25 tokens) and for prompts of exactly 64 tokens; the backends take
  turns text by text, so a neighbour's load falls on all of them alike;
- cosine agreement with today's torch fp32 sentence-transformers vectors on the same texts;
- the labelled pair set (benchmarks/data/cache_pairs.jsonl) through `SemanticCache` and the
  Edge store: should-hit hits and near-miss false hits at the shipped threshold with the
  near-miss guard, and the threshold `recommend_threshold` picks for each backend.

Backends: `torch-fp32` (sentence-transformers), `onnx-fp32` and `onnx-int8` (the exports
`make models` builds: packaged://all-minilm-l6-v2-onnx[-int8], int8 per-channel), and
`onnx-int8-per-tensor` (one scale per weight tensor, built into a temp dir for the comparison).

    nice -n 19 python -m benchmarks.cache_embedder_benchmark           # ~2 minutes
    python -m benchmarks.cache_embedder_benchmark --rounds 20 --skip-pairs

Prints figures, asserts nothing about timings.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.cache_hit_rates import MemoEmbedder, evaluate_pairs, recommend_threshold
from benchmarks.cache_options import FULL_THRESHOLDS, PAIRS_PATH, REPO_ROOT
from benchmarks.cache_pairs import load_pairs
from serve_app.cache.deployment import embedding_text
from serve_app.cache.embedder import (
    Embedder,
    OnnxEmbedder,
    SentenceTransformerEmbedder,
    make_embedder,
)
from serve_app.config import CacheConfig
from serve_app.model_sources import PACKAGED_SCHEME, resolve_model_source

DEFAULT_OUT = REPO_ROOT / "artifacts" / "cache_embedder_benchmark.json"
REFERENCE = "torch-fp32"
BACKENDS = ("torch-fp32", "onnx-fp32", "onnx-int8", "onnx-int8-per-tensor")
LONG_TOKENS = 64


@dataclass
class Backend:
    name: str
    source: str
    embedder: Embedder


def build_backends(names: Sequence[str], threads: int, scratch: Path) -> list[Backend]:
    """The embedders to compare; the ONNX exports must have been built (`make models`)."""
    from serve_app.ops.embedder_export import (
        MINILM_ONNX,
        MINILM_ONNX_INT8,
        quantize_sentence_onnx,
    )

    built: list[Backend] = []
    for name in names:
        if name == "torch-fp32":
            source = f"{PACKAGED_SCHEME}all-minilm-l6-v2"
            embedder: Embedder = SentenceTransformerEmbedder(source, threads)
        elif name == "onnx-fp32":
            source = f"{PACKAGED_SCHEME}{MINILM_ONNX}"
            embedder = make_embedder(source, threads)
        elif name == "onnx-int8":
            source = f"{PACKAGED_SCHEME}{MINILM_ONNX_INT8}"
            embedder = make_embedder(source, threads)
        elif name == "onnx-int8-per-tensor":
            fp32_dir = Path(resolve_model_source(f"{PACKAGED_SCHEME}{MINILM_ONNX}"))
            target = scratch / name
            target.mkdir()
            quantize_sentence_onnx(fp32_dir, target, per_channel=False)
            source = str(target)
            embedder = OnnxEmbedder(target, threads)
        else:
            raise ValueError(f"unknown backend {name!r}; known: {BACKENDS}")
        built.append(Backend(name, source, embedder))
    return built


# ---- texts -------------------------------------------------------------------------------


def pair_texts(path: Path) -> list[str]:
    """The distinct questions of the pair set, in the form the cache embeds."""
    pairs = load_pairs(path)
    return sorted({embedding_text(t) for pair in pairs for t in (pair.stored, pair.asked)})


def long_prompts(texts: Sequence[str], tokens: int, count: int) -> list[str]:
    """`count` prompts of exactly `tokens` tokens ([CLS]/[SEP] included), from pair questions."""
    from tokenizers import Tokenizer

    model_dir = Path(resolve_model_source(f"{PACKAGED_SCHEME}all-minilm-l6-v2"))
    tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    tokenizer.no_padding()
    tokenizer.no_truncation()
    prompts: list[str] = []
    start = 0
    while len(prompts) < count:
        joined = ""
        index = start
        while len(tokenizer.encode(joined).ids) < tokens:
            joined = f"{joined} {texts[index % len(texts)]}".strip()
            index += 1
        encoding = tokenizer.encode(joined)
        # Cut at the token whose span ends the 64th token; words split by WordPiece are kept
        # whole in the text, so measure again and drop a word if one too many.
        end = encoding.offsets[tokens - 2][1]
        prompt = joined[:end]
        while len(tokenizer.encode(prompt).ids) > tokens:
            prompt = prompt.rsplit(" ", 1)[0]
        prompts.append(prompt)
        start += 7
    return prompts


def token_counts(texts: Sequence[str]) -> list[int]:
    from tokenizers import Tokenizer

    model_dir = Path(resolve_model_source(f"{PACKAGED_SCHEME}all-minilm-l6-v2"))
    tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    tokenizer.no_padding()
    tokenizer.no_truncation()
    return [len(tokenizer.encode(t).ids) for t in texts]


# ---- measurements ------------------------------------------------------------------------


def time_single(
    backends: Sequence[Backend], texts: Sequence[str], rounds: int
) -> dict[str, list[float]]:
    """ms per one-text call, backends taking turns text by text."""
    times: dict[str, list[float]] = {b.name: [] for b in backends}
    for backend in backends:  # warm-up: first calls allocate
        for text in texts[:5]:
            backend.embedder.embed_batch([text])
    order = list(backends)
    for round_index in range(rounds):
        for text_index, text in enumerate(texts):
            shift = (round_index + text_index) % len(order)
            for backend in order[shift:] + order[:shift]:
                started = time.perf_counter()
                backend.embedder.embed_batch([text])
                times[backend.name].append((time.perf_counter() - started) * 1e3)
    return times


def agreement(backends: Sequence[Backend], texts: Sequence[str]) -> dict[str, dict[str, float]]:
    vectors = {b.name: _embed_all(b.embedder, texts) for b in backends}
    reference = vectors[REFERENCE]
    result: dict[str, dict[str, float]] = {}
    for name, matrix in vectors.items():
        cosines = (matrix * reference).sum(axis=1)
        norms = np.linalg.norm(matrix, axis=1)
        result[name] = {
            "min": float(cosines.min()),
            "p1": float(np.percentile(cosines, 1)),
            "mean": float(cosines.mean()),
            "max_norm_error": float(np.abs(norms - 1).max()),
        }
    return result


def _embed_all(embedder: Embedder, texts: Sequence[str]) -> np.ndarray:
    return np.concatenate(
        [embedder.embed_batch(texts[i : i + 32]) for i in range(0, len(texts), 32)]
    )


def pair_results(
    backends: Sequence[Backend], path: Path, shipped_threshold: float
) -> dict[str, dict[str, Any]]:
    pairs = load_pairs(path)
    thresholds = sorted({*FULL_THRESHOLDS, shipped_threshold})
    result: dict[str, dict[str, Any]] = {}
    for backend in backends:
        points = evaluate_pairs(pairs, MemoEmbedder(backend.embedder), thresholds=thresholds)
        guarded = {p.threshold: p for p in points if p.verify_candidates}
        unguarded = {p.threshold: p for p in points if not p.verify_candidates}
        at = guarded[shipped_threshold]
        recommended = recommend_threshold(points, verify_candidates=True)
        result[backend.name] = {
            "at_shipped": at.summary(),
            "at_shipped_without_guard": unguarded[shipped_threshold].summary(),
            "recommended": {
                "threshold": recommended.threshold,
                "meets_requirement": recommended.meets_requirement,
                "reason": recommended.reason,
                "hits": guarded[recommended.threshold].hits
                if recommended.threshold in guarded
                else None,
            },
            "sweep_with_guard": [
                {
                    "threshold": t,
                    "hits": p.hits,
                    "near_miss_false_hits": len(p.near_miss_false_hits),
                    "false_hits": len(p.false_hits),
                }
                for t, p in sorted(guarded.items())
            ],
            "false_hits_at_shipped": [
                {"stored": o.pair.stored, "asked": o.pair.asked, "kind": o.pair.kind}
                for o in at.false_hits
            ],
            "missed_at_shipped": len(at.missed),
        }
    return result


def _percentile(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


# ---- the run -----------------------------------------------------------------------------


def run(args: argparse.Namespace, log: Callable[[str], None] = print) -> dict[str, Any]:
    report: dict[str, Any] = {
        "generated_at_unix_s": time.time(),
        "machine": _machine(),
        "options": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
    }
    _limit_threads(args.threads)
    texts = pair_texts(args.pairs)
    long = long_prompts(texts, LONG_TOKENS, args.long_prompts)
    with tempfile.TemporaryDirectory(prefix="embedder-bench-") as scratch:
        backends = build_backends(args.backends, args.threads, Path(scratch))
        report["backends"] = {b.name: b.source for b in backends}
        if REFERENCE not in report["backends"]:
            raise SystemExit(f"--backends must include the reference {REFERENCE}")
        log(f"{len(texts)} pair-set questions, {len(long)} prompts of {LONG_TOKENS} tokens")
        buckets = {
            "pair_questions": texts[: args.short_texts],
            f"{LONG_TOKENS}_tokens": long,
        }
        report["texts"] = {
            name: {
                "count": len(bucket),
                "tokens_min": min(token_counts(bucket)),
                "tokens_max": max(token_counts(bucket)),
            }
            for name, bucket in buckets.items()
        }
        latency: dict[str, dict[str, dict[str, float]]] = {}
        for bucket_name, bucket in buckets.items():
            log(f"timing {bucket_name} ({args.rounds} rounds)")
            times = time_single(backends, bucket, args.rounds)
            latency[bucket_name] = {
                name: {
                    "p50_ms": _percentile(values, 50),
                    "p99_ms": _percentile(values, 99),
                    "calls": len(values),
                }
                for name, values in times.items()
            }
        report["latency"] = latency
        log("cosine agreement with torch fp32")
        report["agreement"] = agreement(backends, [*texts, *long])
        shipped = CacheConfig().similarity_threshold
        report["shipped"] = {
            "embedding_model": CacheConfig().embedding_model,
            "similarity_threshold": shipped,
        }
        if not args.skip_pairs:
            log("pair set through SemanticCache")
            report["pairs"] = pair_results(backends, args.pairs, shipped)
    report["machine"]["loadavg_at_end"] = list(os.getloadavg())
    report["machine"]["uptime_at_end"] = _uptime()
    return report


def format_report(report: dict[str, Any]) -> str:
    shipped = report["shipped"]["similarity_threshold"]
    pairs = report.get("pairs") or {}
    buckets = list(report["latency"])
    head = ["backend"]
    for bucket in buckets:
        texts = report["texts"][bucket]
        span = f"{texts['tokens_min']}-{texts['tokens_max']} tok"
        head += [f"{bucket} ({span}) p50 ms", "p99 ms"]
    head += ["cos vs torch min", "mean"]
    if pairs:
        head += [f"hits @{shipped}", "near-miss FH", "recommended thr (hits)"]
    rows = [head]
    for name in report["backends"]:
        row = [name]
        for bucket in buckets:
            figures = report["latency"][bucket][name]
            row += [f"{figures['p50_ms']:.2f}", f"{figures['p99_ms']:.2f}"]
        agree = report["agreement"][name]
        row += [f"{agree['min']:.4f}", f"{agree['mean']:.4f}"]
        if pairs:
            result = pairs[name]
            at = result["at_shipped"]
            rec = result["recommended"]
            row += [
                f"{at['hits']}/{at['positives']}",
                str(at["near_miss_false_hits"]),
                f"{rec['threshold']} ({rec['hits']})",
            ]
        rows.append(row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = [" | ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in rows]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    machine = report["machine"]
    lines.append("")
    lines.append(f"uptime at start: {machine['uptime_at_start']}")
    lines.append(f"uptime at end:   {machine['uptime_at_end']}")
    return "\n".join(lines)


def _limit_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def _uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return f"load average: {os.getloadavg()}"


def _machine() -> dict[str, Any]:
    versions = {}
    for dist in ("onnxruntime", "torch", "sentence-transformers", "tokenizers"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = None
    return {
        "cpus": os.cpu_count(),
        "loadavg_at_start": list(os.getloadavg()),
        "uptime_at_start": _uptime(),
        "python": sys.version.split()[0],
        "versions": versions,
    }


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.cache_embedder_benchmark",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
    )
    parser.add_argument(
        "--backends",
        nargs="+",
        default=list(BACKENDS),
        choices=BACKENDS,
        help="backends to compare; must include torch-fp32, the reference (default: all)",
    )
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads (%(default)s)")
    parser.add_argument(
        "--rounds", type=int, default=3, help="timed passes over each text set (%(default)s)"
    )
    parser.add_argument(
        "--short-texts",
        type=int,
        default=None,
        help="pair-set questions timed per round (default: all of them)",
    )
    parser.add_argument(
        "--long-prompts",
        type=int,
        default=60,
        help=f"{LONG_TOKENS}-token prompts timed per round (%(default)s)",
    )
    parser.add_argument("--pairs", type=Path, default=PAIRS_PATH, help="labelled pair file")
    parser.add_argument("--skip-pairs", action="store_true", help="skip the pair-set evaluation")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON report (%(default)s)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    report = run(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(format_report(report))
    print(f"\nWrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
