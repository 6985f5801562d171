"""Checks on a small-tier answer that decide whether the cascade escalates to the large tier.

Each check is a small callable returning the reason to escalate, or None. They run in the
ingress process: the structural ones cost microseconds, far less than a network hop.
"""

from __future__ import annotations

from collections.abc import Callable

from serve_app.config import QualityConfig
from serve_app.openai_protocol import Answer

QualityCheck = Callable[[Answer], str | None]


def empty_answer(min_chars: int) -> QualityCheck:
    def check(answer: Answer) -> str | None:
        if len(answer.text.strip()) < min_chars:
            return "empty"
        return None

    return check


def truncated_answer(answer: Answer) -> str | None:
    # vLLM reports finish_reason "length" when max_tokens (or the context) cut the answer.
    if answer.finish_reason == "length":
        return "truncated"
    return None


class QualityGate:
    """Runs the configured checks, cheapest first, and reports the first failure."""

    def __init__(self, config: QualityConfig):
        self.config = config
        self.checks: list[QualityCheck] = []
        if config.escalate_on_empty:
            self.checks.append(empty_answer(max(config.min_answer_chars, 1)))
        if config.escalate_on_truncation:
            self.checks.append(truncated_answer)

    def escalation_reason(self, answer: Answer) -> str | None:
        if not self.config.enabled:
            return None
        for check in self.checks:
            reason = check(answer)
            if reason:
                return reason
        return None
