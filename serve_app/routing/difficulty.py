"""The shipped router: one logistic model over difficulty features that carry across tasks.

P(the large tier does better) = logistic(a · (w_f · standardised prompt features
[+ w_e · MiniLM sentence embedding] [+ w_t · TF-IDF vector] + w_0) + b): one logistic
regression, with (a, b) calibrating it on validation prompts (training keeps a = 1 and sets b
so the mean probability matches the validation positive rate). A monotone, continuous function
of the inputs, with no ranks: the same prompt scored alone or in a batch gets the same score up
to float noise, and a threshold on it is a threshold on the model's probability. Which blocks
a model reads is recorded in its weights file; the shipped one reads no embedding (see
docs/router_evaluation.md: no embedding or lexical block carried to a left-out source).

- Prompt features (`prompt_features`): length and structure (words, lines, mean word length),
  digits and symbols, math notation (LaTeX, equations), code, answer options, question marks,
  reasoning/constraint/chit-chat markers and the heuristic scorer's logit. Computed from the
  text in well under a millisecond.
- Embedding: all-MiniLM-L6-v2, mean-pooled and normalised (serve_app.routing.embedding), the
  vector the semantic cache computes; pass it to `score_batch(texts, embeddings)` to skip
  embedding here.
- Optional TF-IDF block: serve_app.routing.lexical's vocabulary and weights (intercept 0).

Trained by `router_training.multi_source`; stored as `router_card.json` (kind
`difficulty-linear`, threshold, calibration, evaluation) plus `difficulty_router.npz` (no
pickles), small enough to ship inside the package (serve_app/routing/default_router/).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from serve_app.routing.heuristic import HeuristicScorer
from serve_app.routing.lexical import LexicalPrior

ROUTER_KIND = "difficulty-linear"
WEIGHTS_FILE = "difficulty_router.npz"


def _count(pattern: str, flags: int = 0) -> re.Pattern[str]:
    return re.compile(pattern, flags)


_LATEX = _count(r"\\[a-zA-Z]+|\$")
_EQUATION = _count(r"[\w)\]]\s*(?:[-+*/^=<>≤≥×÷]|\*\*|==|!=)\s*[\w(\[]")
_MATH_SYMBOL = _count(r"[∑∫√∂π∞≡⊃∨∧¬→↔≤≥×÷±∈∉⊂∪∩°^_{}|]")
_CODE_LINE = _count(
    r"^\s*(?:def |class |import |from \w+ import|return\b|for .+:|while .+:|if .+:|"
    r"#include|public |private |function |var |let |const |print\(|assert )|[;{}]\s*$",
    re.MULTILINE,
)
_INDENTED = _count(r"^(?: {4}|\t)\S", re.MULTILINE)
_OPTION = _count(r"^\s*[A-J][.)]\s", re.MULTILINE)
_NUMBER = _count(r"\d+(?:\.\d+)?")
_LONG_NUMBER = _count(r"\d{4,}")
_DIGIT = _count(r"\d")
_UPPER = _count(r"[A-Z]")
_NON_ASCII = _count(r"[^\x00-\x7f]")
_PUNCT = _count(r"[^\w\s]")
_NUMBERED = _count(r"^\s*(?:\d+[.)]|[-*•])\s+", re.MULTILINE)


def _words(*phrases: str) -> re.Pattern[str]:
    return re.compile(r"\b(?:" + "|".join(phrases) + r")\b", re.IGNORECASE)


_REASONING = _words(
    r"prove", r"proof", r"derive", r"show that", r"step[- ]by[- ]step", r"explain why",
    r"justify", r"calculate", r"compute", r"solve", r"evaluate", r"determine", r"how many",
    r"find", r"simplify", r"what is the (?:value|sum|product|number|probability|remainder)",
    r"least", r"greatest", r"largest", r"smallest", r"minimum", r"maximum",
)  # fmt: skip
_CONSTRAINT = _words(
    r"must", r"exactly", r"at (?:least|most)", r"no more than", r"without", r"only",
    r"ensure", r"should", r"do not", r"don't", r"each", r"every", r"all", r"format",
    r"words?", r"sentences?", r"paragraphs?", r"bullet", r"json", r"table",
)  # fmt: skip
_WRITE = _words(
    r"write", r"create", r"design", r"generate", r"implement", r"build", r"develop",
    r"compose", r"draft", r"code", r"program", r"script", r"function", r"class",
)  # fmt: skip
_NEGATION = _words(r"not", r"except", r"false", r"incorrect", r"least likely")
_CHIT_CHAT = _words(
    r"hi", r"hello", r"hey", r"thanks", r"thank you", r"good (?:morning|afternoon|evening)",
    r"how are you", r"bye", r"goodbye", r"what's up", r"ok", r"okay", r"cool", r"great",
)  # fmt: skip

FEATURE_NAMES: tuple[str, ...] = (
    "log_words",
    "log_chars",
    "log_lines",
    "mean_word_len",
    "digit_share",
    "upper_share",
    "non_ascii_share",
    "punct_share",
    "log_numbers",
    "log_long_numbers",
    "log_latex",
    "log_equations",
    "log_math_symbols",
    "log_code_lines",
    "log_indented_lines",
    "log_options",
    "ends_answer",
    "log_question_marks",
    "log_reasoning",
    "log_constraints",
    "log_write",
    "log_negation",
    "log_numbered",
    "chit_chat",
    "short_chit_chat",
    "heuristic_logit",
)


def prompt_features(text: str) -> np.ndarray:
    """The prompt's difficulty features, in FEATURE_NAMES order (float64)."""
    chars = max(len(text), 1)
    words = text.split()
    n_words = len(words)
    chit_chat = len(_CHIT_CHAT.findall(text))
    values = (
        math.log1p(n_words),
        math.log1p(len(text)),
        math.log1p(text.count("\n")),
        (sum(map(len, words)) / n_words) if n_words else 0.0,
        len(_DIGIT.findall(text)) / chars,
        len(_UPPER.findall(text)) / chars,
        len(_NON_ASCII.findall(text)) / chars,
        len(_PUNCT.findall(text)) / chars,
        math.log1p(len(_NUMBER.findall(text))),
        math.log1p(len(_LONG_NUMBER.findall(text))),
        math.log1p(len(_LATEX.findall(text))),
        math.log1p(len(_EQUATION.findall(text))),
        math.log1p(len(_MATH_SYMBOL.findall(text))),
        math.log1p(len(_CODE_LINE.findall(text))),
        math.log1p(len(_INDENTED.findall(text))),
        math.log1p(len(_OPTION.findall(text))),
        float(text.rstrip().endswith("Answer:")),
        math.log1p(text.count("?")),
        math.log1p(len(_REASONING.findall(text))),
        math.log1p(len(_CONSTRAINT.findall(text))),
        math.log1p(len(_WRITE.findall(text))),
        math.log1p(len(_NEGATION.findall(text))),
        math.log1p(len(_NUMBERED.findall(text))),
        float(min(chit_chat, 2)),
        float(chit_chat > 0 and n_words <= 8),
        _HEURISTIC.logit(text),
    )
    return np.array(values, dtype=np.float64)


_HEURISTIC = HeuristicScorer()


def prompt_feature_matrix(texts: Sequence[str]) -> np.ndarray:
    return (
        np.stack([prompt_features(t) for t in texts])
        if texts
        else np.zeros((0, len(FEATURE_NAMES)))
    )


@dataclass(frozen=True)
class DifficultyModel:
    """The linear model's weights; `score` is what serving and evaluation both call."""

    feature_names: tuple[str, ...]
    feature_mean: np.ndarray
    feature_scale: np.ndarray
    feature_coef: np.ndarray
    embedding_coef: np.ndarray | None
    """Coefficients of the normalised MiniLM embedding; None: the model reads no embedding."""
    lexical: LexicalPrior | None
    """TF-IDF block (its intercept is 0: the model's intercept is `intercept`)."""
    intercept: float
    calibration_slope: float = 1.0
    calibration_intercept: float = 0.0

    @property
    def uses_embedding(self) -> bool:
        return self.embedding_coef is not None

    def linear(self, texts: Sequence[str], embeddings: np.ndarray | None) -> np.ndarray:
        """The uncalibrated linear score of each text."""
        if tuple(FEATURE_NAMES) != self.feature_names:
            raise ValueError("the model was trained with other prompt features")
        features = (prompt_feature_matrix(texts) - self.feature_mean) / self.feature_scale
        z = features @ self.feature_coef + self.intercept
        if self.embedding_coef is not None:
            if embeddings is None or len(embeddings) != len(texts):
                raise ValueError("this router reads an embedding per text")
            z = z + np.asarray(embeddings, dtype=np.float64) @ self.embedding_coef
        if self.lexical is not None:
            z = z + np.array([self.lexical.logit(t) for t in texts], dtype=np.float64)
        return z

    def probability(self, linear: np.ndarray) -> np.ndarray:
        logit = self.calibration_slope * np.asarray(linear) + self.calibration_intercept
        return 1.0 / (1.0 + np.exp(-logit))

    def score(self, texts: Sequence[str], embeddings: np.ndarray | None) -> np.ndarray:
        return self.probability(self.linear(texts, embeddings))

    def save(self, directory: str | Path) -> Path:
        path = Path(directory) / WEIGHTS_FILE
        arrays: dict[str, Any] = {
            "feature_names": np.array(self.feature_names, dtype=str),
            "feature_mean": self.feature_mean,
            "feature_scale": self.feature_scale,
            "feature_coef": self.feature_coef,
            "intercept": np.float64(self.intercept),
            "calibration": np.array([self.calibration_slope, self.calibration_intercept]),
        }
        if self.embedding_coef is not None:
            arrays["embedding_coef"] = self.embedding_coef
        if self.lexical is not None:
            terms = sorted(self.lexical.vocabulary, key=self.lexical.vocabulary.__getitem__)
            arrays |= {
                "lexical_terms": np.array(terms, dtype=str),
                "lexical_idf": self.lexical.idf,
                "lexical_coef": self.lexical.coef,
                "lexical_ngram_max": np.int64(self.lexical.ngram_max),
            }
        np.savez_compressed(path, **arrays)
        return path

    @classmethod
    def load(cls, directory: str | Path) -> DifficultyModel:
        with np.load(Path(directory) / WEIGHTS_FILE, allow_pickle=False) as data:
            lexical = None
            if "lexical_terms" in data:
                lexical = LexicalPrior(
                    vocabulary={t: i for i, t in enumerate(data["lexical_terms"].tolist())},
                    idf=data["lexical_idf"].astype(np.float64),
                    coef=data["lexical_coef"].astype(np.float64),
                    intercept=0.0,
                    ngram_max=int(data["lexical_ngram_max"]),
                    weight=1.0,
                )
            slope, offset = data["calibration"].astype(np.float64).tolist()
            return cls(
                feature_names=tuple(data["feature_names"].tolist()),
                feature_mean=data["feature_mean"].astype(np.float64),
                feature_scale=data["feature_scale"].astype(np.float64),
                feature_coef=data["feature_coef"].astype(np.float64),
                embedding_coef=(
                    data["embedding_coef"].astype(np.float64) if "embedding_coef" in data else None
                ),
                lexical=lexical,
                intercept=float(data["intercept"]),
                calibration_slope=float(slope),
                calibration_intercept=float(offset),
            )


def is_difficulty_router(directory: str | Path) -> bool:
    card = Path(directory) / "router_card.json"
    if not card.is_file():
        return False
    return json.loads(card.read_text()).get("kind") == ROUTER_KIND
