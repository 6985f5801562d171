"""Which answers the cache may keep: the one rule behind every store of the request path.

A cached answer is replayed to later requests of its partition without any tier or gate seeing
it again, so only answers the quality gate vouches for are kept. Not cached:
- a degraded answer (the large tier failed and `allow_degraded` let the small tier answer);
- an answer served with the gate off (`x-cascade-quality: off`, or quality disabled);
- an answer the gate's checks fail (what it would escalate, or an escalated answer that is
  itself weak), and an answer cut short by a tier's own limit rather than the client's
  `max_tokens`; the cheap checks run here, the learned judge does not (it only ever judges
  routed small-tier answers, and those it failed were escalated);
- a routed small-tier answer the gate never saw (relay-mode streams) when the gate has checks
  a relayed answer cannot be put through (token confidence, the judge);
- a tool-call answer: the cache stores text only, and cannot replay tool calls.

An answer cut at the client's own `max_tokens` is complete for its request and is cached:
`max_tokens` is part of the cache partition (cache/keys.py), so only requests with the same
limit are answered by it.
"""

from __future__ import annotations

from serve_app.accounting.request_trace import RequestTrace
from serve_app.protocol.responses import Answer
from serve_app.quality.checks import QualityGate, cut_at_client_limit

_COMPLETE_FINISHES = ("stop", "length")


def uncacheable_reason(
    answer: Answer,
    trace: RequestTrace,
    gate: QualityGate,
    *,
    max_tokens: int | None,
    gate_on: bool,
    unjudged: bool = False,
) -> str | None:
    """Why `answer` must not be cached, or None when it may be.

    `max_tokens`: the client's own limit (`requested_max_tokens`); `gate_on`: the request's
    quality mode is not `off`; `unjudged`: a routed small-tier answer relayed as it came.
    """
    if trace.degraded:
        return "degraded"
    if not gate_on or not gate.config.enabled:
        return "quality_off"
    if answer.tool_calls:
        return "tool_calls"
    if answer.finish_reason not in _COMPLETE_FINISHES:
        return "finish_reason"
    if answer.finish_reason == "length" and not cut_at_client_limit(answer, max_tokens):
        return "truncated"
    if unjudged and (gate.needs_logprobs or gate.judge is not None):
        return "unjudged"
    return gate.escalation_reason(answer, max_tokens)
