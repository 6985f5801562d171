"""Held-out evaluation: RouteLLM metrics for the trained, heuristic and random routers, the
cost–quality curve PNG, and the serving scorer's CPU latency."""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from router_training.data import Outcome
from router_training.metrics import RouterMetrics, random_router_metrics, router_metrics
from serve_app.routing.scorers import ClassifierScorer, HeuristicScorer

SUMMARY_KEYS = ("apgr", "cpt50_pct", "cpt80_pct", "roc_auc")


@dataclass(frozen=True)
class RouterEvaluation:
    name: str
    metrics: list[RouterMetrics]
    """One entry per run (several for the random router: one per seed)."""

    def summary(self) -> dict[str, float | None]:
        out: dict[str, float | None] = {}
        for key in SUMMARY_KEYS:
            values = [getattr(m, key) for m in self.metrics]
            out[key] = None if None in values else float(np.mean(values))
        return out

    def mean_curve(self) -> tuple[np.ndarray, np.ndarray]:
        """Strong-call % and quality % averaged point by point (same quantile thresholds)."""
        xs = np.array([[p.strong_pct for p in m.curve] for m in self.metrics]).mean(axis=0)
        ys = np.array([[p.quality_pct for p in m.curve] for m in self.metrics]).mean(axis=0)
        return xs, ys


def outcome_arrays(outcomes: Sequence[Outcome]) -> tuple[np.ndarray, np.ndarray]:
    return (
        np.array([o.small_score for o in outcomes], dtype=float),
        np.array([o.large_score for o in outcomes], dtype=float),
    )


def evaluate_scores(
    scores: np.ndarray,
    outcomes: Sequence[Outcome],
    labels: np.ndarray,
    random_seeds: Sequence[int],
) -> dict[str, RouterEvaluation]:
    """The trained router's scores next to the heuristic and the seed-averaged random router."""
    weak, strong = outcome_arrays(outcomes)
    heuristic = np.array(HeuristicScorer().score_batch([o.prompt for o in outcomes]))
    return {
        "router": RouterEvaluation("router", [router_metrics(scores, weak, strong, labels)]),
        "heuristic": RouterEvaluation(
            "heuristic", [router_metrics(heuristic, weak, strong, labels)]
        ),
        "random": RouterEvaluation(
            "random", random_router_metrics(weak, strong, list(random_seeds), labels)
        ),
    }


def plot_cost_quality(
    evaluations: dict[str, RouterEvaluation], path: str | Path, title: str
) -> Path:
    """Quality vs share of large-tier calls for every router on the same axes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(8, 5.5))
    any_metrics = next(iter(evaluations.values())).metrics
    weak = float(np.mean([m.weak_quality_pct for m in any_metrics]))
    strong = float(np.mean([m.strong_quality_pct for m in any_metrics]))
    styles = {"router": ("C0", "o"), "heuristic": ("C1", "s"), "random": ("grey", "x")}
    for name, evaluation in evaluations.items():
        xs, ys = evaluation.mean_curve()
        s = evaluation.summary()
        color, marker = styles.get(name, (None, "."))
        ax.plot(
            xs,
            ys,
            marker=marker,
            color=color,
            label=f"{name}: APGR {s['apgr']:.3f}, CPT50 {s['cpt50_pct']:.1f}%",
        )
    ax.axhline(weak, color="grey", linestyle="--", linewidth=1, label=f"small only ({weak:.1f}%)")
    ax.axhline(
        strong, color="red", linestyle="--", linewidth=1, label=f"large only ({strong:.1f}%)"
    )
    ax.axhline(
        weak + 0.5 * (strong - weak),
        color="black",
        linestyle=":",
        linewidth=0.8,
        label="50% of the quality gap",
    )
    ax.set_xlabel("large-tier calls (%)")
    ax.set_ylabel("quality (% correct)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def measure_latency(
    checkpoint_dir: str | Path,
    texts: Sequence[str],
    max_length: int,
    requests: int,
    batch_size: int,
) -> dict[str, float]:
    """CPU latency of the serving scorer (serve_app.routing.scorers.ClassifierScorer) in ms.

    `single_*`: one request at a time (batch of 1). `batched_*`: requests scored in batches
    of `batch_size`, as Ray Serve batching does under load; `batched_per_request_*` is a
    batch's wall time divided by its size (CPU time each request costs), `batched_wall_*` the
    time a request in such a batch waits for its score.
    """
    scorer = ClassifierScorer(checkpoint_dir, max_length)
    sample = [texts[i % len(texts)] for i in range(requests)]
    scorer.score_batch(sample[:2])  # warm-up
    single = []
    for text in sample:
        start = time.perf_counter()
        scorer.score_batch([text])
        single.append((time.perf_counter() - start) * 1000.0)
    wall = []
    for start_i in range(0, len(sample), batch_size):
        batch = sample[start_i : start_i + batch_size]
        start = time.perf_counter()
        scorer.score_batch(batch)
        wall.append(((time.perf_counter() - start) * 1000.0, len(batch)))
    per_request = [ms / n for ms, n in wall]
    return {
        "requests": float(len(sample)),
        "batch_size": float(batch_size),
        "single_p50_ms": _pct(single, 50),
        "single_p99_ms": _pct(single, 99),
        "batched_per_request_p50_ms": _pct(per_request, 50),
        "batched_per_request_p99_ms": _pct(per_request, 99),
        "batched_wall_p50_ms": _pct([ms for ms, _ in wall], 50),
        "batched_wall_p99_ms": _pct([ms for ms, _ in wall], 99),
        "single_mean_ms": statistics.fmean(single),
    }


def _pct(values: Sequence[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")
