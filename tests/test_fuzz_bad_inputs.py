"""Bad inputs that matter for an OpenAI gateway, sent as raw bytes to the live ingress.

Each one gets a 4xx with an OpenAI-shaped error naming the right `param`, or a 200 where
OpenAI's API takes the input; never a 5xx or a hang. After a burst of all the refused ones,
a normal request is still answered.

The expected statuses follow the ingress's own rules (serve_app/protocol/openai_api.py,
serve_app/gateway/request_limits.py), decided here case by case:

- The body must be a UTF-8 JSON object (a BOM is tolerated); whatever its Content-Type or
  Content-Encoding says, it is read as such: a JSON body labelled text/plain, or not labelled
  at all, is answered, a form or multipart body is a 400 (it is not JSON), and so is a body
  really gzipped (not decoded: a 400, never a 5xx).
- Duplicate keys: the last one wins, as in Python and JavaScript; the body that is validated
  is the one forwarded, so no later reader sees the other value.
- Numbers: NaN/Infinity literals and numbers beyond a double's range (`1e400`, `10**400`) are
  a 400; `-0` is zero; an overlong but representable literal is its value.

`test_the_ingress_rules_give_the_expected_outcome` runs each body through those rules in
process (the ingress's parsing, limits, context fit and cache key, and the engine's request
model the tier client builds), so a changed rule fails before the stack starts; the live tests
then check what the real ingress, behind Ray Serve's proxy, answers.
"""

from __future__ import annotations

import asyncio
import gzip
import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from benchmarks.loadgen import is_openai_error
from serve_app.cache.keys import cache_key_for_request
from serve_app.config import CascadeConfig
from serve_app.gateway.context_fit import ContextLimits
from serve_app.gateway.request_limits import check_request_limits
from serve_app.model_sources import ModelNotPreparedError, resolve_model_source
from serve_app.protocol.errors import CascadeError, ModelNotFoundError, PayloadTooLargeError
from serve_app.protocol.openai_api import RequestKind, parse_request_body
from serve_app.protocol.stream_collector import rebuildable_from_stream
from serve_app.routing.text import routing_text

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
JSON_TYPE = {"content-type": "application/json"}
# A generation cheap enough to send many times: pinned to the small tier (no routing, no
# quality escalation), one token, deterministic (cached after the first answer).
VALID: dict[str, Any] = {
    "model": "cascade-small",
    "messages": [{"role": "user", "content": "Say hi."}],
    "max_tokens": 1,
    "temperature": 0,
}
VALID_COMPLETION: dict[str, Any] = {
    "model": "cascade-small",
    "prompt": "Say hi.",
    "max_tokens": 1,
    "temperature": 0,
}
TIMEOUT_S = 60  # a slower answer is a hang
LOCAL_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "local.yaml"


@dataclass(frozen=True)
class BadInput:
    body: bytes
    status: int
    param: str | None = None
    code: str | None = None
    headers: tuple[tuple[str, str], ...] = tuple(JSON_TYPE.items())
    path: str = CHAT

    @property
    def kind(self) -> RequestKind:
        return "chat" if self.path == CHAT else "completion"


def _json(base: dict[str, Any] = VALID, **fields: Any) -> bytes:
    return json.dumps({**base, **fields}).encode()


def _raw(base: dict[str, Any] = VALID, **fields: bytes) -> bytes:
    """`base` with `fields` replaced by raw JSON text: literals json.dumps cannot write."""
    kept = json.dumps({k: v for k, v in base.items() if k not in fields}).encode()
    extra = b"".join(b', "' + name.encode() + b'": ' + text for name, text in fields.items())
    return kept[:-1] + extra + b"}"


def _content(raw: bytes) -> bytes:
    """VALID with this raw JSON string (quotes included) as the user's message."""
    return _raw(messages=b'[{"role": "user", "content": ' + raw + b"}]")


def _tool(name: str = "lookup", **function: Any) -> dict[str, Any]:
    parameters = {"type": "object", "properties": {"query": {"type": "string"}}}
    return {"type": "function", "function": {"name": name, "parameters": parameters, **function}}


_RECURSIVE_TOOL = _tool(
    "tree",
    parameters={
        "type": "object",
        "properties": {"label": {"type": "string"}, "child": {"$ref": "#"}},
    },
)
_MULTIPART = (
    b"--XyZ\r\n"
    b'Content-Disposition: form-data; name="model"\r\n\r\ncascade-small\r\n'
    b"--XyZ\r\n"
    b'Content-Disposition: form-data; name="messages"\r\n\r\nSay hi.\r\n'
    b"--XyZ--\r\n"
)

CASES: dict[str, BadInput] = {
    # -- lone surrogates (escaped) and invalid UTF-8 ---------------------------------------
    "surrogate-in-a-key": BadInput(_raw(**{"\\ud800": b"1"}), 400),
    "surrogate-in-content": BadInput(_content(b'"a\\udfffb"'), 400),
    "two-high-surrogates": BadInput(_content(b'"\\ud800\\ud800"'), 400),
    "surrogate-in-model": BadInput(_raw(model=b'"cascade\\udc00"'), 400),
    "surrogate-pair": BadInput(_content(b'"\\ud83d\\ude00 hi"'), 200),
    "escaped-nul": BadInput(_content(b'"a\\u0000b"'), 200),
    "raw-control-character": BadInput(_content(b'"a\x01b"'), 400),
    "invalid-utf8-byte": BadInput(_content(b'"a\xffb"'), 400),
    "utf8-encoded-surrogate": BadInput(_content(b'"a\xed\xa0\x80b"'), 400),
    "overlong-utf8": BadInput(_content(b'"a\xc0\xafb"'), 400),
    "truncated-utf8": BadInput(_content(b'"a\xe2\x82"'), 400),
    "utf16-body": BadInput(json.dumps(VALID).encode("utf-16"), 400),
    "utf8-bom": BadInput(b"\xef\xbb\xbf" + _json(), 200),
    # -- huge and odd numbers ----------------------------------------------------------------
    "temperature-1e400": BadInput(_raw(temperature=b"1e400"), 400),
    "max-tokens-10pow400-integer": BadInput(_raw(max_tokens=b"1" + b"0" * 400), 400),
    "seed-minus-10pow400-integer": BadInput(_raw(seed=b"-1" + b"0" * 400), 400),
    "pass-through-field-10pow400": BadInput(_raw(best_of=b"1" + b"0" * 400), 400),
    "integer-of-5000-digits": BadInput(_raw(seed=b"9" * 5000), 400),
    "overlong-top-p": BadInput(_raw(top_p=b"1." + b"0" * 5000), 200),
    "temperature-minus-zero": BadInput(_raw(temperature=b"-0"), 200),
    "temperature-minus-zero-float": BadInput(_raw(temperature=b"-0.0"), 200),
    "max-tokens-minus-zero": BadInput(_raw(max_tokens=b"-0"), 400, "max_tokens"),
    "nan-literal": BadInput(_raw(temperature=b"NaN"), 400),
    "infinity-literal": BadInput(_raw(temperature=b"Infinity"), 400),
    "minus-infinity-literal": BadInput(_raw(presence_penalty=b"-Infinity"), 400),
    "seed-int64-max": BadInput(_json(seed=2**63 - 1), 200),
    "seed-beyond-int64": BadInput(_json(seed=2**63), 400, "seed"),
    # -- deep nesting --------------------------------------------------------------------------
    "nesting-at-the-limit": BadInput(_raw(metadata=b'{"a": ' * 30 + b"1" + b"}" * 30), 200),
    "nesting-past-the-limit": BadInput(_raw(metadata=b"[" * 32 + b"]" * 32), 400),
    "array-bomb-100k": BadInput(_raw(messages=b"[" * 100_000 + b"]" * 100_000), 400),
    "object-bomb-100k": BadInput(_raw(metadata=b'{"a":' * 100_000 + b"}" * 100_000), 400),
    # -- duplicate keys: the last one wins -----------------------------------------------------
    "model-twice-last-valid": BadInput(b'{"model": "nope", ' + _json()[1:], 200),
    "model-twice-last-unknown": BadInput(
        _json()[:-1] + b', "model": "nope"}', 404, "model", "model_not_found"
    ),
    "max-tokens-twice-last-too-big": BadInput(
        _json()[:-1] + b', "max_tokens": 100000}', 400, "max_tokens"
    ),
    "messages-twice-last-empty": BadInput(_json()[:-1] + b', "messages": []}', 400, "messages"),
    # -- content types and framing -------------------------------------------------------------
    "json-labelled-text-plain": BadInput(_json(), 200, headers=(("content-type", "text/plain"),)),
    "json-without-content-type": BadInput(_json(), 200, headers=()),
    "form-encoded": BadInput(
        b"model=cascade-small&messages=Say+hi.&max_tokens=1",
        400,
        headers=(("content-type", "application/x-www-form-urlencoded"),),
    ),
    "multipart": BadInput(
        _MULTIPART, 400, headers=(("content-type", "multipart/form-data; boundary=XyZ"),)
    ),
    "gzip-label-on-plain-json": BadInput(
        _json(), 200, headers=(*JSON_TYPE.items(), ("content-encoding", "gzip"))
    ),
    "gzipped-body": BadInput(
        gzip.compress(_json()), 400, headers=(*JSON_TYPE.items(), ("content-encoding", "gzip"))
    ),
    "empty-body": BadInput(b"", 400),
    "whitespace-body": BadInput(b" \r\n\t ", 400),
    "json-null": BadInput(b"null", 400),
    "json-array": BadInput(b"[" + _json() + b"]", 400),
    "trailing-garbage": BadInput(_json() + b"xyz", 400),
    "two-objects": BadInput(_json() + _json(), 400),
    "over-max-body-bytes": BadInput(
        _json(messages=[{"role": "user", "content": "a" * 2**20}]), 413
    ),
    # -- n ------------------------------------------------------------------------------------
    "n-zero": BadInput(_json(n=0), 400, "n"),
    "n-minus-one": BadInput(_json(n=-1), 400, "n"),
    "n-2e31": BadInput(_json(n=2**31), 400, "n"),
    "n-1e9-float": BadInput(_raw(n=b"1e9"), 400, "n"),
    "n-17": BadInput(_json(n=17, temperature=1), 400, "n"),
    "n-16-sampled": BadInput(_json(n=16, temperature=1), 200),
    # -- logprobs -------------------------------------------------------------------------------
    "top-logprobs-21": BadInput(_json(logprobs=True, top_logprobs=21), 400, "top_logprobs"),
    "top-logprobs-minus-one": BadInput(_json(logprobs=True, top_logprobs=-1), 400, "top_logprobs"),
    "top-logprobs-without-logprobs": BadInput(_json(top_logprobs=5), 400, "top_logprobs"),
    "logprobs-as-string": BadInput(_json(logprobs="true"), 400, "logprobs"),
    "top-logprobs-20": BadInput(_json(logprobs=True, top_logprobs=20), 200),
    "completion-logprobs-6": BadInput(
        _json(VALID_COMPLETION, logprobs=6), 400, "logprobs", path=COMPLETIONS
    ),
    "completion-logprobs-minus-one": BadInput(
        _json(VALID_COMPLETION, logprobs=-1), 400, "logprobs", path=COMPLETIONS
    ),
    "completion-logprobs-true": BadInput(
        _json(VALID_COMPLETION, logprobs=True), 400, "logprobs", path=COMPLETIONS
    ),
    "completion-logprobs-5": BadInput(_json(VALID_COMPLETION, logprobs=5), 200, path=COMPLETIONS),
    # Found by the generated fuzzing: completions have no max_completion_tokens, so a string
    # there is an extra field, which the context check compared with a number (a 500).
    "completion-max-completion-tokens-as-text": BadInput(
        _json(VALID_COMPLETION, max_completion_tokens="x"), 200, path=COMPLETIONS
    ),
    # -- max_tokens -----------------------------------------------------------------------------
    "max-tokens-zero": BadInput(_json(max_tokens=0), 400, "max_tokens"),
    "max-tokens-minus-one": BadInput(_json(max_tokens=-1), 400, "max_tokens"),
    "max-tokens-2e63": BadInput(_json(max_tokens=2**63), 400, "max_tokens"),
    "max-completion-tokens-2e63": BadInput(
        _json(max_completion_tokens=2**63), 400, "max_completion_tokens"
    ),
    "max-tokens-fills-the-context": BadInput(
        _json(max_tokens=2047), 400, "messages", "context_length_exceeded"
    ),
    "completion-max-tokens-2e63": BadInput(
        _json(VALID_COMPLETION, max_tokens=2**63), 400, "max_tokens", path=COMPLETIONS
    ),
    # -- tools ------------------------------------------------------------------------------------
    "tool-parameters-a-string": BadInput(
        _json(tools=[_tool(parameters="object")]), 400, "tools.0.function.parameters"
    ),
    "tool-parameters-a-string-schema": BadInput(
        _json(tools=[_tool(parameters={"type": "string"})]), 400, "tools.0.function.parameters"
    ),
    "tool-parameters-an-array": BadInput(
        _json(tools=[_tool(parameters=[])]), 400, "tools.0.function.parameters"
    ),
    "tool-without-function-name": BadInput(
        _json(tools=[{"type": "function", "function": {"description": "no name"}}]),
        400,
        "tools.0.function.name",
    ),
    "tool-without-function": BadInput(
        _json(
            tools=[{"type": "function"}],
            tool_choice={"type": "function", "function": {"name": "lookup"}},
        ),
        400,
        "tools.0.function",
    ),
    "tools-not-a-list": BadInput(_json(tools="lookup", tool_choice="auto"), 400, "tools"),
    "tools-empty": BadInput(_json(tools=[]), 400, "tools"),
    "ten-thousand-tools": BadInput(
        _json(tools=[{"type": "function", "function": {"name": f"f{i}"}} for i in range(10_000)]),
        400,
        "tools",
    ),
    "tool-choice-unknown-function": BadInput(
        _json(tools=[_tool()], tool_choice={"type": "function", "function": {"name": "other"}}),
        400,
        "tool_choice",
    ),
    "tool-choice-without-tools": BadInput(_json(tool_choice="required"), 400, "tool_choice"),
    "tool-choice-unknown-mode": BadInput(
        _json(tools=[_tool()], tool_choice="sometimes"), 400, "tool_choice"
    ),
    "recursive-ref-schema-auto": BadInput(_json(tools=[_RECURSIVE_TOOL], tool_choice="auto"), 200),
    "recursive-ref-schema-required": BadInput(
        _json(tools=[_RECURSIVE_TOOL], tool_choice="required", max_tokens=4), 200
    ),
    # -- completions ------------------------------------------------------------------------------
    "completion-prompt-surrogate": BadInput(
        _raw(VALID_COMPLETION, prompt=b'"\\ud800"'), 400, path=COMPLETIONS
    ),
    "completion-prompt-token-ids": BadInput(
        _json(VALID_COMPLETION, prompt=[1, 2, 3]), 400, "prompt.0", path=COMPLETIONS
    ),
}


# ---- offline: the ingress's rules, in process ---------------------------------------------


@pytest.fixture(scope="module")
def config() -> CascadeConfig:
    (application,) = yaml.safe_load(LOCAL_CONFIG.read_text())["applications"]
    return CascadeConfig.model_validate(application["args"])


@pytest.fixture(scope="module")
def context_limits(config: CascadeConfig) -> ContextLimits:
    try:
        resolve_model_source(config.tiers["small"].model_source)
    except ModelNotPreparedError as e:
        pytest.skip(f"the tiers' tokenizer is not prepared ({e})")
    return ContextLimits(config)


async def _ingress_outcome(case: BadInput, config: CascadeConfig, limits: ContextLimits) -> int:
    """What the ingress answers, by the steps of RequestPipeline._answer_request that can
    refuse a body (auth is open locally), then the tier client's request model; a bug that
    would be a 5xx raises here."""
    from serve_app.tiers.client import _engine_request  # pulls in vLLM: only here

    if len(case.body) > config.limits.max_body_bytes:
        raise PayloadTooLargeError("too large")
    body = parse_request_body(case.body, case.kind, max_depth=config.limits.max_json_depth)
    model = body["model"]
    tier = config.tier_for_model(model)
    if tier is None and model != config.ingress.cascade_model_id:
        if model not in config.router.aliases:
            raise ModelNotFoundError(model, [])
    check_request_limits(body, case.kind, config.limits, limits[tier])
    await limits.fit(body, case.kind, tier)
    cache_key_for_request(
        body, kind=case.kind, tenant="t", model=model, cache_nondeterministic=False
    )
    routing_text(body, case.kind)
    rebuildable_from_stream(body, case.kind)
    _engine_request(body, case.kind, model=model, stream=bool(body.get("stream")))
    return 200


@pytest.mark.parametrize("case", CASES.values(), ids=CASES)
def test_the_ingress_rules_give_the_expected_outcome(
    case: BadInput, config: CascadeConfig, context_limits: ContextLimits
) -> None:
    try:
        status = asyncio.run(_ingress_outcome(case, config, context_limits))
    except CascadeError as error:
        assert (error.status_code, error.param) == (case.status, case.param), error.message
        if case.code is not None:
            assert error.code == case.code
        return
    assert status == case.status


# ---- the live stack -----------------------------------------------------------------------


def _send(http: httpx.Client, case: BadInput) -> httpx.Response:
    return http.post(case.path, content=case.body, headers=dict(case.headers), timeout=TIMEOUT_S)


@pytest.mark.parametrize("case", CASES.values(), ids=CASES)
def test_bad_input_gets_its_answer_from_the_live_ingress(
    http: httpx.Client, case: BadInput
) -> None:
    response = _send(http, case)
    assert response.status_code == case.status, response.text[:500]
    if case.status == 200:
        assert response.json()["choices"], response.text[:500]
        return
    assert is_openai_error(response), response.text[:500]
    error = response.json()["error"]
    assert error["param"] == case.param, error
    if case.code is not None:
        assert error["code"] == case.code, error


def test_the_service_keeps_serving_after_a_burst_of_bad_inputs(http: httpx.Client) -> None:
    refused = [case for case in CASES.values() if case.status >= 400]
    with ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(lambda case: _send(http, case).status_code, refused))
    assert statuses == [case.status for case in refused]
    response = http.post(CHAT, json=VALID, timeout=TIMEOUT_S)
    assert response.status_code == 200, response.text[:500]
    assert response.json()["choices"][0]["message"]["content"] is not None
