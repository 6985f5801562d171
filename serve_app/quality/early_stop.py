"""Early escalation: stop a small-tier answer whose running confidence shows it will fail.

The confidence check (serve_app.quality.checks.low_confidence) judges a finished answer by its
mean and minimum token log-probability. An answer that will fail it usually shows it long
before it ends, so the quality fallback can generate the small tier's answer as a stream, feed
each token's logprob to a `RunningConfidence`, and abort the generation as soon as it says
stop: the large tier starts seconds earlier and the small tier is paid only for the tokens it
generated (escalation reason `low_confidence_early`).

It stops when
- a token falls below `min_token_logprob`: the finished answer would fail the check for sure;
- after at least `min_tokens` tokens, the mean logprob of the last `window_tokens` tokens is
  below `min_mean_logprob`: a prediction, which may stop an answer whose whole-answer mean
  would have passed (measured by `python -m benchmarks.confidence_calibration`).

Pure and Ray-free: the calibration benchmark replays recorded answers through it.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field


@dataclass
class RunningConfidence:
    """Watches an answer's token logprobs as they are generated; `observe` says when to stop."""

    min_mean_logprob: float | None
    min_token_logprob: float | None
    min_tokens: int
    window_tokens: int
    tokens_seen: int = field(default=0, init=False)
    stopped_at: int | None = field(default=None, init=False)
    """Tokens seen when it said stop (None: it has not)."""
    _window: deque[float] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.min_tokens < 1 or self.window_tokens < 1:
            raise ValueError("min_tokens and window_tokens must be at least 1")
        self._window = deque(maxlen=self.window_tokens)

    @property
    def active(self) -> bool:
        """Whether any threshold is set: without one it never stops an answer."""
        return self.min_mean_logprob is not None or self.min_token_logprob is not None

    def observe(self, logprobs: Iterable[float]) -> bool:
        """Feed the next tokens' logprobs; True once the answer should be abandoned."""
        for logprob in logprobs:
            if self.stopped_at is not None:
                break
            self.tokens_seen += 1
            self._window.append(logprob)
            if self._token_fails(logprob) or self._window_fails():
                self.stopped_at = self.tokens_seen
        return self.stopped_at is not None

    def _token_fails(self, logprob: float) -> bool:
        return self.min_token_logprob is not None and logprob < self.min_token_logprob

    def _window_fails(self) -> bool:
        if self.min_mean_logprob is None or self.tokens_seen < self.min_tokens:
            return False
        return sum(self._window) / len(self._window) < self.min_mean_logprob


def stop_token(
    logprobs: Sequence[float],
    *,
    min_mean_logprob: float | None,
    min_token_logprob: float | None = None,
    min_tokens: int,
    window_tokens: int,
) -> int | None:
    """How many tokens of a recorded answer a `RunningConfidence` lets through before it
    stops it, or None if it never does (the answer runs to its end)."""
    monitor = RunningConfidence(min_mean_logprob, min_token_logprob, min_tokens, window_tokens)
    monitor.observe(logprobs)
    return monitor.stopped_at
