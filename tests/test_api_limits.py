"""Bad input gets a 400 naming the offending `param` before anything reaches a tier."""

from __future__ import annotations

import asyncio
import json
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from benchmarks.burst import burst
from benchmarks.loadgen import run_load, summarize
from serve_app.gateway.request_limits import request_timeout_s
from serve_app.protocol.errors import InvalidRequestError
from serve_app.protocol.openai_api import parse_json_object, parse_request_body, request_json_schema
from tests.helpers import chat_body

_BAD_CHAT_BODIES: dict[str, tuple[dict[str, Any], str]] = {
    "max-tokens-as-string": (chat_body("hi", max_tokens="5"), "max_tokens"),
    "temperature-as-string": (chat_body("hi", temperature="0.5"), "temperature"),
    "stream-as-int": (chat_body("hi", stream=1), "stream"),
    "top-p-zero": (chat_body("hi", top_p=0), "top_p"),
    "top-p-above-one": (chat_body("hi", top_p=1.5), "top_p"),
    "n-zero": (chat_body("hi", n=0), "n"),
    "n-huge": (chat_body("hi", n=1000), "n"),
    "presence-penalty": (chat_body("hi", presence_penalty=3), "presence_penalty"),
    "frequency-penalty": (chat_body("hi", frequency_penalty=-2.5), "frequency_penalty"),
    "seed-beyond-int64": (chat_body("hi", seed=2**64), "seed"),
    "five-stop-sequences": (chat_body("hi", stop=["a", "b", "c", "d", "e"]), "stop"),
    "stop-not-text": (chat_body("hi", stop=[1]), "stop.0"),
    "logit-bias-word": (chat_body("hi", logit_bias={"hello": 1}), "logit_bias"),
    "top-logprobs": (chat_body("hi", top_logprobs=50), "top_logprobs"),
    "fractional-max-tokens": (chat_body("hi", max_tokens=4.5), "max_tokens"),
    "several-greedy-choices": (chat_body("hi", n=3, temperature=0), "n"),
    "empty-stop-sequence": (chat_body("hi", stop=["a", ""]), "stop"),
    "messages-not-a-list": (chat_body("hi", messages="hi"), "messages"),
    "unknown-role": (
        chat_body("hi", messages=[{"role": "wizard", "content": "hi"}]),
        "messages.0.role",
    ),
    "message-not-an-object": (chat_body("hi", messages=["hi"]), "messages.0"),
    "content-a-number": (
        chat_body("hi", messages=[{"role": "user", "content": 42}]),
        "messages.0.content",
    ),
    "image-part-for-a-text-model": (
        chat_body(
            "hi",
            messages=[
                {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}
            ],
        ),
        "messages.0.content.0.type",
    ),
    "model-as-number": (chat_body("hi", model=3), "model"),
}


@pytest.mark.parametrize(("body", "param"), _BAD_CHAT_BODIES.values(), ids=_BAD_CHAT_BODIES)
def test_bad_chat_field_is_a_400_naming_the_param(body: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequestError) as refused:
        parse_request_body(json.dumps(body).encode(), "chat")
    assert refused.value.status_code == 400
    assert refused.value.param == param


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "cascade", "prompt": [""]}, "prompt"),
        ({"model": "cascade", "prompt": [1, 2]}, "prompt"),
        ({"model": "cascade", "prompt": "hi", "logprobs": 6}, "logprobs"),
        ({"model": "cascade", "prompt": "hi", "echo": "yes"}, "echo"),
    ],
)
def test_bad_completion_field_is_a_400_naming_the_param(body: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequestError) as refused:
        parse_request_body(json.dumps(body).encode(), "completion")
    assert refused.value.param is not None and refused.value.param.startswith(param)


def test_valid_openai_bodies_pass_unchanged() -> None:
    body = chat_body(
        "hi",
        temperature=1,  # an integer is a valid number
        max_tokens=8.0,  # and an integral float a valid integer, as in JSON Schema
        top_p=0.9,
        n=2,
        stop="\n",
        seed=-1,
        logit_bias={"50256": -100},
        messages=[
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": [{"type": "text", "text": "hi"}], "name": "ann"},
        ],
    )
    assert parse_request_body(json.dumps(body).encode(), "chat") == body


@pytest.mark.parametrize("depth", [33, 200_000], ids=["just-too-deep", "recursion-bomb"])
def test_deeply_nested_json_is_a_400_not_a_crash(depth: int) -> None:
    nested = b'{"model": "cascade", "extra": ' + b"[" * depth + b"]" * depth + b"}"
    with pytest.raises(InvalidRequestError, match="deeper than 32"):
        parse_json_object(nested, max_depth=32)


@pytest.mark.parametrize("constant", [b"NaN", b"Infinity", b"-Infinity"])
def test_non_json_numbers_are_a_400(constant: bytes) -> None:
    with pytest.raises(InvalidRequestError, match="not valid JSON"):
        parse_json_object(b'{"model": "cascade", "temperature": ' + constant + b"}")


_HI = b'{"model": "cascade", "messages": [{"role": "user", "content": "hi"}]'
_LONE_SURROGATE_CONTENT = _HI.replace(b'"hi"', b'"a\\ud800b"') + b"}"
_LONE_SURROGATE_KEY = _HI + b', "\\udcf8": 1}'


@pytest.mark.parametrize(
    "raw", [_LONE_SURROGATE_CONTENT, _LONE_SURROGATE_KEY], ids=["in-content", "in-a-key"]
)
def test_a_lone_surrogate_escape_is_a_400(raw: bytes) -> None:
    """Python decodes `"\\ud800"` into a string UTF-8 cannot encode; it used to get past
    validation and fail later as a 500."""
    with pytest.raises(InvalidRequestError, match="surrogate"):
        parse_request_body(raw, "chat")


def test_a_surrogate_pair_is_one_character_and_accepted() -> None:
    raw = b'{"model": "cascade", "messages": [{"role": "user", "content": "\\ud83d\\ude00"}]}'
    assert parse_request_body(raw, "chat")["messages"][0]["content"] == "\U0001f600"


def test_nesting_within_the_limit_is_accepted() -> None:
    nested = b'{"extra": ' + b"[" * 30 + b"]" * 30 + b"}"
    assert parse_json_object(nested, max_depth=32)["extra"]


@pytest.mark.parametrize(
    ("headers", "expected_s"),
    [({}, 120.0), ({"x-cascade-timeout-s": "2.5"}, 2.5), ({"x-cascade-timeout-s": "999"}, 120.0)],
)
def test_client_deadline_can_only_shorten_the_timeout(
    headers: dict[str, str], expected_s: float
) -> None:
    assert request_timeout_s(headers, 120.0) == expected_s


@pytest.mark.parametrize("value", ["soon", "0", "-3", "nan", "inf"])
def test_bad_client_deadline_is_a_400(value: str) -> None:
    with pytest.raises(InvalidRequestError):
        request_timeout_s({"x-cascade-timeout-s": value}, 120.0)


def test_request_schemas_are_self_contained_for_openapi() -> None:
    chat = request_json_schema("chat")
    assert set(chat["required"]) == {"model", "messages"}
    assert "$ref" not in json.dumps(chat)
    roles = chat["properties"]["messages"]["items"]["properties"]["role"]["enum"]
    assert "user" in roles and "wizard" not in roles
    assert set(request_json_schema("completion")["required"]) == {"model", "prompt"}


# ---- the live stack ------------------------------------------------------------------------

# A generation that would hold an engine slot for minutes unless it is aborted.
_LONG_GENERATION = {
    "model": "cascade-small",
    "messages": [{"role": "user", "content": "Tell me a very long story."}],
    "max_tokens": 2000,
    "ignore_eos": True,  # vLLM extension: do not let an early end-of-text free the slot
    "cache": False,
}
_ENGINE_SLOTS = 16  # max_num_seqs of the local tiers


def _assert_small_tier_answers_promptly(http: httpx.Client) -> None:
    """With every slot still generating, this request would wait minutes for one.

    An abort lands once the engine finishes its current step: a cancelled batch prefill of 16
    prompts can hold the engine for ~20 s on a busy 2-core box; unaborted generations would
    hold it for thousands of decode steps.
    """
    started = time.perf_counter()
    response = http.post(
        "/v1/chat/completions",
        json=chat_body("Hi!", model="cascade-small", max_tokens=4, cache=False),
    )
    assert response.status_code == 200, response.text
    assert time.perf_counter() - started < 60


@pytest.mark.parametrize(
    ("content", "param"),
    [
        (json.dumps(chat_body("hi", max_tokens="5")).encode(), "max_tokens"),
        (
            json.dumps(chat_body("hi", messages=[{"role": "wizard", "content": "hi"}])).encode(),
            "messages.0.role",
        ),
        (b'{"model": "cascade", "messages": ' + b"[" * 5000 + b"]" * 5000 + b"}", None),
        (_LONE_SURROGATE_CONTENT, None),
        (_LONE_SURROGATE_KEY, None),
    ],
    ids=["wrong-type", "unknown-role", "recursion-bomb", "surrogate-content", "surrogate-key"],
)
def test_bad_input_is_refused_by_the_live_ingress(
    http: httpx.Client, content: bytes, param: str | None
) -> None:
    response = http.post(
        "/v1/chat/completions", content=content, headers={"content-type": "application/json"}
    )
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param


def test_request_timeout_is_an_openai_504_and_frees_the_engine(http: httpx.Client) -> None:
    def timed_out_request(_: int) -> httpx.Response:
        return http.post(
            "/v1/chat/completions", json=_LONG_GENERATION, headers={"x-cascade-timeout-s": "2"}
        )

    started = time.perf_counter()
    with ThreadPoolExecutor(_ENGINE_SLOTS) as pool:
        responses = list(pool.map(timed_out_request, range(_ENGINE_SLOTS)))
    assert time.perf_counter() - started < 30
    for response in responses:
        assert response.status_code == 504, response.text
        assert response.json()["error"]["type"] == "timeout"
    _assert_small_tier_answers_promptly(http)


def test_client_disconnect_mid_stream_aborts_the_generation(cascade_url: str) -> None:
    def read_one_chunk_then_leave(_: int) -> str:
        with httpx.Client(base_url=cascade_url, timeout=60) as client:
            body = {**_LONG_GENERATION, "stream": True}
            with client.stream("POST", "/v1/chat/completions", json=body) as response:
                assert response.status_code == 200
                return next(response.iter_lines())

    with ThreadPoolExecutor(_ENGINE_SLOTS) as pool:
        first_lines = list(pool.map(read_one_chunk_then_leave, range(_ENGINE_SLOTS)))
    assert all(line.startswith("data: ") for line in first_lines)
    with httpx.Client(base_url=cascade_url, timeout=60) as client:
        _assert_small_tier_answers_promptly(client)


def test_a_burst_of_bad_requests_gets_a_400_each(cascade_url: str) -> None:
    # benchmarks/burst.py: 32 clients at once, each sending a request that validation refuses.
    report = asyncio.run(burst(cascade_url, 32, "bad"))
    assert report["statuses"] == {400: 32}, report
    assert report["last_ms"] is not None


def test_overload_gets_a_fast_503_with_retry_after(cascade_url: str) -> None:
    capacity = 2 * _ENGINE_SLOTS  # the tier's max_ongoing_requests + max_queued_requests
    body = {**_LONG_GENERATION, "max_tokens": 48}
    # 3x, not 2x: while the gateway works through the burst (~2 s on 2 cores), admitted
    # answers finish and free slots, so at 2x as few as 15 of 64 were refused.
    outcomes = asyncio.run(
        run_load(
            cascade_url,
            concurrency=3 * capacity,
            total_requests=3 * capacity,
            body_for=lambda _: body,
            timeout_s=120,
        )
    )
    rejected = [o for o in outcomes if o.status == 503]
    assert {o.kind for o in outcomes} <= {"ok", "http_503"}, summarize(outcomes)
    assert len(rejected) >= capacity // 2, summarize(outcomes)
    assert all(o.headers.get("retry-after", "").isdigit() for o in rejected)
    # A refusal never waits for a generation slot: the slowest one is back before a typical
    # admitted answer (its absolute figure is a benchmark's business, benchmarks/overload.py).
    admitted = sorted(o.latency_s for o in outcomes if o.ok)
    assert max(o.latency_s for o in rejected) < admitted[len(admitted) // 2], summarize(outcomes)
