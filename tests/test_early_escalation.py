"""Early escalation: a weak small-tier answer is stopped while it is generated, not finished first.

Before: a judged small-tier answer was generated whole and then checked, so an answer that
would fail the confidence check cost its full generation time and tokens before the large tier
even started. Now the small tier's tokens are watched as they stream: once the running mean
logprob shows the answer will fail, the stream is cancelled (which aborts the engine's
generation) and the request escalates as `low_confidence_early`, charged only the tokens the
small tier generated. The engine is scripted (it streams tokens with chosen logprobs at a fixed
pace); the monitor, the real `TierStream`, the response rebuilding and the fallback are ours.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest

from serve_app.accounting.cost_model import RequestCost, TierPrice
from serve_app.accounting.request_trace import RequestTrace
from serve_app.config import EarlyEscalationConfig, QualityConfig
from serve_app.protocol.errors import TierUnavailableError
from serve_app.protocol.responses import StreamAccumulator, answer_from_response
from serve_app.protocol.stream_collector import (
    StreamCollector,
    chunk_token_logprobs,
    rebuildable_from_stream,
)
from serve_app.quality.early_stop import RunningConfidence, stop_token
from serve_app.quality.fallback import TierFallback
from serve_app.tiers.client import TierStream
from tests.helpers import ScriptedTier

SMALL_PRICE, LARGE_PRICE = TierPrice(1e-7, 2e-7), TierPrice(1e-6, 4e-6)
QUESTION = [{"role": "user", "content": "Explain why the sky is blue."}]
CONFIDENT, UNSURE = -0.1, -2.5

# ---- the monitor ---------------------------------------------------------------------------


def _monitor(**overrides: Any) -> RunningConfidence:
    settings = {"min_mean_logprob": -1.0, "min_token_logprob": None, "min_tokens": 8}
    settings |= {"window_tokens": 8} | overrides
    return RunningConfidence(**settings)


def test_an_unsure_answer_is_stopped_once_it_has_min_tokens() -> None:
    monitor = _monitor()
    stops = [monitor.observe([UNSURE]) for _ in range(20)]
    assert stops.index(True) == 7  # the 8th token: the first with a full say
    assert monitor.stopped_at == 8


def test_a_confident_answer_is_never_stopped() -> None:
    assert (
        stop_token([CONFIDENT] * 500, min_mean_logprob=-1.0, min_tokens=8, window_tokens=8) is None
    )


def test_a_late_collapse_is_caught_by_the_window_not_hidden_by_a_confident_start() -> None:
    # 100 confident tokens, then it starts guessing: the whole-answer mean stays above -1.0
    # for a long time, the window of the last 8 tokens does not (4 guesses: mean -1.3).
    logprobs = [CONFIDENT] * 100 + [UNSURE] * 100
    assert stop_token(logprobs, min_mean_logprob=-1.0, min_tokens=8, window_tokens=8) == 104
    assert sum(logprobs[:104]) / 104 > -1.0


def test_a_token_below_the_floor_stops_at_once_because_the_final_check_would_fail() -> None:
    logprobs = [CONFIDENT, -9.0] + [CONFIDENT] * 50
    assert (
        stop_token(
            logprobs, min_mean_logprob=None, min_token_logprob=-8.0, min_tokens=8, window_tokens=8
        )
        == 2
    )


def test_without_thresholds_the_monitor_is_inert() -> None:
    monitor = _monitor(min_mean_logprob=None)
    assert not monitor.active
    assert not monitor.observe([-20.0] * 100)


# ---- a scripted engine that streams ---------------------------------------------------------


class _ScriptedGeneration:
    """The rest of one scripted stream: one token per `token_s`, cancellable like Ray's."""

    def __init__(self, chunks: list[str], token_s: float, tier: StreamingTier):
        self._chunks = iter(chunks)
        self._token_s = token_s
        self._tier = tier
        self.cancelled = False

    def __aiter__(self) -> _ScriptedGeneration:
        return self

    async def __anext__(self) -> str:
        if self.cancelled:
            raise StopAsyncIteration
        await asyncio.sleep(self._token_s)
        if self._tier.fail_after is not None and self._tier.generated >= self._tier.fail_after:
            raise TierUnavailableError("Tier cascade-small is unavailable: replica died")
        chunk = next(self._chunks, None)
        if chunk is None:
            raise StopAsyncIteration
        self._tier.generated += chunk.count('"logprob"') or chunk.count('"token_logprobs"')
        return chunk

    def cancel(self) -> None:
        if not self.cancelled:  # idempotent, as Ray's DeploymentResponseGenerator.cancel
            self._tier.cancelled += 1
        self.cancelled = True


class StreamingTier(ScriptedTier):
    """A small tier whose answer is `len(logprobs)` tokens with those logprobs, streamed (or
    returned whole by `complete`) at `token_s` per token."""

    def __init__(self, logprobs: list[float], token_s: float = 0.002):
        super().__init__("cascade-small", text=None)
        self.logprobs = logprobs
        self.token_s = token_s
        self.streams = 0
        self.generated = 0  # tokens streamed so far, over all streams
        self.fail_after: int | None = None

    def _usage(self, completion_tokens: int) -> dict[str, int]:
        total = self.prompt_tokens + completion_tokens
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": total,
        }

    async def complete(self, body: dict, kind: str) -> dict:
        self.calls += 1
        await asyncio.sleep(self.token_s * len(self.logprobs))
        entries = [_entry(i, lp) for i, lp in enumerate(self.logprobs)]
        text = "".join(entry["token"] for entry in entries)
        return {
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "created": 0,
            "model": self.model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text, "refusal": None},
                    "logprobs": {"content": entries} if body.get("logprobs") else None,
                    "finish_reason": "stop",
                }
            ],
            "system_fingerprint": None,
            "usage": self._usage(len(self.logprobs)),
        }

    async def open_stream(self, body: dict, kind: str) -> TierStream:
        self.streams += 1
        base = {
            "id": "chatcmpl-1",
            "object": "chat.completion.chunk",
            "created": 0,
            "model": self.model,
        }
        first = _sse(
            {
                **base,
                "choices": [_delta({"role": "assistant", "content": ""})],
                "usage": self._usage(0),
            }
        )
        chunks = []
        for i, logprob in enumerate(self.logprobs):
            entry = _entry(i, logprob)
            choice = _delta({"content": entry["token"]}, {"content": [entry]})
            chunks.append(_sse({**base, "choices": [choice], "usage": self._usage(i + 1)}))
        usage = self._usage(len(self.logprobs))
        last = _delta({}, finish_reason="stop")
        chunks.append(_sse({**base, "choices": [last], "usage": usage}))
        chunks.append(_sse({**base, "choices": [], "usage": usage}))
        self.generation = _ScriptedGeneration(chunks, self.token_s, self)
        return TierStream(first, self.generation, StreamAccumulator("chat", self.model))


def _entry(i: int, logprob: float) -> dict[str, Any]:
    token = f" w{i}"
    return {"token": token, "logprob": logprob, "bytes": list(token.encode()), "top_logprobs": []}


def _delta(delta: dict, logprobs: dict | None = None, finish_reason: str | None = None) -> dict:
    return {"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish_reason}


def _sse(payload: dict[str, Any]) -> str:
    return f"data: {json.dumps(payload)}\n\n"


def _fallback(small: StreamingTier, large: ScriptedTier, **early: Any) -> TierFallback:
    quality = QualityConfig(
        min_mean_logprob=-1.0,
        early_escalation=EarlyEscalationConfig(
            **({"enabled": True, "min_tokens": 8, "window_tokens": 8} | early)
        ),
    )
    return TierFallback(
        {"small": small, "large": large}, {"small": SMALL_PRICE, "large": LARGE_PRICE}, quality
    )


def _ask(fallback: TierFallback, **body: Any) -> tuple[RequestTrace, dict[str, Any], float]:
    trace = RequestTrace(pinned=False, cost=RequestCost(LARGE_PRICE), tier="small")
    started = time.perf_counter()
    response, _ = asyncio.run(
        fallback.answer({"model": "cascade", "messages": QUESTION} | body, "chat", trace)
    )
    return trace, response, time.perf_counter() - started


# ---- the fallback ---------------------------------------------------------------------------


def test_a_weak_answer_escalates_early_aborting_the_small_generation_and_paying_its_tokens() -> (
    None
):
    small, large = StreamingTier([UNSURE] * 200, token_s=0.005), ScriptedTier("cascade-large")
    trace, response, _ = _ask(_fallback(small, large))
    assert (trace.tier, trace.escalation_reason) == ("large", "low_confidence_early")
    assert response["model"] == "cascade-large"
    assert small.cancelled == 1 and small.generated < 12  # stopped at ~8 of 200 tokens
    small_usage = trace.cost.tiers[0]
    assert small_usage.tier == "small"
    assert 8 <= small_usage.completion_tokens < 12
    assert trace.cost.tiers[-1].tier == "large"


def test_the_same_weak_answer_without_early_escalation_is_generated_whole_first() -> None:
    small, large = StreamingTier([UNSURE] * 200, token_s=0.005), ScriptedTier("cascade-large")
    trace, _, _ = _ask(_fallback(small, large, enabled=False))
    assert (trace.tier, trace.escalation_reason) == ("large", "low_confidence")
    assert small.streams == 0 and small.calls == 1
    assert trace.cost.tiers[0].completion_tokens == 200


def test_a_confident_answer_keeps_the_non_streamed_response_shape() -> None:
    small, large = StreamingTier([CONFIDENT] * 30), ScriptedTier("cascade-large")
    trace, response, _ = _ask(_fallback(small, large))
    assert (trace.tier, trace.escalated) == ("small", False)
    assert small.streams == 1 and large.calls == 0
    whole = asyncio.run(StreamingTier([CONFIDENT] * 30).complete({"logprobs": False}, "chat"))
    assert _shape(response) == _shape(whole)
    assert response["choices"][0]["message"]["content"] == whole["choices"][0]["message"]["content"]
    assert response["choices"][0]["logprobs"] is None  # asked internally, not by the client
    assert response["usage"] == whole["usage"]
    assert trace.cost.tiers[0].completion_tokens == 30


def test_logprobs_the_client_asked_for_come_back_as_a_whole_answer_would_carry_them() -> None:
    small = StreamingTier([CONFIDENT, -0.2, -0.3])
    _, response, _ = _ask(
        _fallback(small, ScriptedTier("cascade-large")), logprobs=True, top_logprobs=0
    )
    whole = asyncio.run(StreamingTier([CONFIDENT, -0.2, -0.3]).complete({"logprobs": True}, "chat"))
    assert response["choices"][0]["logprobs"] == whole["choices"][0]["logprobs"]


@pytest.mark.parametrize(
    "body",
    [
        {"n": 2, "temperature": 0.7},
        {"tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]},
    ],
    ids=["several-choices", "tools"],
)
def test_requests_a_stream_cannot_rebuild_are_generated_whole(body: dict[str, Any]) -> None:
    small, large = StreamingTier([UNSURE] * 40), ScriptedTier("cascade-large")
    trace, _, _ = _ask(_fallback(small, large), **body)
    assert small.streams == 0 and small.calls == 1
    assert trace.escalation_reason == "low_confidence"  # the final check still judges it


def test_a_small_tier_dying_mid_answer_still_fails_over() -> None:
    small, large = StreamingTier([CONFIDENT] * 100), ScriptedTier("cascade-large")
    small.fail_after = 20
    trace, response, _ = _ask(_fallback(small, large))
    assert (trace.tier, trace.escalation_reason) == ("large", "error")
    assert response["model"] == "cascade-large"


def _shape(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _shape(item) for key, item in value.items() if key not in {"id", "created"}}
    if isinstance(value, list):
        return [_shape(item) for item in value]
    return type(value).__name__


# ---- rebuilding the response ----------------------------------------------------------------


def test_collector_rebuilds_text_logprobs_finish_and_usage() -> None:
    collector = StreamCollector("chat")
    entry = _entry(0, -0.5)
    chunks = [
        {
            "id": "c1",
            "created": 5,
            "model": "m",
            "choices": [_delta({"role": "assistant", "content": ""})],
        },
        {
            "id": "c1",
            "choices": [_delta({"content": "Hi"}, {"content": [entry]})],
            "usage": {"prompt_tokens": 4, "completion_tokens": 1},
        },
        {"id": "c1", "choices": [{**_delta({}, finish_reason="stop"), "stop_reason": 2}]},
    ]
    for chunk in chunks:
        collector.observe(chunk)
    assert [chunk_token_logprobs(chunk, "chat") for chunk in chunks] == [[], [-0.5], []]
    response = collector.response()
    answer = answer_from_response(response, "chat")
    assert (answer.text, answer.finish_reason, answer.token_logprobs) == ("Hi", "stop", (-0.5,))
    assert (answer.prompt_tokens, answer.completion_tokens) == (4, 1)
    assert response["choices"][0]["stop_reason"] == 2
    assert (response["id"], response["created"], response["object"]) == ("c1", 5, "chat.completion")


@pytest.mark.parametrize(
    ("body", "kind", "rebuildable"),
    [
        ({"messages": QUESTION}, "chat", True),
        ({"messages": QUESTION, "logprobs": True}, "chat", True),
        ({"messages": QUESTION, "n": 3}, "chat", False),
        ({"messages": QUESTION, "tools": [{"type": "function"}]}, "chat", False),
        ({"prompt": "Once upon"}, "completion", True),
        ({"prompt": "Once upon", "logprobs": 1}, "completion", False),
        ({"prompt": "Once upon", "echo": True}, "completion", False),
        ({"prompt": ["a", "b"]}, "completion", False),
    ],
)
def test_which_requests_are_rebuildable(body: dict[str, Any], kind: str, rebuildable: bool) -> None:
    assert rebuildable_from_stream(body, kind) is rebuildable  # type: ignore[arg-type]
