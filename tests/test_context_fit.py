"""Long prompts: counted with each tier's own tokenizer, sent to the tier whose context holds
them, refused with OpenAI's `context_length_exceeded` when none does, and a context-length
refusal of the small tier's engine escalated to the large tier.

Offline: the tokenizer is the packaged SmolLM2's the local engines serve (`make models`), the
counts are checked against vLLM's own chat rendering, and the engine refusals are vLLM's own
(built by its validation code); only the engine and router deployments are stand-ins (their
handles cannot exist offline). The live stack's side is tests/test_api_context.py.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from starlette.requests import Request

from serve_app.accounting.cost_model import RequestCost, TierPrice
from serve_app.accounting.metrics import IngressMetrics
from serve_app.accounting.request_trace import RequestTrace
from serve_app.config import CascadeConfig, QualityConfig
from serve_app.gateway.context_fit import (
    ANSWER_RESERVE_TOKENS,
    ContextFit,
    ContextLimits,
    TierTokenizer,
    TokenizerSource,
    tier_for_length,
)
from serve_app.gateway.pipeline import RequestPipeline
from serve_app.model_sources import resolve_model_source
from serve_app.protocol.errors import ContextLengthExceededError, UpstreamError
from serve_app.quality.fallback import TierFallback
from serve_app.routing.scorers import RouteDecision
from serve_app.tiers.client import TierClient
from tests.helpers import ScriptedTier

SMOLLM2 = "packaged://smollm2-135m-instruct"
SMALL_CONTEXT, LARGE_CONTEXT = 1024, 2048
PRICE = TierPrice(1e-6, 2e-6)
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather of a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}


def _config(
    source: str = SMOLLM2,
    small_context: int | None = SMALL_CONTEXT,
    large_context: int | None = LARGE_CONTEXT,
) -> CascadeConfig:
    cost = {"gpu_usd_per_hour": 1, "decode_tokens_per_s": 100, "prefill_tokens_per_s": 1000}

    def tier(model_id: str, context: int | None) -> dict[str, Any]:
        engine_kwargs = {"max_model_len": context} if context else {}
        return {
            "model_id": model_id,
            "model_source": source,
            "accelerator": "cpu",
            "engine_kwargs": engine_kwargs,
            "cost": cost,
        }

    return CascadeConfig.model_validate(
        {
            "tiers": {
                "small": tier("cascade-small", small_context),
                "large": tier("cascade-large", large_context),
            }
        }
    )


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    future = TierTokenizer(TokenizerSource(SMOLLM2)).preload()
    loaded = future.result(timeout=120)
    assert loaded is not None, "the packaged SmolLM2 is not prepared: run `make models`"
    return loaded


@pytest.fixture(scope="module")
def limits() -> ContextLimits:
    return ContextLimits(_config())


def _exact(tokenizer: TierTokenizer, body: dict[str, Any], kind: str = "chat") -> int | None:
    return asyncio.run(tokenizer.count(body, kind, within=0))  # type: ignore[arg-type]


def _text_of(tokens: int, tokenizer: Any) -> str:
    """A prose-like text of exactly `tokens` tokens for SmolLM2."""
    words = "the quick brown fox jumps over a lazy dog while analysts compute revenue".split()
    text = " ".join(words[i % len(words)] for i in range(tokens))
    assert len(tokenizer.encode(text, add_special_tokens=False)) == tokens
    return text


def _chat(content: str, **fields: Any) -> dict[str, Any]:
    return {"model": "cascade", "messages": [{"role": "user", "content": content}], **fields}


# ---- counting as the engine counts ------------------------------------------------------


_CHATS: dict[str, dict[str, Any]] = {
    "one-question": _chat("What is the capital of France?"),
    "system-and-turns": {
        "messages": [
            {"role": "system", "content": "Answer in one sentence."},
            {"role": "user", "content": "Name a colour."},
            {"role": "assistant", "content": "Blue."},
            {"role": "user", "content": "Another one, in French: ünïcödé 日本語?"},
        ]
    },
    "developer-role": {
        "messages": [
            {"role": "developer", "content": "Be brief."},
            {"role": "user", "content": "Hi"},
            {"role": "developer", "content": "Use English."},
        ]
    },
    "text-parts": {
        "messages": [
            {
                "role": "user",
                "content": [{"type": "text", "text": "First part."}, {"type": "text", "text": "2"}],
            }
        ]
    },
    "tools": {**_chat("Weather in Paris?"), "tools": [WEATHER_TOOL]},
    "tool-call-history": {
        "messages": [
            {"role": "user", "content": "Weather in Paris?"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call-1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "call-1", "content": "18 C, sunny"},
        ],
        "tools": [WEATHER_TOOL],
    },
    "no-generation-prompt": {**_chat("Complete me"), "add_generation_prompt": False},
}


@pytest.fixture(scope="module")
def vllm_renders() -> Callable[[dict[str, Any]], int]:
    """Tokens of a chat as vLLM renders and tokenizes it for the packaged SmolLM2."""
    from transformers import AutoTokenizer
    from vllm.config import ModelConfig
    from vllm.entrypoints.chat_utils import parse_chat_messages
    from vllm.renderers.hf import safe_apply_chat_template

    path = resolve_model_source(SMOLLM2)
    model_config = ModelConfig(model=path, tokenizer=path, dtype="float32", max_model_len=2048)
    hf_tokenizer = AutoTokenizer.from_pretrained(path)

    def render(body: dict[str, Any]) -> int:
        conversation, _, _ = parse_chat_messages(
            body["messages"], model_config, content_format="string"
        )
        token_ids = safe_apply_chat_template(
            model_config,
            hf_tokenizer,
            conversation,
            tools=body.get("tools"),
            add_generation_prompt=body.get("add_generation_prompt", True),
            return_dict=False,
        )
        return len(token_ids)

    return render


@pytest.mark.parametrize("body", _CHATS.values(), ids=_CHATS)
def test_a_chat_is_counted_as_vllm_renders_it(
    body: dict[str, Any], vllm_renders: Callable[[dict[str, Any]], int]
) -> None:
    counter = TierTokenizer(TokenizerSource(SMOLLM2))
    assert _exact(counter, body) == vllm_renders(body)


def test_a_completion_prompt_is_encoded_plainly(tokenizer: Any) -> None:
    counter = TierTokenizer(TokenizerSource(SMOLLM2))
    prompt = "Once upon a time, in a land far away,"
    assert _exact(counter, {"prompt": prompt}, "completion") == len(tokenizer(prompt).input_ids)
    # A batch of prompts is as long as its longest.
    batch = {"prompt": ["Hi", prompt]}
    assert _exact(counter, batch, "completion") == len(tokenizer(prompt).input_ids)


def test_a_short_prompt_is_bounded_without_encoding_and_the_bound_holds(tokenizer: Any) -> None:
    counter = TierTokenizer(TokenizerSource(SMOLLM2))
    body = _chat("ünïcödé 日本語 " + _text_of(300, tokenizer))
    exact = _exact(counter, body)
    bound = asyncio.run(counter.count(body, "chat", within=100_000))
    assert exact is not None and bound is not None
    assert exact < bound <= 100_000


# ---- the decision -------------------------------------------------------------------------

_LIMITS = {"small": SMALL_CONTEXT, "large": LARGE_CONTEXT}
_BOTH = ("small", "large")


@pytest.mark.parametrize(
    ("prompt_tokens", "max_tokens", "tiers", "expected"),
    [
        (100, 100, _BOTH, None),  # fits both: the router decides
        (1000, 100, _BOTH, "large"),  # too long for the small tier with its answer
        (100, 1000, _BOTH, "large"),  # the answer alone does not fit the small tier
        (1020, None, _BOTH, "large"),  # room for only 4 answer tokens on the small tier
        (1024 - ANSWER_RESERVE_TOKENS, None, _BOTH, None),
        (2040, None, _BOTH, "large"),  # the large tier still holds a short answer
        (1000, 24, _BOTH, None),  # 1000 + 24 is exactly the small context
        (None, None, _BOTH, None),  # not counted: the engines judge, as before
        (None, 1500, _BOTH, "large"),  # ...but max_tokens alone rules the small tier out
        (1000, None, ("small",), None),  # pinned: fits, if with little room
    ],
)
def test_the_tier_a_prompts_length_sends_it_to(
    prompt_tokens: int | None, max_tokens: int | None, tiers: tuple, expected: str | None
) -> None:
    counts = dict.fromkeys(tiers, prompt_tokens)
    assert tier_for_length(counts, max_tokens, _LIMITS, tiers) == expected


def test_an_unknown_context_holds_anything() -> None:
    limits = {"small": SMALL_CONTEXT, "large": None}
    assert tier_for_length({"small": 5000, "large": 5000}, None, limits, _BOTH) == "large"


@pytest.mark.parametrize(
    ("prompt_tokens", "max_tokens", "tiers", "limit", "requested"),
    [
        (2100, None, _BOTH, 2048, "2101 tokens (2100 in the messages, 1 in the completion)"),
        (2000, 100, _BOTH, 2048, "2100 tokens (2000 in the messages, 100 in the completion)"),
        (1024, None, ("small",), 1024, "1025 tokens (1024 in the messages"),
    ],
)
def test_a_prompt_no_tier_holds_is_refused_naming_the_limit_and_the_count(
    prompt_tokens: int, max_tokens: int | None, tiers: tuple, limit: int, requested: str
) -> None:
    with pytest.raises(ContextLengthExceededError) as refused:
        tier_for_length(dict.fromkeys(tiers, prompt_tokens), max_tokens, _LIMITS, tiers)
    error = refused.value
    assert (error.status_code, error.code, error.param) == (
        400,
        "context_length_exceeded",
        "messages",
    )
    assert f"maximum context length is {limit} tokens" in error.message
    assert requested in error.message


# ---- the gateway's measure, with the real tokenizer --------------------------------------


def _fit(limits: ContextLimits, body: dict[str, Any], pinned: Any = None, kind: str = "chat"):
    return asyncio.run(limits.fit(body, kind, pinned))  # type: ignore[arg-type]


def _routed_trace(tier: str) -> RequestTrace:
    trace = RequestTrace(pinned=False, cost=RequestCost(PRICE), tier=tier, routed_to=tier)  # type: ignore[arg-type]
    trace.route_score = 0.1
    return trace


def test_routed_requests_must_fit_the_longest_context(limits: ContextLimits) -> None:
    assert (limits[None], limits["small"], limits["large"]) == (2048, 1024, 2048)


def test_a_prompt_too_long_for_the_small_tier_goes_to_the_large_one(
    limits: ContextLimits, tokenizer: Any
) -> None:
    body = _chat(_text_of(1500, tokenizer), max_tokens=64)
    fit = _fit(limits, body)
    assert fit == ContextFit("large")
    trace = _routed_trace("small")
    fit.steer(trace)
    headers = trace.headers()
    assert (trace.tier, headers["x-cascade-route"]) == ("large", "large")
    assert headers["x-cascade-route-reason"] == "context"


def test_a_short_prompt_leaves_the_choice_to_the_router(
    limits: ContextLimits, tokenizer: Any
) -> None:
    fit = _fit(limits, _chat(_text_of(500, tokenizer), max_tokens=64))
    assert fit == ContextFit()
    trace = _routed_trace("small")
    fit.steer(trace)
    assert trace.tier == "small" and "x-cascade-route-reason" not in trace.headers()


def test_a_long_completion_prompt_goes_to_the_large_tier(
    limits: ContextLimits, tokenizer: Any
) -> None:
    body = {"model": "cascade", "prompt": ["Hi", _text_of(1100, tokenizer)], "max_tokens": 8}
    assert _fit(limits, body, kind="completion") == ContextFit("large")


def test_a_prompt_no_tier_holds_is_refused_with_its_exact_count(
    limits: ContextLimits, tokenizer: Any
) -> None:
    body = _chat(_text_of(2100, tokenizer), max_tokens=16)
    counted = _exact(TierTokenizer(TokenizerSource(SMOLLM2)), body)
    with pytest.raises(ContextLengthExceededError) as refused:
        _fit(limits, body)
    assert "maximum context length is 2048 tokens" in refused.value.message
    assert f"{counted} in the messages, 16 in the completion" in refused.value.message


def test_a_pinned_tier_is_held_to_its_own_context(limits: ContextLimits, tokenizer: Any) -> None:
    body = _chat(_text_of(1500, tokenizer), model="cascade-small", max_tokens=16)
    with pytest.raises(ContextLengthExceededError, match="maximum context length is 1024"):
        _fit(limits, body, pinned="small")
    assert _fit(limits, body, pinned="large") == ContextFit()


@pytest.fixture
def ray_serve_warnings() -> Iterator[list[logging.LogRecord]]:
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append  # type: ignore[method-assign]
    logger = logging.getLogger("ray.serve")
    logger.addHandler(handler)
    yield records
    logger.removeHandler(handler)


def test_without_a_tokenizer_serving_goes_on_as_before_logged_once(
    ray_serve_warnings: list[logging.LogRecord],
) -> None:
    limits = ContextLimits(_config(source="packaged://no-such-model"))
    long_body = _chat("word " * 3000)
    # Uncounted: the engines judge the prompt (and the fallback escalates their refusal)...
    assert _fit(limits, long_body) == ContextFit()
    assert _fit(limits, long_body) == ContextFit()
    # ...but a max_tokens the small context cannot hold still goes to the large tier.
    assert _fit(limits, _chat("Hi", max_tokens=1500)) == ContextFit("large")
    failures = [r for r in ray_serve_warnings if "No tokenizer" in r.getMessage()]
    assert len(failures) == 1


def test_tiers_without_a_known_context_need_no_tokenizer(
    ray_serve_warnings: list[logging.LogRecord],
) -> None:
    config = _config(source="packaged://no-such-model", small_context=None, large_context=None)
    limits = ContextLimits(config)
    limits.preload()
    assert limits[None] is None
    assert _fit(limits, _chat("word " * 3000, max_tokens=5000)) == ContextFit()
    assert not ray_serve_warnings


def test_a_context_known_for_one_tier_only_leaves_routed_requests_unbounded() -> None:
    limits = ContextLimits(_config(small_context=None))
    assert (limits[None], limits["small"], limits["large"]) == (None, None, 2048)


# ---- through the ingress's request path ----------------------------------------------------


class _RouterForSmall:
    """Stands in for the router deployment's handle (none exists offline): it sends every
    request to the small tier, as the real one does with an easy question."""

    def __init__(self) -> None:
        self.route = self  # handle.route.remote(text)
        self.calls = 0

    async def remote(self, text: str, *_: Any, **__: Any) -> RouteDecision:
        self.calls += 1
        return RouteDecision(
            tier="small", score=0.1, scorer="classifier", threshold=0.5, latency_ms=0.1
        )


def _pipeline() -> tuple[RequestPipeline, _RouterForSmall, dict[str, ScriptedTier]]:
    router = _RouterForSmall()
    tiers = {"small": ScriptedTier("cascade-small"), "large": ScriptedTier("cascade-large")}
    pipeline = RequestPipeline(
        _config(),
        tiers=tiers,  # type: ignore[arg-type]
        router=router,  # type: ignore[arg-type]
        cache=None,
        metrics=IngressMetrics.create(),
    )
    return pipeline, router, tiers


def _post(pipeline: RequestPipeline, body: dict[str, Any]) -> Any:
    payload = json.dumps(body).encode()

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": payload, "more_body": False}

    headers = [(b"content-type", b"application/json")]
    scope = {"type": "http", "method": "POST", "path": "/v1/chat/completions"}
    request = Request({**scope, "headers": headers, "query_string": b""}, receive)
    return asyncio.run(pipeline.handle(request, "chat"))


def test_the_ingress_sends_a_long_prompt_past_the_routers_choice(tokenizer: Any) -> None:
    pipeline, router, tiers = _pipeline()
    response = _post(pipeline, _chat(_text_of(1500, tokenizer), max_tokens=16))
    assert response.status_code == 200
    assert (tiers["small"].calls, tiers["large"].calls, router.calls) == (0, 1, 1)
    assert response.headers["x-cascade-tier"] == "large"
    assert response.headers["x-cascade-route-reason"] == "context"


def test_the_ingress_refuses_what_no_tier_holds_before_routing(tokenizer: Any) -> None:
    pipeline, router, tiers = _pipeline()
    with pytest.raises(ContextLengthExceededError, match="maximum context length is 2048"):
        _post(pipeline, _chat(_text_of(2100, tokenizer)))
    with pytest.raises(ContextLengthExceededError, match="maximum context length is 1024"):
        _post(pipeline, _chat(_text_of(1500, tokenizer), model="cascade-small"))
    assert (tiers["small"].calls, tiers["large"].calls, router.calls) == (0, 0, 0)
    response = _post(pipeline, _chat(_text_of(1500, tokenizer), model="cascade-large"))
    assert response.status_code == 200 and tiers["large"].calls == 1


# ---- the engine's own refusal -------------------------------------------------------------


def _vllm_refusal(refuse: Callable[[], Any]) -> Any:
    """The error item a tier's LLMServer yields when vLLM's validation raises in `refuse`."""
    from ray.llm._internal.serve.core.configs.openai_api_models import ErrorInfo, ErrorResponse
    from vllm.entrypoints.serve.exception_handling.error_response import create_error_response

    try:
        refuse()
    except Exception as e:  # whatever vLLM raises, vLLM maps it to its HTTP error
        error = create_error_response(e).error
        return ErrorResponse(error=ErrorInfo(**error.model_dump()))
    raise AssertionError("vLLM accepted the request")


def _prompt_too_long() -> None:
    from vllm.renderers.params import TokenizeParams

    params = TokenizeParams(
        max_total_tokens=2048,
        max_output_tokens=16,
        max_total_tokens_param="max_model_len",
        max_output_tokens_param="max_tokens",
    )
    params.apply_post_tokenization(None, {"prompt_token_ids": [0] * 2100})  # type: ignore[arg-type]


def _answer_too_long() -> None:
    from vllm.renderers.params import TokenizeParams

    TokenizeParams(
        max_total_tokens=2048,
        max_output_tokens=4096,
        max_total_tokens_param="max_model_len",
        max_output_tokens_param="max_tokens",
    )


def _input_too_long() -> None:
    from vllm.entrypoints.serve.utils.api_utils import get_max_tokens

    get_max_tokens(
        max_model_len=2048, max_tokens=None, input_length=2100, default_sampling_params={}
    )


def _no_room_for_an_answer() -> None:
    from vllm.sampling_params import SamplingParams

    SamplingParams(max_tokens=0)  # what vLLM asks for when the prompt fills the context


def _bad_temperature() -> None:
    from vllm.sampling_params import SamplingParams

    SamplingParams(temperature=-1)


_CONTEXT_REFUSALS = {
    "prompt-too-long": _prompt_too_long,
    "answer-too-long": _answer_too_long,
    "input-too-long": _input_too_long,
    "no-room-for-an-answer": _no_room_for_an_answer,
}


class _Refusal:
    """The response of a tier deployment's handle: the engine's error item, then nothing."""

    def __init__(self, item: Any):
        self._items = [item]

    def __aiter__(self) -> _Refusal:
        return self

    async def __anext__(self) -> Any:
        if not self._items:
            raise StopAsyncIteration
        return self._items.pop()

    def cancel(self) -> None:
        pass


class RefusingEngine:
    """A tier deployment's handle whose vLLM engine refuses every request with `refusal`."""

    def __init__(self, refusal: Any):
        self.refusal = refusal
        self.calls = 0

    def options(self, **_: Any) -> RefusingEngine:
        return self

    @property
    def chat(self) -> RefusingEngine:
        return self

    @property
    def completions(self) -> RefusingEngine:
        return self

    def remote(self, _request: Any) -> _Refusal:
        self.calls += 1
        return _Refusal(self.refusal)


class _StreamingLarge(ScriptedTier):
    async def open_stream(self, body: dict, kind: str) -> str:
        self.calls += 1
        return "the large tier's stream"


def _refusing_small(refuse: Callable[[], Any] = _prompt_too_long) -> TierClient:
    return TierClient(RefusingEngine(_vllm_refusal(refuse)), "cascade-small")  # type: ignore[arg-type]


def _fallback(small: Any, large: Any, **quality: Any) -> TierFallback:
    return TierFallback(
        {"small": small, "large": large},
        {"small": PRICE, "large": PRICE},
        QualityConfig(**quality),
        context_lengths={"small": 2048, "large": 2048},
    )


@pytest.mark.parametrize("refuse", _CONTEXT_REFUSALS.values(), ids=_CONTEXT_REFUSALS)
def test_vllms_context_refusals_are_told_apart(refuse: Callable[[], Any]) -> None:
    with pytest.raises(ContextLengthExceededError) as refused:
        asyncio.run(_refusing_small(refuse).complete(_chat("Hi"), "chat"))
    assert (refused.value.status_code, refused.value.code) == (400, "context_length_exceeded")


def test_other_engine_refusals_stay_what_they_were() -> None:
    with pytest.raises(UpstreamError) as refused:
        asyncio.run(_refusing_small(_bad_temperature).complete(_chat("Hi"), "chat"))
    assert refused.value.status_code == 400
    assert not isinstance(refused.value, ContextLengthExceededError)


@pytest.mark.parametrize("escalate_on_error", [True, False])
@pytest.mark.parametrize("check_quality", [True, False])
def test_a_small_tier_context_refusal_escalates_to_the_large_tier(
    escalate_on_error: bool, check_quality: bool
) -> None:
    large = ScriptedTier("cascade-large")
    fallback = _fallback(_refusing_small(), large, escalate_on_error=escalate_on_error)
    trace = _routed_trace("small")
    response, _ = asyncio.run(
        fallback.answer(_chat("Hi"), "chat", trace, check_quality=check_quality)
    )
    assert response["model"] == "cascade-large" and large.calls == 1
    assert (trace.tier, trace.escalation_reason) == ("large", "context_length")
    # The request's length is no fault of the tier: its circuit stays closed.
    assert fallback.breakers["small"].admit() is not None


def test_a_relayed_stream_refused_for_its_length_falls_back_to_the_large_tier() -> None:
    large = _StreamingLarge("cascade-large")
    fallback = _fallback(_refusing_small(), large)
    trace = _routed_trace("small")
    stream = asyncio.run(fallback.open_stream(_chat("Hi", stream=True), "chat", trace))
    assert stream == "the large tier's stream"
    assert (trace.tier, trace.escalation_reason) == ("large", "context_length")


def test_a_pinned_tiers_context_refusal_stands() -> None:
    large = ScriptedTier("cascade-large")
    fallback = _fallback(_refusing_small(), large)
    trace = RequestTrace(pinned=True, cost=RequestCost(PRICE), tier="small")
    with pytest.raises(ContextLengthExceededError):
        asyncio.run(fallback.answer(_chat("Hi", model="cascade-small"), "chat", trace))
    assert large.calls == 0
