"""Cost–quality metrics of a router, exactly as RouteLLM defines them.

RouteLLM (`routellm/evals/benchmarks.py`, `routellm/evals/evaluate.py`):
- thresholds are the 11 edges of `pd.qcut(scores, 10)`: the 0%, 10%, ..., 100% quantiles
  of the router's scores (linear interpolation, duplicates kept);
- at every edge but the last a prompt goes to the strong model when `score >= edge`; at the
  last edge when `score > edge` (so the sweep reaches 0% strong calls);
- quality at a threshold = mean outcome of the model each prompt was routed to, in percent;
  cost = strong-model calls in percent;
- the points are sorted by strong calls; AUC = `trapezoid(quality, strong% / 100)`;
- APGR = (AUC − weak AUC) / (strong AUC − weak AUC), the weak/strong AUCs being their
  constant qualities integrated over the same x range;
- CPT(p) = `np.interp(weak + p·(strong − weak), quality, strong%)`: the strong-call share
  that recovers a fraction p of the quality gap. `np.interp` is given the qualities in
  strong-call order, as RouteLLM does; a non-monotone curve makes it approximate there too.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from numpy.typing import ArrayLike

NUM_BINS = 10


@dataclass(frozen=True)
class CurvePoint:
    threshold: float
    strong_pct: float
    quality_pct: float


@dataclass(frozen=True)
class RouterMetrics:
    apgr: float
    cpt50_pct: float
    cpt80_pct: float
    cpt20_pct: float
    auc_curve: float
    """Area under the quality(%)-vs-strong-share curve (RouteLLM's "AUC")."""
    roc_auc: float | None
    """ROC AUC of the scores against the router label (None when one class is missing)."""
    weak_quality_pct: float
    strong_quality_pct: float
    curve: tuple[CurvePoint, ...]

    def as_dict(self) -> dict:
        return asdict(self)


def routellm_thresholds(scores: ArrayLike, num_bins: int = NUM_BINS) -> np.ndarray:
    """The bin edges of `pd.qcut(scores, num_bins, retbins=True)`, duplicates kept."""
    return np.quantile(np.asarray(scores, dtype=float), np.linspace(0.0, 1.0, num_bins + 1))


def cost_quality_curve(
    scores: ArrayLike, weak: ArrayLike, strong: ArrayLike, num_bins: int = NUM_BINS
) -> list[CurvePoint]:
    """RouteLLM's threshold sweep, sorted by strong-model calls (stable, like pandas)."""
    scores = np.asarray(scores, dtype=float)
    weak, strong = np.asarray(weak, dtype=float), np.asarray(strong, dtype=float)
    if not len(scores) == len(weak) == len(strong) > 0:
        raise ValueError("scores, weak and strong outcomes must be non-empty and equally long")
    thresholds = routellm_thresholds(scores, num_bins)
    points = []
    for i, threshold in enumerate(thresholds):
        to_strong = scores > threshold if i == len(thresholds) - 1 else scores >= threshold
        quality = np.where(to_strong, strong, weak).mean() * 100.0
        points.append(CurvePoint(float(threshold), float(to_strong.mean() * 100.0), quality))
    order = np.argsort([p.strong_pct for p in points], kind="stable")
    return [points[i] for i in order]


def calls_to_performance(
    curve: list[CurvePoint], fraction: float, weak_pct: float, strong_pct: float
) -> float:
    """CPT: strong-call percentage at which the curve recovers `fraction` of the gap."""
    target = weak_pct + fraction * (strong_pct - weak_pct)
    return float(np.interp(target, [p.quality_pct for p in curve], [p.strong_pct for p in curve]))


def apgr_from_curve(curve: list[CurvePoint], weak_pct: float, strong_pct: float) -> float:
    x = np.array([p.strong_pct for p in curve]) / 100.0
    auc = np.trapezoid([p.quality_pct for p in curve], x)
    weak_auc = np.trapezoid(np.full(len(x), weak_pct), x)
    strong_auc = np.trapezoid(np.full(len(x), strong_pct), x)
    return float((auc - weak_auc) / (strong_auc - weak_auc))


def roc_auc(scores: ArrayLike, labels: ArrayLike) -> float | None:
    """Mann–Whitney ROC AUC with ties counted half; None if only one class is present."""
    scores, labels = np.asarray(scores, dtype=float), np.asarray(labels).astype(bool)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores))
    sorted_scores = scores[order]
    # Average ranks over ties.
    _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    avg = first + (counts - 1) / 2.0 + 1.0
    ranks[order] = np.repeat(avg, counts)
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def router_metrics(
    scores: ArrayLike,
    weak: ArrayLike,
    strong: ArrayLike,
    labels: ArrayLike | None = None,
    num_bins: int = NUM_BINS,
) -> RouterMetrics:
    """All metrics of one router on one evaluation set.

    `weak`/`strong` are per-prompt outcomes in [0, 1] (1 = correct); `labels` are the router
    targets for ROC AUC (default: the strong model is better than the weak one).
    """
    weak_arr, strong_arr = np.asarray(weak, dtype=float), np.asarray(strong, dtype=float)
    weak_pct, strong_pct = weak_arr.mean() * 100.0, strong_arr.mean() * 100.0
    if strong_pct <= weak_pct:
        raise ValueError(
            f"the strong model ({strong_pct:.2f}%) must beat the weak one ({weak_pct:.2f}%) "
            "for APGR/CPT to be defined"
        )
    curve = cost_quality_curve(scores, weak_arr, strong_arr, num_bins)
    x = np.array([p.strong_pct for p in curve]) / 100.0
    if labels is None:
        labels = strong_arr > weak_arr
    return RouterMetrics(
        apgr=apgr_from_curve(curve, weak_pct, strong_pct),
        cpt50_pct=calls_to_performance(curve, 0.5, weak_pct, strong_pct),
        cpt80_pct=calls_to_performance(curve, 0.8, weak_pct, strong_pct),
        cpt20_pct=calls_to_performance(curve, 0.2, weak_pct, strong_pct),
        auc_curve=float(np.trapezoid([p.quality_pct for p in curve], x)),
        roc_auc=roc_auc(scores, labels),
        weak_quality_pct=float(weak_pct),
        strong_quality_pct=float(strong_pct),
        curve=tuple(curve),
    )


def random_router_metrics(
    weak: ArrayLike, strong: ArrayLike, seeds: list[int], labels: ArrayLike | None = None
) -> list[RouterMetrics]:
    """RouteLLM's random router (uniform scores) under each seed; average them for the baseline."""
    n = len(np.asarray(weak))
    return [
        router_metrics(np.random.default_rng(seed).uniform(size=n), weak, strong, labels)
        for seed in seeds
    ]
