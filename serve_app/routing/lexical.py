"""Lexical prior of the router: TF-IDF words and word pairs -> logistic regression, blended
with the encoder's score.

The frozen encoder's first-token state says little about a prompt's subject, and the subject
is what most predicts whether the small model falls short (on MMLU, a lookup of each
subject's rate beats the encoder head). Word features carry the subject. The blend is a
weighted mean of the two models' logits (`weight` on the lexical side), put back through the
logistic function: monotone and continuous in both scores, so a tiny float difference
between scoring a prompt alone and in a batch moves the blended score by as little. (An
earlier rank blend mapped each score to its validation quantile, which turned such
differences into jumps of whole ranks.)

Trained by `router_training.lexical` (with scikit-learn) and stored as
`lexical_prior.npz` beside the HF checkpoint; scored here with numpy alone, so serving loads
no pickles.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

LEXICAL_PRIOR_FILE = "lexical_prior.npz"
# Head probabilities are clipped this far from 0 and 1 before taking their logit.
_EPS = 1e-7
# scikit-learn's default TfidfVectorizer token pattern: words of 2+ word characters.
TOKEN = re.compile(r"(?u)\b\w\w+\b")


@dataclass(frozen=True)
class LexicalPrior:
    vocabulary: dict[str, int]
    idf: np.ndarray
    coef: np.ndarray
    intercept: float
    ngram_max: int
    weight: float
    """Share of the lexical logit in the blended logit (the encoder's: 1 - weight)."""

    @classmethod
    def load(cls, checkpoint_dir: str | Path) -> LexicalPrior | None:
        path = Path(checkpoint_dir) / LEXICAL_PRIOR_FILE
        if not path.is_file():
            return None
        with np.load(path, allow_pickle=False) as data:
            terms = data["terms"].tolist()
            return cls(
                vocabulary={term: i for i, term in enumerate(terms)},
                idf=data["idf"].astype(np.float64),
                coef=data["coef"].astype(np.float64),
                intercept=float(data["intercept"]),
                ngram_max=int(data["ngram_max"]),
                weight=float(data["weight"]),
            )

    def save(self, checkpoint_dir: str | Path) -> Path:
        path = Path(checkpoint_dir) / LEXICAL_PRIOR_FILE
        terms = sorted(self.vocabulary, key=self.vocabulary.__getitem__)
        np.savez(
            path,
            terms=np.array(terms, dtype=str),
            idf=self.idf,
            coef=self.coef,
            intercept=np.float64(self.intercept),
            ngram_max=np.int64(self.ngram_max),
            weight=np.float64(self.weight),
        )
        return path

    def probabilities(self, texts: list[str]) -> np.ndarray:
        """The logistic regression's P(label 1) on each text's TF-IDF vector."""
        return np.array([_logistic(self.logit(text)) for text in texts])

    def logit(self, text: str) -> float:
        """The logistic regression's logit (intercept included) on the text's TF-IDF vector."""
        counts = Counter(
            index
            for term in _ngrams(TOKEN.findall(text.lower()), self.ngram_max)
            if (index := self.vocabulary.get(term)) is not None
        )
        if not counts:
            return self.intercept
        indices = np.fromiter(counts, dtype=np.int64)
        tf = 1.0 + np.log(np.fromiter(counts.values(), dtype=np.float64))  # sublinear tf
        values = tf * self.idf[indices]
        values /= np.linalg.norm(values)
        return float(values @ self.coef[indices]) + self.intercept

    def blend(self, head_scores: np.ndarray | list[float], texts: list[str]) -> np.ndarray:
        """logistic(weight · lexical logit + (1 - weight) · head logit), in (0, 1)."""
        lexical = np.array([self.logit(text) for text in texts], dtype=np.float64)
        if self.weight == 1.0:
            return 1.0 / (1.0 + np.exp(-lexical))
        head = np.clip(np.asarray(head_scores, dtype=np.float64), _EPS, 1.0 - _EPS)
        logit = self.weight * lexical + (1.0 - self.weight) * np.log(head / (1.0 - head))
        return 1.0 / (1.0 + np.exp(-logit))


def _ngrams(tokens: list[str], ngram_max: int) -> list[str]:
    grams = list(tokens)
    for n in range(2, ngram_max + 1):
        grams.extend(" ".join(tokens[i : i + n]) for i in range(len(tokens) - n + 1))
    return grams


def _logistic(logit: float) -> float:
    return 1.0 / (1.0 + math.exp(-logit)) if logit >= 0 else math.exp(logit) / (1 + math.exp(logit))
