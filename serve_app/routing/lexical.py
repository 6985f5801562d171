"""Lexical prior of the router: TF-IDF words and word pairs -> logistic regression, blended
with the encoder's score.

The frozen encoder's first-token state says little about a prompt's subject, and the subject
is what most predicts whether the small model falls short (on MMLU, a lookup of each
subject's rate beats the encoder head). Word features carry the subject. Both scores are
mapped to their quantile on the validation split and averaged with weight `weight` on the
lexical side (RouteLLM-style rank blending: scales differ, ranks compare).

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
    """Share of the lexical quantile in the blended score (the encoder's: 1 - weight)."""
    head_reference: np.ndarray
    """Sorted validation scores of the encoder head: its quantile scale."""
    lexical_reference: np.ndarray

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
                head_reference=np.sort(data["head_reference"].astype(np.float64)),
                lexical_reference=np.sort(data["lexical_reference"].astype(np.float64)),
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
            head_reference=self.head_reference,
            lexical_reference=self.lexical_reference,
        )
        return path

    def probabilities(self, texts: list[str]) -> np.ndarray:
        """The logistic regression's P(label 1) on each text's TF-IDF vector."""
        return np.array([_logistic(self._logit(text)) for text in texts])

    def _logit(self, text: str) -> float:
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
        """Weighted mean of the two scores' validation quantiles, in [0, 1]."""
        head_q = _quantile(np.asarray(head_scores, dtype=np.float64), self.head_reference)
        lexical_q = _quantile(self.probabilities(texts), self.lexical_reference)
        return self.weight * lexical_q + (1.0 - self.weight) * head_q


def _ngrams(tokens: list[str], ngram_max: int) -> list[str]:
    grams = list(tokens)
    for n in range(2, ngram_max + 1):
        grams.extend(" ".join(tokens[i : i + n]) for i in range(len(tokens) - n + 1))
    return grams


def _quantile(scores: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Where each score falls among the reference scores, interpolated: monotone, [0, 1]."""
    return np.interp(scores, reference, np.linspace(0.0, 1.0, len(reference)))


def _logistic(logit: float) -> float:
    return 1.0 / (1.0 + math.exp(-logit)) if logit >= 0 else math.exp(logit) / (1 + math.exp(logit))
