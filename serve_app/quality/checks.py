"""Checks on a small-tier answer that decide whether the cascade escalates to the large tier.

Each check is a small callable returning the reason to escalate, or None; the gate runs them
cheapest first and stops at the first failure. They run in the ingress process: the structural
and confidence checks cost microseconds, far less than a network hop. The optional learned
judge (serve_app.quality.judge) costs a classifier forward pass, so it runs last, in a worker
thread, and only on answers every cheaper check let through.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from serve_app.config import QualityConfig
from serve_app.protocol.openai_api import Answer
from serve_app.quality.judge import AnswerJudge, judge_failures_counter

QualityCheck = Callable[[Answer], str | None]

_REFUSAL = re.compile(
    r"\b(?:i (?:do not|don't) know|i'm not sure|i am not sure|i cannot (?:help|answer|provide)"
    r"|i can't (?:help|answer|provide)|i'm (?:sorry|unable)[^.]{0,40}\b(?:can't|cannot|unable)"
    r"|as an ai(?: language model)?|i (?:do not|don't) have (?:access|enough information))\b",
    re.IGNORECASE,
)


def empty_answer(min_chars: int) -> QualityCheck:
    def check(answer: Answer) -> str | None:
        return "empty" if len(answer.text.strip()) < min_chars else None

    return check


def truncated_answer(answer: Answer) -> str | None:
    # vLLM reports finish_reason "length" when max_tokens (or the context) cut the answer.
    return "truncated" if answer.finish_reason == "length" else None


def degenerate_repetition(max_repeated_share: float, ngram: int = 4) -> QualityCheck:
    """Small models loop ("the the the", a sentence over and over); count repeated n-grams."""

    def check(answer: Answer) -> str | None:
        words = answer.text.lower().split()
        grams = [tuple(words[i : i + ngram]) for i in range(len(words) - ngram + 1)]
        if len(grams) < 8:
            return None
        repeated_share = 1 - len(set(grams)) / len(grams)
        return "repetition" if repeated_share > max_repeated_share else None

    return check


def refusal(answer: Answer) -> str | None:
    return "refusal" if _REFUSAL.search(answer.text) else None


def low_confidence(min_mean_logprob: float | None, min_token_logprob: float | None):
    """Escalate when the small model was unsure of its own tokens (vLLM logprobs)."""

    def check(answer: Answer) -> str | None:
        logprobs = answer.token_logprobs
        if not logprobs:
            return None
        if min_mean_logprob is not None and sum(logprobs) / len(logprobs) < min_mean_logprob:
            return "low_confidence"
        if min_token_logprob is not None and min(logprobs) < min_token_logprob:
            return "low_confidence"
        return None

    return check


class QualityGate:
    """Runs the configured checks, cheapest first, and reports the first failure."""

    def __init__(self, config: QualityConfig):
        self.config = config
        self.checks: list[QualityCheck] = []
        if config.escalate_on_empty:
            self.checks.append(empty_answer(max(config.min_answer_chars, 1)))
        if config.escalate_on_truncation:
            self.checks.append(truncated_answer)
        if config.max_repeated_ngram_share is not None:
            self.checks.append(degenerate_repetition(config.max_repeated_ngram_share))
        if config.escalate_on_refusal:
            self.checks.append(refusal)
        if self.needs_logprobs:
            self.checks.append(low_confidence(config.min_mean_logprob, config.min_token_logprob))
        self.judge: AnswerJudge | None = None
        if config.judge_checkpoint:
            self.judge = AnswerJudge(
                config.judge_checkpoint,
                config.judge_threshold,
                config.judge_max_length,
                failures=judge_failures_counter(),
            )

    @property
    def needs_logprobs(self) -> bool:
        return self.config.min_mean_logprob is not None or self.config.min_token_logprob is not None

    def escalation_reason(self, answer: Answer) -> str | None:
        """The cheap checks only (structural, confidence): synchronous, microseconds."""
        if not self.config.enabled:
            return None
        for check in self.checks:
            reason = check(answer)
            if reason:
                return reason
        return None

    async def judged_escalation_reason(self, prompt: str, answer: Answer) -> str | None:
        """Every check, cheapest first; the learned judge only sees answers the rest passed."""
        reason = self.escalation_reason(answer)
        if reason or not self.config.enabled or self.judge is None:
            return reason
        verdict = await self.judge.verdict(prompt, answer.text)
        return "judge" if verdict is not None and verdict.escalate else None
