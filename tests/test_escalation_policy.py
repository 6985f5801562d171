"""An escalation policy that pays for itself; a cache that keeps only answers the gate vouches for.

Before: every `finish_reason: length` answer was escalated as `truncated` (339 of 340
escalations in a savings run), including answers cut at the client's own `max_tokens`, where
the large tier stops at the same token and the request pays twice; such answers were never
cached either. A tool-call answer (content null) was escalated as `empty`, and a held stream
replayed only the text of its answer. The engines are scripted (`ScriptedTier`); the fallback,
the gate, the SSE replay and the cache rule under test are ours.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from serve_app.accounting.cost_model import RequestCost, TierPrice
from serve_app.accounting.request_trace import RequestTrace
from serve_app.config import QualityConfig, TierName
from serve_app.protocol.openai_api import RequestKind
from serve_app.protocol.responses import (
    Answer,
    StreamAccumulator,
    answer_from_response,
    parse_sse_event,
    replay_as_sse,
    response_as_sse,
)
from serve_app.quality.cache_policy import uncacheable_reason
from serve_app.quality.checks import QualityGate
from serve_app.quality.fallback import TierFallback
from tests.helpers import GOOD, ScriptedTier

SMALL_PRICE, LARGE_PRICE = TierPrice(1e-7, 2e-7), TierPrice(1e-6, 4e-6)
QUESTION = [{"role": "user", "content": "Tell me about dogs."}]
WEATHER_CALL = {
    "id": "chatcmpl-tool-1",
    "type": "function",
    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
}


def _fallback(
    small: ScriptedTier,
    large: ScriptedTier,
    contexts: dict[TierName, int | None] | None = None,
    **quality: Any,
) -> TierFallback:
    return TierFallback(
        {"small": small, "large": large},
        {"small": SMALL_PRICE, "large": LARGE_PRICE},
        QualityConfig(**quality),
        context_lengths=contexts or {"small": 2048, "large": 2048},
    )


def _ask(fallback: TierFallback, body: dict[str, Any]) -> tuple[RequestTrace, dict, Answer]:
    trace = RequestTrace(pinned=False, cost=RequestCost(LARGE_PRICE), tier="small")
    response, answer = asyncio.run(fallback.answer(body, "chat", trace))
    return trace, response, answer


def _cut_small_tier(completion_tokens: int, prompt_tokens: int = 10) -> ScriptedTier:
    small = ScriptedTier("cascade-small", text="Dogs are loyal companions that")
    small.finish_reason = "length"
    small.prompt_tokens, small.completion_tokens = prompt_tokens, completion_tokens
    return small


# ---- which truncations escalate ---------------------------------------------------------


@pytest.mark.parametrize("limit_param", ["max_tokens", "max_completion_tokens"])
def test_an_answer_cut_at_the_clients_max_tokens_is_kept(limit_param: str) -> None:
    small, large = _cut_small_tier(completion_tokens=6), ScriptedTier("cascade-large")
    body = {"model": "cascade", "messages": QUESTION, limit_param: 6}
    trace, response, answer = _ask(_fallback(small, large), body)
    assert (trace.tier, trace.escalated, trace.escalation_reason) == ("small", False, None)
    assert large.calls == 0  # the large tier would have stopped at the same 6th token
    assert response["choices"][0]["finish_reason"] == "length"
    assert trace.cost.total_usd < trace.cost.counterfactual_usd


def test_a_truncation_without_a_client_limit_is_escalated() -> None:
    # No max_tokens: the small engine's own default limit cut it; the large tier may finish.
    small, large = _cut_small_tier(completion_tokens=16), ScriptedTier("cascade-large")
    body = {"model": "cascade", "messages": QUESTION}
    trace, _, answer = _ask(_fallback(small, large), body)
    assert (trace.tier, trace.escalation_reason) == ("large", "truncated")
    assert answer.model == "cascade-large"


@pytest.mark.parametrize(("large_context", "escalated"), [(4096, True), (2048, False)])
def test_a_cut_at_the_small_tiers_context_escalates_only_to_a_longer_context(
    large_context: int, escalated: bool
) -> None:
    # 1900 prompt + 148 answer tokens fill the small tier's 2048 before the client's 1000.
    small, large = _cut_small_tier(148, prompt_tokens=1900), ScriptedTier("cascade-large")
    body = {"model": "cascade", "messages": QUESTION, "max_tokens": 1000}
    contexts: dict[TierName, int | None] = {"small": 2048, "large": large_context}
    trace, _, _ = _ask(_fallback(small, large, contexts), body)
    assert trace.escalated is escalated
    assert large.calls == (1 if escalated else 0)
    if escalated:
        assert trace.escalation_reason == "truncated"


def test_the_gate_decides_from_the_answer_and_the_clients_limit() -> None:
    gate = QualityGate(QualityConfig(), context_lengths={"small": 2048, "large": 4096})
    cut = Answer("Dogs are", "length", prompt_tokens=10, completion_tokens=8, model="s")
    assert gate.escalation_reason(cut, max_tokens=8) is None
    assert gate.escalation_reason(cut, max_tokens=None) == "truncated"
    # Cut before the client's limit without filling the context: the small tier's own cap.
    assert gate.escalation_reason(cut, max_tokens=50) == "truncated"


# ---- tool calls -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "finish_reason"),
    [(None, "tool_calls"), ("", "stop")],
    ids=["auto-or-required", "named-tool-choice"],
)
def test_a_tool_call_answer_is_not_escalated_as_empty(
    content: str | None, finish_reason: str
) -> None:
    small, large = ScriptedTier("cascade-small", text=content), ScriptedTier("cascade-large")
    small.tool_calls = [WEATHER_CALL]
    small.finish_reason = finish_reason
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {}}}]
    body = {"model": "cascade", "messages": QUESTION, "tools": tools, "tool_choice": "required"}
    trace, response, answer = _ask(_fallback(small, large), body)
    assert (trace.tier, trace.escalated, large.calls) == ("small", False, 0)
    assert response["choices"][0]["message"]["tool_calls"] == [WEATHER_CALL]
    assert answer.tool_calls == (WEATHER_CALL,)


def _events(events: list[str]) -> list[dict[str, Any]]:
    assert events[-1] == "data: [DONE]\n\n"
    payloads = [parse_sse_event(event) for event in events[:-1]]
    assert all(payload is not None for payload in payloads)
    return payloads  # type: ignore[return-value]


def _chat_response(*choices: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": "chatcmpl-held",
        "object": "chat.completion",
        "created": 1,
        "model": "cascade-small",
        "choices": list(choices),
        "usage": {"prompt_tokens": 10, "completion_tokens": 12, "total_tokens": 22},
    }


def test_a_held_tool_call_answer_replays_its_tool_calls_as_stream_deltas() -> None:
    message = {"role": "assistant", "content": None, "tool_calls": [WEATHER_CALL]}
    response = _chat_response(
        {"index": 0, "message": message, "logprobs": None, "finish_reason": "tool_calls"}
    )
    chunks = _events(response_as_sse(response, "chat", include_usage=True))
    assert {chunk["object"] for chunk in chunks} == {"chat.completion.chunk"}
    deltas = [chunk["choices"][0]["delta"] for chunk in chunks if chunk["choices"]]
    streamed_calls = [call for delta in deltas for call in delta.get("tool_calls", [])]
    assert streamed_calls == [{"index": 0, **WEATHER_CALL}]
    assert chunks[-2]["choices"][0]["finish_reason"] == "tool_calls"
    assert chunks[-1]["usage"]["completion_tokens"] == 12
    # A client (here the cascade's own accumulator) rebuilds the same answer from the stream.
    accumulator = StreamAccumulator("chat", "cascade-small")
    for chunk in chunks:
        accumulator.observe(chunk)
    rebuilt = accumulator.answer()
    assert rebuilt == answer_from_response(response, "chat")
    assert (rebuilt.tool_calls, rebuilt.finish_reason) == ((WEATHER_CALL,), "tool_calls")


def test_an_answer_with_tool_calls_replays_them_too() -> None:
    answer = Answer("", "tool_calls", 10, 12, "cascade-small", tool_calls=(WEATHER_CALL,))
    chunks = _events(replay_as_sse(answer, "chat", include_usage=False))
    calls = [c for ch in chunks for c in ch["choices"][0]["delta"].get("tool_calls", [])]
    assert calls == [{"index": 0, **WEATHER_CALL}]
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"


def test_a_held_stream_keeps_every_choice_and_the_clients_logprobs() -> None:
    logprobs = {"content": [{"token": "Hi", "logprob": -0.1, "bytes": None, "top_logprobs": []}]}
    response = _chat_response(
        {
            "index": 0,
            "message": {"role": "assistant", "content": "Hi", "tool_calls": []},
            "logprobs": logprobs,
            "finish_reason": "stop",
        },
        {
            "index": 1,
            "message": {"role": "assistant", "content": "Hello", "tool_calls": []},
            "logprobs": logprobs,
            "finish_reason": "length",
        },
    )
    chunks = _events(response_as_sse(response, "chat", include_usage=False))
    by_index: dict[int, list[dict[str, Any]]] = {}
    for chunk in chunks:
        (choice,) = chunk["choices"]
        by_index.setdefault(choice["index"], []).append(choice)
    assert sorted(by_index) == [0, 1]
    text = {i: "".join(c["delta"].get("content") or "" for c in cs) for i, cs in by_index.items()}
    assert text == {0: "Hi", 1: "Hello"}
    assert {i: cs[-1]["finish_reason"] for i, cs in by_index.items()} == {0: "stop", 1: "length"}
    for choices in by_index.values():
        assert [c["logprobs"] for c in choices if c["logprobs"]] == [logprobs]
    assert all(chunk["id"] == "chatcmpl-held" for chunk in chunks)


def test_a_held_completion_stream_keeps_its_logprobs() -> None:
    logprobs = {"tokens": [" Paris"], "token_logprobs": [-0.2], "top_logprobs": None}
    response = {
        "id": "cmpl-held",
        "object": "text_completion",
        "created": 1,
        "model": "cascade-small",
        "choices": [{"index": 0, "text": " Paris", "logprobs": logprobs, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6},
    }
    chunks = _events(response_as_sse(response, "completion", include_usage=False))
    assert "".join(chunk["choices"][0]["text"] for chunk in chunks) == " Paris"
    assert [c["choices"][0]["logprobs"] for c in chunks if c["choices"][0]["logprobs"]] == [
        logprobs
    ]
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


# ---- what may be cached -----------------------------------------------------------------


def _trace(tier: TierName = "small", **fields: Any) -> RequestTrace:
    trace = RequestTrace(pinned=False, cost=RequestCost(LARGE_PRICE), tier=tier)
    for name, value in fields.items():
        setattr(trace, name, value)
    return trace


def _good(**fields: Any) -> Answer:
    return Answer(**{"text": GOOD, "finish_reason": "stop", "prompt_tokens": 10,
                     "completion_tokens": 16, "model": "cascade-small", **fields})  # fmt: skip


GATE = QualityGate(QualityConfig(), context_lengths={"small": 2048, "large": 2048})
CONFIDENT_GATE = QualityGate(QualityConfig(min_mean_logprob=-3.0))


@pytest.mark.parametrize(
    ("answer", "trace", "options", "reason"),
    [
        (_good(), _trace(), {}, None),
        (_good(), _trace("large", escalated=True, escalation_reason="truncated"), {}, None),
        (_good(finish_reason="length", completion_tokens=6), _trace(), {"max_tokens": 6}, None),
        (_good(finish_reason="length"), _trace(), {}, "truncated"),
        (_good(finish_reason="length"), _trace("large"), {"max_tokens": 500}, "truncated"),
        (_good(), _trace(degraded=True), {}, "degraded"),
        (_good(), _trace(), {"gate_on": False}, "quality_off"),
        (_good(), _trace(), {"gate": QualityGate(QualityConfig(enabled=False))}, "quality_off"),
        (_good(text=" "), _trace("large"), {}, "empty"),
        (_good(text="I'm sorry, but I cannot answer that."), _trace("large"), {}, "refusal"),
        (_good(text="", tool_calls=(WEATHER_CALL,)), _trace(), {}, "tool_calls"),
        (_good(finish_reason="content_filter"), _trace(), {}, "finish_reason"),
        (_good(token_logprobs=(-5.0, -6.0)), _trace(), {"gate": CONFIDENT_GATE}, "low_confidence"),
        (_good(), _trace(), {"gate": CONFIDENT_GATE, "unjudged": True}, "unjudged"),
        (_good(), _trace(), {"unjudged": True}, None),
    ],
    ids=[
        "good",
        "escalated-large-answer",
        "cut-at-client-max-tokens",
        "cut-by-engine-default",
        "cut-by-tier-context",
        "degraded",
        "gate-off-by-header",
        "gate-disabled",
        "empty",
        "refusal",
        "tool-call",
        "content-filter",
        "would-escalate-low-confidence",
        "relayed-unjudged-confidence-gate",
        "relayed-structural-only-gate",
    ],
)
def test_only_answers_the_gate_vouches_for_are_cached(
    answer: Answer, trace: RequestTrace, options: dict[str, Any], reason: str | None
) -> None:
    options = {"gate": GATE, "max_tokens": None, "gate_on": True, **options}
    assert uncacheable_reason(answer, trace, **options) == reason


def test_replayed_events_are_valid_json_lines() -> None:
    kind: RequestKind = "chat"
    for event in replay_as_sse(_good(), kind, include_usage=True)[:-1]:
        assert event.startswith("data: ") and event.endswith("\n\n")
        json.loads(event.removeprefix("data: "))
