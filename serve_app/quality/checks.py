"""Checks on a small-tier answer that decide whether the cascade escalates to the large tier.

Each check is a small callable returning the reason to escalate, or None; the gate runs them
cheapest first and stops at the first failure. A check sees the answer and the client's own
token limit (`max_tokens`, or `max_completion_tokens` for chat): an answer cut at that limit is
complete for its request, and only the truncation check needs to know it. The checks run in
the ingress process: the structural and confidence checks cost microseconds, far less than a
network hop. The optional learned judge (serve_app.quality.judge) costs a classifier forward
pass, so it runs last, in a worker thread, and only on answers every cheaper check let through.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping

from serve_app.config import QualityConfig, TierName
from serve_app.protocol.responses import Answer
from serve_app.quality.judge import AnswerJudge, judge_failures_counter

QualityCheck = Callable[[Answer], str | None]
# A check that also sees the client's limit on answer tokens (None: the client set none).
RequestCheck = Callable[[Answer, int | None], str | None]

_REFUSAL = re.compile(
    r"\b(?:i (?:do not|don't) know|i'm not sure|i am not sure|i cannot (?:help|answer|provide)"
    r"|i can't (?:help|answer|provide)|i'm (?:sorry|unable)[^.]{0,40}\b(?:can't|cannot|unable)"
    r"|as an ai(?: language model)?|i (?:do not|don't) have (?:access|enough information))\b",
    re.IGNORECASE,
)


def empty_answer(min_chars: int) -> QualityCheck:
    def check(answer: Answer) -> str | None:
        if answer.tool_calls:
            return None  # a tool call is the answer; its content is null by design
        return "empty" if len(answer.text.strip()) < min_chars else None

    return check


def cut_at_client_limit(answer: Answer, max_tokens: int | None) -> bool:
    """Whether a `length` answer stopped at the client's own `max_tokens`: complete for it.

    (`completion_tokens` counts every choice; with `n > 1` the first choice may have stopped
    earlier. vLLM refuses a max_tokens that does not fit the context, so with a client limit
    a `length` finish is that limit in practice.)
    """
    return max_tokens is not None and answer.completion_tokens >= max_tokens


def truncated_answer(small_context: int | None, large_context: int | None) -> RequestCheck:
    """Escalate an answer the small tier's own limit cut, where the large tier may go further.

    vLLM reports finish_reason `length` for three limits:
    - the client's max_tokens: the large tier would stop at the same token, so escalating pays
      twice for the same cut; the answer is complete for the request and is kept;
    - the engine's default limit, when the client set none (the rest of the context): the large
      tier may finish within it, so the answer escalates;
    - the small tier's context, before the client's limit: escalates only when the large
      tier's context (`max_model_len`) is longer, or unknown; at the same length it would be
      cut at the same place.
    """

    def check(answer: Answer, max_tokens: int | None) -> str | None:
        if answer.finish_reason != "length" or cut_at_client_limit(answer, max_tokens):
            return None
        if max_tokens is None:
            return "truncated"
        context_full = (
            small_context is not None
            and answer.prompt_tokens + answer.completion_tokens >= small_context
        )
        if context_full and large_context is not None and large_context <= small_context:
            return None
        return "truncated"

    return check


def _any_request(check: QualityCheck) -> RequestCheck:
    return lambda answer, _max_tokens: check(answer)


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
    """Runs the configured checks, cheapest first, and reports the first failure.

    `context_lengths`: each tier's `max_model_len` (None: unknown), which tells a truncation by
    the small tier's context apart from one the large tier would repeat.
    """

    def __init__(
        self,
        config: QualityConfig,
        context_lengths: Mapping[TierName, int | None] | None = None,
    ):
        self.config = config
        contexts = context_lengths or {}
        self.checks: list[RequestCheck] = []
        if config.escalate_on_empty:
            self.checks.append(_any_request(empty_answer(max(config.min_answer_chars, 1))))
        if config.escalate_on_truncation:
            self.checks.append(truncated_answer(contexts.get("small"), contexts.get("large")))
        if config.max_repeated_ngram_share is not None:
            repetition = degenerate_repetition(config.max_repeated_ngram_share)
            self.checks.append(_any_request(repetition))
        if config.escalate_on_refusal:
            self.checks.append(_any_request(refusal))
        if self.needs_logprobs:
            confidence = low_confidence(config.min_mean_logprob, config.min_token_logprob)
            self.checks.append(_any_request(confidence))
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

    def escalation_reason(self, answer: Answer, max_tokens: int | None = None) -> str | None:
        """The cheap checks only (structural, confidence): synchronous, microseconds.

        `max_tokens`: the client's own limit on answer tokens (None: it set none).
        """
        if not self.config.enabled:
            return None
        for check in self.checks:
            reason = check(answer, max_tokens)
            if reason:
                return reason
        return None

    async def judged_escalation_reason(
        self, prompt: str, answer: Answer, max_tokens: int | None = None
    ) -> str | None:
        """Every check, cheapest first; the learned judge only sees answers the rest passed.

        A tool-call answer skips the judge: it scores (prompt, answer text), and a tool call
        has no text to score.
        """
        reason = self.escalation_reason(answer, max_tokens)
        if reason or not self.config.enabled or self.judge is None or answer.tool_calls:
            return reason
        verdict = await self.judge.verdict(prompt, answer.text)
        return "judge" if verdict is not None and verdict.escalate else None
