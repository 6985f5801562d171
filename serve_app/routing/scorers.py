"""The router's scorers and artefacts, without Ray: what the serving router, the quality judge
and `router_training` share.

A scorer is anything with `score_batch(texts) -> list[float]`, the estimated probability that
the small tier is not good enough: a fine-tuned HF sequence classifier exported by
`router_training` (weights, tokenizer, `router_card.json` with the calibrated threshold, and
optionally the lexical prior of serve_app.routing.lexical), or a deterministic heuristic.
`load_active_scorer` turns a RouterConfig into the scorer and threshold a routing decision
reads; the Ray Serve deployment around it is serve_app.routing.router.
"""

from __future__ import annotations

import json
import logging
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

from serve_app.config import RouterConfig, TierName
from serve_app.routing.lexical import LexicalPrior

logger = logging.getLogger(__name__)

ScorerName = Literal["classifier", "heuristic"]
ROUTER_CARD_FILE = "router_card.json"

# What loading a bad checkpoint raises in transformers/torch/safetensors (missing files,
# unknown architecture, wrong shapes, unreadable card); anything else is a bug and propagates.
_CHECKPOINT_LOAD_ERRORS: tuple[type[Exception], ...] = (
    OSError,
    ValueError,
    KeyError,
    RuntimeError,
)


class Scorer(Protocol):
    """Estimates, per text, the probability that the small tier is not good enough."""

    def score_batch(self, texts: list[str]) -> list[float]: ...


def _markers(*phrases: str) -> re.Pattern[str]:
    return re.compile(r"\b(?:" + "|".join(phrases) + r")\b", re.IGNORECASE)


_REASONING = _markers(
    r"prove",
    r"proof",
    r"derive",
    r"derivation",
    r"show that",
    r"step[- ]by[- ]step",
    r"explain why",
    r"justify",
    r"implement\w*",
    r"algorithms?",
    r"calculate",
    r"compute",
    r"solve",
    r"evaluate",
    r"optimi[sz]e",
    r"complexity",
    r"determine",
    r"how many",
    r"find the",
    r"if and only if",
    r"implies",
    r"valid",
    r"statement 1",
)
_MATH_VOCAB = _markers(
    r"equations?",
    r"integrals?",
    r"derivatives?",
    r"polynomials?",
    r"matri(?:x|ces)",
    r"probability",
    r"theorem",
    r"integers?",
    r"primes?",
    r"modulo",
    r"logarithm",
    r"eigen\w*",
    r"vectors?",
    r"functions?",
    r"groups?",
    r"rings?",
    r"subgroups?",
    r"variance",
    r"regression",
    r"velocity",
    r"acceleration",
    r"molar",
    r"mass",
)
_CHIT_CHAT = _markers(
    r"hi",
    r"hello",
    r"hey",
    r"thanks",
    r"thank you",
    r"good (?:morning|afternoon|evening)",
    r"how are you",
    r"what is the capital",
    r"who (?:is|was|wrote)",
    r"translate",
    r"define",
    r"synonym",
    r"spell",
    r"joke",
)
_CODE = re.compile(
    r"```|^\s*(?:def|class|import|return|#include|public|function)\b|[;{}]\s*$",
    re.MULTILINE,
)
# "3x + 2 = 11", "2+2", "x^2", "n!": arithmetic between numbers/variables.
_EQUATION = re.compile(r"[\w)]\s*[-+*/^=<>≤≥×÷]\s*[\w(]|[∑∫√∂π∞≡⊃∨∧¬→↔]|\\frac|\\sum|\$")
_NUMBERED_ITEM = re.compile(r"^\s*(?:\d+[.)]|[-*•])\s+", re.MULTILINE)


@dataclass(frozen=True)
class HeuristicWeights:
    """Logit contributions of the heuristic's signals; positive means "needs the large tier"."""

    bias: float = -1.0
    log2_length: float = 0.45
    """Per doubling of the word count above `reference_words` (halving: the negative)."""
    reference_words: float = 40.0
    reasoning_marker: float = 0.9
    math_vocab: float = 0.35
    equation: float = 0.35
    digit_density: float = 6.0
    """Per unit of digits/non-space characters: numeric problems are harder than prose."""
    code: float = 1.5
    extra_question: float = 0.5
    numbered_item: float = 0.3
    chit_chat: float = -1.5
    marker_cap: int = 3
    """Counts above this add nothing: repetition is not extra difficulty."""


class HeuristicScorer:
    """Deterministic, model-free estimate of P(needs the large tier).

    Each text gets a logit: a negative bias, plus
    - length: `log2(words / reference_words)`, clamped to [-3, 3] (long prompts are harder,
      one-liners easier);
    - reasoning markers ("prove", "derive", "step by step", "explain why", "implement",
      "algorithm", "calculate", "find the", "how many", ...), counted up to `marker_cap`;
    - math vocabulary ("equation", "integral", "probability", "group", ...) and
      equation-looking spans ("3x + 2 = 11", "x^2", LaTeX, logic symbols), each capped;
    - digit density (digits per non-space character): numeric problems are hard for small
      models;
    - code (fences, `def`/`class`/`#include` lines, lines ending in `;` `{` `}`);
    - multi-part requests: extra question marks and numbered/bulleted items;
    - chit-chat and simple look-ups ("hi", "thanks", "what is the capital", "translate",
      "define", ...) pushing the logit down.
    The logit goes through the logistic function, so the score lies in (0, 1) and 0.5 is the
    point where the signals for and against the large tier balance.
    """

    def __init__(self, weights: HeuristicWeights | None = None) -> None:
        self.weights = weights or HeuristicWeights()

    def score_batch(self, texts: list[str]) -> list[float]:
        return [_logistic(self.logit(text)) for text in texts]

    def logit(self, text: str) -> float:
        w = self.weights
        cap = w.marker_cap
        words = max(len(text.split()), 1)
        non_space_chars = max(sum(not c.isspace() for c in text), 1)
        digits = sum(c.isdigit() for c in text)
        length = max(-3.0, min(3.0, math.log2(words / w.reference_words)))
        return (
            w.bias
            + w.log2_length * length
            + w.reasoning_marker * min(len(_REASONING.findall(text)), cap)
            + w.math_vocab * min(len(_MATH_VOCAB.findall(text)), cap)
            + w.equation * min(len(_EQUATION.findall(text)), cap)
            + w.digit_density * digits / non_space_chars
            + w.code * bool(_CODE.search(text))
            + w.extra_question * min(max(text.count("?") - 1, 0), cap)
            + w.numbered_item * min(len(_NUMBERED_ITEM.findall(text)), cap)
            + w.chit_chat * min(len(_CHIT_CHAT.findall(text)), 2)
        )


def _logistic(logit: float) -> float:
    return 1.0 / (1.0 + math.exp(-logit))


class ClassifierScorer:
    """A fine-tuned HF sequence classifier on CPU; label 1 means "needs the large tier".

    If the checkpoint directory holds a `router_card.json` with a "threshold", the threshold
    calibrated at training time is exposed as `self.threshold` (else None). If it holds a
    `lexical_prior.npz` (serve_app.routing.lexical), the classifier's score is rank-blended with it,
    exactly as router_training evaluated and calibrated it.
    """

    def __init__(self, checkpoint_dir: str | Path, max_length: int) -> None:
        # Imported here so the heuristic router works (and imports fast) without torch.
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self._torch = torch
        self.checkpoint_dir = Path(checkpoint_dir)
        self.max_length = max_length
        self.threshold = _card_threshold(self.checkpoint_dir)
        self.tokenizer = AutoTokenizer.from_pretrained(self.checkpoint_dir)
        self.model = AutoModelForSequenceClassification.from_pretrained(self.checkpoint_dir)
        self.model.eval()
        self.lexical_prior = LexicalPrior.load(self.checkpoint_dir)
        num_labels = self.model.config.num_labels
        if num_labels not in (1, 2):
            raise ValueError(
                f"{self.checkpoint_dir} has {num_labels} labels; a router needs 1 or 2"
            )

    def score_batch(self, texts: list[str]) -> list[float]:
        """Score texts in length-sorted sub-batches, each padded only to its own longest text:
        one long prompt then does not make every short one in the batch pay for its padding."""
        if not texts:
            return []
        if self.lexical_prior is not None and self.lexical_prior.weight == 1.0:
            # The encoder's share of the blend is zero: skip its forward pass (~2 GFLOP for
            # a 100-token prompt), leaving a sparse dot product per request.
            return [float(s) for s in self.lexical_prior.blend([0.0] * len(texts), texts)]
        torch = self._torch
        encodings = self.tokenizer(texts, truncation=True, max_length=self.max_length)
        lengths = [len(ids) for ids in encodings["input_ids"]]
        scores = [0.0] * len(texts)
        with torch.inference_mode():
            for chunk in _length_sorted_chunks(lengths, PADDED_TOKENS_PER_PASS):
                inputs = self.tokenizer.pad(
                    {key: [values[i] for i in chunk] for key, values in encodings.items()},
                    return_tensors="pt",
                )
                for i, score in zip(chunk, self._positive_probability(inputs), strict=True):
                    scores[i] = score
        if self.lexical_prior is not None:
            return [float(s) for s in self.lexical_prior.blend(scores, texts)]
        return scores

    def _positive_probability(self, inputs: dict[str, Any]) -> list[float]:
        torch = self._torch
        logits = self.model(**inputs).logits
        if logits.shape[-1] == 1:
            probs = torch.sigmoid(logits[:, 0])
        else:
            probs = torch.softmax(logits, dim=-1)[:, 1]
        return [float(p) for p in probs]


# Beyond a few thousand padded tokens a CPU forward pass gains nothing from a larger batch.
PADDED_TOKENS_PER_PASS = 2048


def _length_sorted_chunks(lengths: list[int], max_padded_tokens: int) -> list[list[int]]:
    """Indices grouped shortest first, each group's size x longest length within the budget
    (a group always holds at least one text)."""
    chunks: list[list[int]] = []
    current: list[int] = []
    for i in sorted(range(len(lengths)), key=lengths.__getitem__):
        if current and (len(current) + 1) * lengths[i] > max_padded_tokens:
            chunks.append(current)
            current = []
        current.append(i)
    if current:
        chunks.append(current)
    return chunks


def _card_threshold(checkpoint_dir: Path) -> float | None:
    card_path = checkpoint_dir / ROUTER_CARD_FILE
    if not card_path.is_file():
        return None
    card = json.loads(card_path.read_text())
    if "threshold" not in card:
        return None
    threshold = float(card["threshold"])
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"{card_path}: threshold must be in [0, 1], got {threshold}")
    return threshold


@dataclass(frozen=True)
class RouteDecision:
    tier: TierName
    score: float
    scorer: ScorerName
    threshold: float
    latency_ms: float


HeuristicReason = Literal["no_checkpoint", "checkpoint_failed"]
HEURISTIC_REASONS: tuple[HeuristicReason, ...] = ("no_checkpoint", "checkpoint_failed")


@dataclass(frozen=True)
class ActiveScorer:
    """Everything a routing decision reads, replaced as one object on reconfigure."""

    config: RouterConfig
    scorer: Scorer
    name: ScorerName
    threshold: float
    fallback_reason: str | None
    """Why a configured checkpoint is not used (None when it is, or none is configured)."""

    @property
    def heuristic_reason(self) -> HeuristicReason | None:
        if self.name == "classifier":
            return None
        return "checkpoint_failed" if self.fallback_reason else "no_checkpoint"

    def decide(self, score: float, latency_ms: float) -> RouteDecision:
        """The tier for `score`: large when it reaches the threshold."""
        tier: TierName = "large" if score >= self.threshold else "small"
        return RouteDecision(tier, score, self.name, self.threshold, latency_ms)


def load_active_scorer(config: RouterConfig) -> ActiveScorer:
    scorer, scorer_name, card_threshold, fallback_reason = _build_scorer(config)
    threshold = card_threshold if card_threshold is not None else config.threshold
    logger.info(
        "Router uses the %s scorer at threshold %s (from the %s)",
        scorer_name,
        threshold,
        "router card" if card_threshold is not None else "config",
    )
    return ActiveScorer(config, scorer, scorer_name, threshold, fallback_reason)


def _build_scorer(config: RouterConfig) -> tuple[Scorer, ScorerName, float | None, str | None]:
    """Return (scorer, its name, the router card's threshold, why the classifier was skipped)."""
    if config.checkpoint is None:
        return HeuristicScorer(), "heuristic", None, None
    if config.num_threads is not None:
        import torch

        torch.set_num_threads(config.num_threads)
    try:
        classifier = ClassifierScorer(config.checkpoint, config.max_length)
    except _CHECKPOINT_LOAD_ERRORS as e:
        reason = f"cannot load router checkpoint {config.checkpoint!r}: {type(e).__name__}: {e}"
        logger.warning("Falling back to the heuristic router: %s", reason)
        return HeuristicScorer(), "heuristic", None, reason
    return classifier, "classifier", classifier.threshold, None
