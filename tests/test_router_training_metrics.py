"""RouteLLM's APGR / CPT / threshold sweep and the calibration, against hand-computed cases."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from router_training.calibrate import calibrate
from router_training.metrics import (
    random_router_metrics,
    roc_auc,
    routellm_thresholds,
    router_metrics,
)

# Ten prompts; only the one scored 9 by a perfect router gains from the large model.
# Small model: 9/10 correct (90%), large: 10/10 (100%).
WEAK = [1, 1, 1, 1, 1, 1, 1, 1, 1, 0]
STRONG = [1] * 10
PERFECT = list(range(10))  # the gaining prompt (index 9) has the highest score
INVERTED = list(range(9, -1, -1))  # ... and here the lowest


def test_sweep_has_eleven_points_at_every_ten_percent_of_strong_calls() -> None:
    m = router_metrics(PERFECT, WEAK, STRONG)
    assert [p.strong_pct for p in m.curve] == pytest.approx([10.0 * k for k in range(11)])
    assert [p.threshold for p in m.curve] == pytest.approx([9 - 0.9 * k for k in range(11)])


def test_perfect_router_by_hand() -> None:
    m = router_metrics(PERFECT, WEAK, STRONG)
    # quality 90% at 0% strong calls, 100% from 10% on.
    assert [p.quality_pct for p in m.curve] == pytest.approx([90.0] + [100.0] * 10)
    # AUC = 0.1·(90+100)/2 + 0.9·100 = 99.5; APGR = (99.5 − 90) / (100 − 90) = 0.95.
    assert m.auc_curve == pytest.approx(99.5)
    assert m.apgr == pytest.approx(0.95)
    # Half the 10-point gap (95%) is reached halfway to the first step: 5% strong calls.
    assert m.cpt50_pct == pytest.approx(5.0)
    assert m.cpt80_pct == pytest.approx(8.0)
    assert m.roc_auc == pytest.approx(1.0)
    assert (m.weak_quality_pct, m.strong_quality_pct) == pytest.approx((90.0, 100.0))


def test_inverted_router_by_hand() -> None:
    m = router_metrics(INVERTED, WEAK, STRONG)
    assert [p.quality_pct for p in m.curve] == pytest.approx([90.0] * 10 + [100.0])
    # AUC = 0.9·90 + 0.1·(90+100)/2 = 90.5; APGR = 0.05.
    assert m.apgr == pytest.approx(0.05)
    assert m.cpt50_pct == pytest.approx(95.0)
    assert m.cpt80_pct == pytest.approx(98.0)
    assert m.roc_auc == pytest.approx(0.0)


def test_random_router_averages_to_half() -> None:
    rng = np.random.default_rng(123)
    weak = rng.random(4000) < 0.6
    strong = weak | (rng.random(4000) < 0.5)
    runs = random_router_metrics(weak, strong, seeds=list(range(20)))
    assert np.mean([m.apgr for m in runs]) == pytest.approx(0.5, abs=0.02)
    assert np.mean([m.cpt50_pct for m in runs]) == pytest.approx(50.0, abs=3.0)
    assert np.mean([m.roc_auc for m in runs]) == pytest.approx(0.5, abs=0.02)


def test_thresholds_match_pandas_qcut_bins() -> None:
    scores = np.random.default_rng(0).beta(2, 5, size=333)
    _, bins = pd.qcut(scores, 10, retbins=True)
    assert routellm_thresholds(scores) == pytest.approx(bins)


def test_last_threshold_routes_nothing_to_strong_even_with_ties() -> None:
    m = router_metrics([0.5] * 10, WEAK, STRONG)
    assert m.curve[0].strong_pct == 0.0
    assert m.curve[-1].strong_pct == 100.0


def test_roc_auc_counts_ties_half_and_needs_both_classes() -> None:
    assert roc_auc([0.5, 0.5], [0, 1]) == pytest.approx(0.5)
    assert roc_auc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == pytest.approx(0.75)
    assert roc_auc([0.1, 0.2], [1, 1]) is None


def test_strong_not_better_is_rejected() -> None:
    with pytest.raises(ValueError, match="must beat"):
        router_metrics(PERFECT, STRONG, WEAK)


def test_calibrate_for_a_share_of_large_calls() -> None:
    c = calibrate(PERFECT, WEAK, STRONG, target_large_share=0.3)
    assert c.threshold == 7.0
    assert c.large_share == pytest.approx(0.3)
    assert c.pgr == pytest.approx(1.0)


def test_calibrate_for_a_target_pgr_takes_the_fewest_large_calls() -> None:
    perfect = calibrate(PERFECT, WEAK, STRONG, target_pgr=0.9)
    assert (perfect.threshold, perfect.large_share, perfect.pgr) == (9.0, 0.1, 1.0)
    inverted = calibrate(INVERTED, WEAK, STRONG, target_pgr=0.9)
    assert (inverted.threshold, inverted.large_share) == (0.0, 1.0)
    with pytest.raises(ValueError, match="exactly one"):
        calibrate(PERFECT, WEAK, STRONG)
