"""The router's scorers and artefacts, without Ray: what the serving router, the quality judge
and `router_training` share.

A scorer is anything with `score_batch(texts, embeddings=None) -> list[float]`, the estimated
probability that the small tier is not good enough:
- the difficulty router (serve_app.routing.difficulty; `router_card.json` of kind
  `difficulty-linear`): prompt features + the MiniLM sentence embedding, which callers that
  already embedded the request (the semantic cache's vector) pass in as `embeddings`. The
  package ships one, `builtin://default-router` (serve_app/routing/default_router/);
- a fine-tuned HF sequence classifier exported by `router_training` (weights, tokenizer,
  `router_card.json` with the calibrated threshold, and optionally the lexical prior of
  serve_app.routing.lexical);
- a deterministic heuristic (serve_app.routing.heuristic).
`load_active_scorer` turns a RouterConfig into the scorer and threshold a routing decision
reads (the threshold derived from `router.target` on the card's operating curve,
serve_app.routing.operating_point); the Ray Serve deployment around it is
serve_app.routing.router.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, NamedTuple, Protocol

import numpy as np

from serve_app.config import BUILTIN_ROUTER_PREFIX, RouterConfig, TierName
from serve_app.routing.difficulty import DifficultyModel, is_difficulty_router
from serve_app.routing.heuristic import HeuristicScorer
from serve_app.routing.lexical import LexicalPrior
from serve_app.routing.operating_point import (
    ClientAsk,
    OperatingCurve,
    OperatingPoint,
    RequestOperatingPoint,
    operating_point,
    resolve_ask,
)

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


# `builtin://<name>` checkpoints: router artefacts shipped inside this package.
BUILTIN_ROUTERS: dict[str, Path] = {"default-router": Path(__file__).parent / "default_router"}


class Scorer(Protocol):
    """Estimates, per text, the probability that the small tier is not good enough.

    `embeddings`, when given, are the texts' normalised MiniLM sentence embeddings
    ([len(texts), 384], serve_app.routing.embedding); scorers that read none ignore them.
    """

    def score_batch(
        self, texts: list[str], embeddings: np.ndarray | None = None
    ) -> list[float]: ...


def resolve_checkpoint(checkpoint: str) -> Path:
    """The directory of a configured checkpoint: `builtin://<name>` or a path."""
    if checkpoint.startswith(BUILTIN_ROUTER_PREFIX):
        name = checkpoint.removeprefix(BUILTIN_ROUTER_PREFIX)
        if name not in BUILTIN_ROUTERS:
            raise ValueError(f"unknown built-in router {name!r}; known: {sorted(BUILTIN_ROUTERS)}")
        return BUILTIN_ROUTERS[name]
    return Path(checkpoint)


class DifficultyScorer:
    """The difficulty router (serve_app.routing.difficulty) with its embedder.

    Texts without a precomputed embedding are embedded here with the packaged MiniLM
    (loaded on first need); the score is the model's calibrated probability. Training's
    evaluation calls this same `score_batch`, so served and evaluated scores agree.
    """

    def __init__(self, checkpoint_dir: str | Path, embedder: Any = None) -> None:
        self.checkpoint_dir = Path(checkpoint_dir)
        card = json.loads((self.checkpoint_dir / ROUTER_CARD_FILE).read_text())
        self.model = DifficultyModel.load(self.checkpoint_dir)
        self.embedding_model: str = card.get("embedding_model", "packaged://all-minilm-l6-v2")
        self.threshold = _card_threshold(self.checkpoint_dir)
        self._embedder = embedder

    @property
    def embedder(self) -> Any:
        if self._embedder is None:
            from serve_app.routing.embedding import SentenceEmbedder

            self._embedder = SentenceEmbedder(self.embedding_model)
        return self._embedder

    def warm_up(self) -> None:
        """Load the embedder and score once, so the first request does not pay for it."""
        self.score_batch(["warm-up"])

    def score_batch(self, texts: list[str], embeddings: np.ndarray | None = None) -> list[float]:
        if not texts:
            return []
        if self.model.uses_embedding and embeddings is None:
            embeddings = self.embedder.embed_batch(list(texts))
        return [float(s) for s in self.model.score(texts, embeddings)]


class ClassifierScorer:
    """A fine-tuned HF sequence classifier on CPU; label 1 means "needs the large tier".

    If the checkpoint directory holds a `router_card.json` with a "threshold", the threshold
    calibrated at training time is exposed as `self.threshold` (else None). If it holds a
    `lexical_prior.npz` (serve_app.routing.lexical), the classifier's score is blended with it
    (a weighted mean of logits), exactly as router_training evaluated and calibrated it.
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

    def score_batch(self, texts: list[str], embeddings: np.ndarray | None = None) -> list[float]:
        """Score texts in length-sorted sub-batches, each padded only to its own longest text:
        one long prompt then does not make every short one in the batch pay for its padding.
        `embeddings` are not read (the classifier runs its own encoder)."""
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


def _read_card(checkpoint_dir: Path) -> dict[str, Any]:
    card_path = checkpoint_dir / ROUTER_CARD_FILE
    return json.loads(card_path.read_text()) if card_path.is_file() else {}


def card_curve(checkpoint_dir: Path) -> OperatingCurve | None:
    """The cost-quality curve the card recorded on held-out prompts, if it has one."""
    return OperatingCurve.from_card(_read_card(checkpoint_dir))


def _card_threshold(checkpoint_dir: Path) -> float | None:
    card_path = checkpoint_dir / ROUTER_CARD_FILE
    card = _read_card(checkpoint_dir)
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
    """The threshold this request was routed at (its own, when it asked for one)."""
    latency_ms: float
    operating_point: OperatingPoint | None = None
    """The operator's: target, derived threshold, what the card's curve expects there."""
    request: RequestOperatingPoint | None = None
    """What this request's own ask (model alias, large-share header) resolved to."""

    def explanation(self) -> dict[str, Any]:
        """The operating point and the request's own, as `POST /v1/route` shows them."""
        return {
            "operating_point": (
                None if self.operating_point is None else self.operating_point.as_json()
            ),
            "request_target": None if self.request is None else self.request.as_json(),
        }


HeuristicReason = Literal["no_checkpoint", "checkpoint_failed"]
HEURISTIC_REASONS: tuple[HeuristicReason, ...] = ("no_checkpoint", "checkpoint_failed")


@dataclass(frozen=True)
class ActiveScorer:
    """Everything a routing decision reads, replaced as one object on reconfigure."""

    config: RouterConfig
    scorer: Scorer
    name: ScorerName
    operating_point: OperatingPoint
    curve: OperatingCurve | None
    """The card's cost-quality curve; None for the heuristic or a card without one."""
    fallback_reason: str | None
    """Why a configured checkpoint is not used (None when it is, or none is configured)."""

    @property
    def threshold(self) -> float:
        return self.operating_point.threshold

    @property
    def heuristic_reason(self) -> HeuristicReason | None:
        if self.name == "classifier":
            return None
        return "checkpoint_failed" if self.fallback_reason else "no_checkpoint"

    def decide(
        self, score: float, latency_ms: float, ask: ClientAsk | None = None
    ) -> RouteDecision:
        """The tier for `score`: large when it reaches the threshold, the request's own when
        it asked for one (within the operator's bounds)."""
        request = None
        threshold = self.threshold
        if ask is not None:
            request = resolve_ask(ask, self.config.client_bounds, self.curve, self.operating_point)
            threshold = request.threshold
        tier: TierName = "large" if score >= threshold else "small"
        return RouteDecision(
            tier, score, self.name, threshold, latency_ms, self.operating_point, request
        )


def load_active_scorer(config: RouterConfig) -> ActiveScorer:
    loaded = _build_scorer(config)
    point = operating_point(config, loaded.card_threshold, loaded.curve)
    if point.note:
        logger.warning("Router: %s", point.note)
    logger.info(
        "Router uses the %s scorer at threshold %s (from %s); the card's curve expects %s",
        loaded.name,
        point.threshold,
        point.source,
        "nothing (no curve)" if point.expected is None else point.expected,
    )
    return ActiveScorer(
        config, loaded.scorer, loaded.name, point, loaded.curve, loaded.fallback_reason
    )


class _LoadedScorer(NamedTuple):
    scorer: Scorer
    name: ScorerName
    card_threshold: float | None
    curve: OperatingCurve | None
    fallback_reason: str | None
    """Why the configured checkpoint is not used."""


def _build_scorer(config: RouterConfig) -> _LoadedScorer:
    if config.checkpoint is None:
        return _LoadedScorer(HeuristicScorer(), "heuristic", None, None, None)
    if config.num_threads is not None:
        import torch

        torch.set_num_threads(config.num_threads)
    try:
        checkpoint = resolve_checkpoint(config.checkpoint)
        curve = card_curve(checkpoint)
        if is_difficulty_router(checkpoint):
            difficulty = DifficultyScorer(checkpoint)
            difficulty.warm_up()
            return _LoadedScorer(difficulty, "classifier", difficulty.threshold, curve, None)
        classifier = ClassifierScorer(checkpoint, config.max_length)
    except _CHECKPOINT_LOAD_ERRORS as e:
        reason = f"cannot load router checkpoint {config.checkpoint!r}: {type(e).__name__}: {e}"
        logger.warning("Falling back to the heuristic router: %s", reason)
        return _LoadedScorer(HeuristicScorer(), "heuristic", None, None, reason)
    return _LoadedScorer(classifier, "classifier", classifier.threshold, curve, None)
