"""Learned quality judge: P(the small tier's answer is not good enough) from (prompt, answer).

The judge is a sequence classifier trained by `router_training` on judge data (`python -m
router_training import judge ...`: prompt, answer, label) and exported with a card like the
router. The quality gate runs it last, after the structural and confidence checks that cost
microseconds, and in a worker thread so the ingress's event loop keeps serving meanwhile.

A judge is an optional extra: a checkpoint that cannot be loaded, or a scoring call that fails,
is logged and counted (`cascade_judge_failures`) and the other checks carry on without it.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from serve_app.quality.judge_format import judge_text
from serve_app.routing.scorers import ClassifierScorer

if TYPE_CHECKING:
    from ray.serve.metrics import Counter

logger = logging.getLogger("ray.serve")

DEFAULT_JUDGE_THRESHOLD = 0.5

# What loading or running a bad checkpoint raises in transformers/torch/safetensors.
_JUDGE_ERRORS: tuple[type[Exception], ...] = (OSError, ValueError, KeyError, RuntimeError)


def judge_failures_counter() -> Counter:
    # Imported here so that importing the judge does not import Ray.
    from ray.serve.metrics import Counter

    return Counter(
        "cascade_judge_failures",
        description="Learned-judge failures by stage (load, score); the gate went on without it.",
        tag_keys=("stage",),
    )


@dataclass(frozen=True)
class JudgeVerdict:
    score: float
    threshold: float

    @property
    def escalate(self) -> bool:
        return self.score >= self.threshold


class AnswerJudge:
    """Scores (prompt, answer) pairs with a classifier checkpoint; never fails the caller."""

    def __init__(
        self,
        checkpoint: str | Path,
        threshold: float | None = None,
        max_length: int = 256,
        failures: Counter | None = None,
    ) -> None:
        self.checkpoint = str(checkpoint)
        self._failures = failures
        self.scorer: ClassifierScorer | None = None
        self.load_error: str | None = None
        card_threshold = None
        try:
            self.scorer = ClassifierScorer(checkpoint, max_length)
            card_threshold = self.scorer.threshold
        except _JUDGE_ERRORS as e:
            self.load_error = f"{type(e).__name__}: {e}"
            logger.warning(
                "Quality judge %r not loaded; escalation checks go on without it: %s",
                self.checkpoint,
                self.load_error,
            )
            self._count_failure("load")
        if threshold is not None:
            self.threshold = threshold
        elif card_threshold is not None:
            self.threshold = card_threshold
        else:
            self.threshold = DEFAULT_JUDGE_THRESHOLD

    @property
    def available(self) -> bool:
        return self.scorer is not None

    def score(self, prompt: str, answer: str) -> float:
        """P(answer not good enough); raises what the model raises."""
        if self.scorer is None:
            raise RuntimeError(f"judge {self.checkpoint!r} is not loaded: {self.load_error}")
        (score,) = self.scorer.score_batch([judge_text(prompt, answer)])
        return score

    async def verdict(self, prompt: str, answer: str) -> JudgeVerdict | None:
        """The judge's verdict, or None when there is no working judge."""
        if self.scorer is None:
            return None
        try:
            # A forward pass takes tens of ms of CPU: keep the event loop serving meanwhile.
            score = await asyncio.to_thread(self.score, prompt, answer)
        except _JUDGE_ERRORS as e:
            logger.warning("Quality judge failed on one answer; not escalating: %s", e)
            self._count_failure("score")
            return None
        return JudgeVerdict(score, self.threshold)

    def _count_failure(self, stage: str) -> None:
        if self._failures is not None:
            self._failures.inc(tags={"stage": stage})
