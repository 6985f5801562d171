"""The router's lexical prior: fitted with scikit-learn, served by numpy, same scores."""

from pathlib import Path

import numpy as np
import pytest

from router_training.config import LexicalPriorConfig
from router_training.lexical import fit_lexical_prior
from serve_app.routing.lexical import LexicalPrior

HARD = [f"Compute the integral of x^{n} and prove the bound on group {n}" for n in range(12)]
EASY = [f"What is the capital of country number {n}? Answer briefly" for n in range(12)]


def test_prior_round_trips_and_ranks_by_the_words_it_learnt(tmp_path: Path) -> None:
    texts, labels = HARD + EASY, np.array([1] * len(HARD) + [0] * len(EASY))
    prior = fit_lexical_prior(texts, labels, texts, LexicalPriorConfig(weight=1.0))
    prior.save(tmp_path)
    loaded = LexicalPrior.load(tmp_path)
    assert loaded is not None and loaded.vocabulary == prior.vocabulary
    probe = ["Prove the integral bound for group 99", "What is the capital of Peru?", ""]
    assert loaded.probabilities(probe) == pytest.approx(prior.probabilities(probe))
    hard, easy, empty = loaded.blend([0.5, 0.5, 0.5], probe)
    assert easy < empty < hard
    assert all(0.0 <= s <= 1.0 for s in (hard, easy, empty))


def test_blend_weight_zero_keeps_the_encoder_ranking(tmp_path: Path) -> None:
    texts, labels = HARD + EASY, np.array([1] * len(HARD) + [0] * len(EASY))
    prior = fit_lexical_prior(texts, labels, texts, LexicalPriorConfig(weight=0.0))
    head = [0.9, 0.1, 0.5]
    blended = prior.blend(head, ["capital", "integral", "group"])
    assert list(np.argsort(blended)) == list(np.argsort(head))


def test_blend_is_continuous_in_the_head_score(tmp_path: Path) -> None:
    # A served batch and a single request differ by float noise in the encoder's score; the
    # blended score must move by about as little (a rank blend jumped by whole ranks).
    texts, labels = HARD + EASY, np.array([1] * len(HARD) + [0] * len(EASY))
    prior = fit_lexical_prior(texts, labels, texts, LexicalPriorConfig(weight=0.5))
    probe = ["Prove the integral bound for group 99"]
    a, b = prior.blend([0.3], probe)[0], prior.blend([0.3 + 1e-6], probe)[0]
    assert 0 < b - a < 1e-5


def test_checkpoint_without_prior_loads_none(tmp_path: Path) -> None:
    assert LexicalPrior.load(tmp_path) is None
