"""Pick the routing threshold and record it in the router card beside the checkpoint.

The serving router sends a request to the large tier when `score >= threshold` and reads the
threshold from `router_card.json` (serve_app.routing.scorers.ROUTER_CARD_FILE).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from serve_app.routing.scorers import ROUTER_CARD_FILE


@dataclass(frozen=True)
class Calibration:
    threshold: float
    target: str
    """`large_share=0.30` or `pgr=0.80`."""
    large_share: float
    """Share of the calibration prompts the threshold sends to the large tier."""
    pgr: float
    """Fraction of the small→large quality gap recovered on the calibration prompts."""
    quality: float
    num_prompts: int


def _at_threshold(
    threshold: float, scores: np.ndarray, weak: np.ndarray, strong: np.ndarray
) -> tuple[float, float, float]:
    to_large = scores >= threshold
    quality = float(np.where(to_large, strong, weak).mean())
    gap = strong.mean() - weak.mean()
    pgr = float((quality - weak.mean()) / gap) if gap > 0 else float("nan")
    return float(to_large.mean()), pgr, quality


def calibrate(
    scores: ArrayLike,
    weak: ArrayLike,
    strong: ArrayLike,
    target_large_share: float | None = None,
    target_pgr: float | None = None,
) -> Calibration:
    """Threshold for a target share of large-tier calls, or the highest threshold (fewest
    large calls) whose recovered quality gap reaches the target PGR."""
    scores = np.asarray(scores, dtype=float)
    weak, strong = np.asarray(weak, dtype=float), np.asarray(strong, dtype=float)
    if (target_large_share is None) == (target_pgr is None):
        raise ValueError("give exactly one of target_large_share and target_pgr")
    if target_large_share is not None:
        # The k-th largest score sends (at least) k prompts to the large tier.
        k = max(1, round(target_large_share * len(scores)))
        threshold = float(np.sort(scores)[::-1][k - 1])
        target = f"large_share={target_large_share:.2f}"
    else:
        threshold = _threshold_for_pgr(scores, weak, strong, float(target_pgr))
        target = f"pgr={target_pgr:.2f}"
    large_share, pgr, quality = _at_threshold(threshold, scores, weak, strong)
    return Calibration(threshold, target, large_share, pgr, quality, len(scores))


def _threshold_for_pgr(
    scores: np.ndarray, weak: np.ndarray, strong: np.ndarray, target: float
) -> float:
    if strong.mean() <= weak.mean():
        raise ValueError("the large model does not beat the small one here; PGR is undefined")
    # Sweep from the highest threshold down: route one more prompt group at a time.
    for threshold in np.unique(scores)[::-1]:
        if _at_threshold(float(threshold), scores, weak, strong)[1] >= target:
            return float(threshold)
    return float(scores.min())


def write_card(checkpoint_dir: str | Path, calibration: Calibration, **extra: Any) -> Path:
    """Merge the calibration into `router_card.json` (other keys of the card are kept)."""
    path = Path(checkpoint_dir) / ROUTER_CARD_FILE
    card = json.loads(path.read_text()) if path.is_file() else {}
    card.update(extra)
    card["threshold"] = calibration.threshold
    card["calibration"] = asdict(calibration)
    path.write_text(json.dumps(card, indent=2, sort_keys=True) + "\n")
    return path


def read_card(checkpoint_dir: str | Path) -> dict[str, Any]:
    path = Path(checkpoint_dir) / ROUTER_CARD_FILE
    return json.loads(path.read_text()) if path.is_file() else {}
