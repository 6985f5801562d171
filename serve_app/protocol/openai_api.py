"""The OpenAI wire format at the ingress: request validation, SSE framing, response shapes.

Validation here checks what clients get wrong (missing messages, negative max_tokens,
out-of-range sampling params) and reports it as OpenAI does: 400 with the offending `param`.
Fields we do not know pass through to vLLM, which validates them again.
"""

from __future__ import annotations

import json
import math
import sys
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
)

from serve_app.protocol.errors import InvalidRequestError

RequestKind = Literal["chat", "completion"]

# Extensions of the OpenAI request body that belong to the cascade and never reach the engine.
CASCADE_EXTENSION_FIELDS = ("cache",)
DEFAULT_MAX_JSON_DEPTH = 32


def _integral_float_to_int(value: Any) -> Any:
    # JSON has one number type: `4.0` is a valid integer in JSON Schema and OpenAI's API.
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


WholeNumber = Annotated[int, BeforeValidator(_integral_float_to_int)]

# vLLM takes a 64-bit seed; a larger one would fail inside the engine.
_INT64_MAX = 2**63 - 1
# OpenAI's limit on tools in one request; each tool's schema is rendered into the prompt.
MAX_TOOLS = 128


class _SamplingFields(BaseModel):
    """The OpenAI fields the ingress checks itself; others pass through to the engine.

    Strict: `"5"` is not a number and `1` is not a boolean, as in OpenAI's API; the body is
    forwarded as sent, so a value coerced here would reach the engine in its original type.
    """

    model_config = ConfigDict(extra="allow", strict=True)

    model: str = Field(min_length=1, description="`cascade` (routed) or a tier's model id.")
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    max_tokens: WholeNumber | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    n: WholeNumber = Field(default=1, ge=1, le=16)
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    seed: WholeNumber | None = Field(default=None, ge=-_INT64_MAX - 1, le=_INT64_MAX)
    stop: str | list[str] | None = Field(default=None)
    logit_bias: dict[str, float] | None = None
    user: str | None = None
    # Read by the ingress itself (cache policy, early escalation), so typed here.
    best_of: WholeNumber | None = Field(default=None, ge=1)
    modalities: list[str] | None = None
    cache: bool = Field(default=True, description="Cascade extension: false bypasses the cache.")

    @field_validator("stop")
    @classmethod
    def _at_most_four_stops(cls, stop: str | list[str] | None) -> str | list[str] | None:
        stops = [stop] if isinstance(stop, str) else stop or []
        if len(stops) > 4 or "" in stops:
            raise ValueError("at most 4 stop sequences, none of them empty")
        return stop

    @field_validator("n")
    @classmethod
    def _several_choices_need_sampling(cls, n: int, info: ValidationInfo) -> int:
        # `temperature` is declared before `n`, so it is already validated here.
        if n > 1 and info.data.get("temperature") == 0:
            raise ValueError("n > 1 needs temperature > 0: greedy choices would be identical")
        return n

    @field_validator("logit_bias")
    @classmethod
    def _bias_in_range(cls, bias: dict[str, float] | None) -> dict[str, float] | None:
        for token, value in (bias or {}).items():
            if not token.isdigit() or not -100 <= value <= 100:
                raise ValueError("keys must be token ids and values within [-100, 100]")
        return bias


class _TextPart(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    type: Literal["text"]
    text: str


class _ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)

    role: Literal["system", "developer", "user", "assistant", "tool"]
    # Both tiers are text models: image or audio parts are refused here, not in the engine.
    content: str | list[_TextPart] | None = None
    name: str | None = None


class _FunctionDefinition(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)

    name: str = Field(min_length=1)
    description: str | None = None
    parameters: dict[str, Any] | None = None

    @field_validator("parameters")
    @classmethod
    def _object_schema(cls, parameters: dict[str, Any] | None) -> dict[str, Any] | None:
        # A function's arguments are one JSON object, as OpenAI requires of the schema.
        if parameters is not None and parameters.get("type", "object") != "object":
            raise ValueError('a function\'s parameters must be a JSON Schema of type "object"')
        return parameters


class _Tool(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)

    type: Literal["function"] = "function"
    function: _FunctionDefinition


class ChatRequestFields(_SamplingFields):
    messages: list[_ChatMessage] = Field(min_length=1)
    max_completion_tokens: WholeNumber | None = Field(default=None, ge=1)
    logprobs: bool | None = None
    top_logprobs: WholeNumber | None = Field(default=None, ge=0, le=20)
    tools: list[_Tool] | None = Field(default=None, min_length=1, max_length=MAX_TOOLS)
    # A dict, not a model, in the union: pydantic would name the branch in the error's `param`.
    tool_choice: Literal["none", "auto", "required"] | dict[str, Any] | None = None

    @field_validator("top_logprobs")
    @classmethod
    def _top_logprobs_need_logprobs(cls, top: int | None, info: ValidationInfo) -> int | None:
        # `logprobs` is declared before `top_logprobs`, so it is already validated here.
        if top and info.data.get("logprobs") is not True:
            raise ValueError("top_logprobs needs logprobs: true")
        return top

    @field_validator("tool_choice")
    @classmethod
    def _choice_among_tools(cls, choice: Any, info: ValidationInfo) -> Any:
        # vLLM checks this on the raw body, where a malformed tool raises KeyError (a 500).
        if choice is None or choice == "none" or "tools" not in info.data:
            return choice  # (no "tools" in data: they are invalid, and that error names them)
        tools: list[_Tool] | None = info.data["tools"]
        if not tools:
            raise ValueError("tool_choice needs tools")
        if isinstance(choice, dict):
            function = choice.get("function")
            name = function.get("name") if isinstance(function, dict) else None
            if choice.get("type", "function") != "function" or not isinstance(name, str):
                raise ValueError('name it as {"type": "function", "function": {"name": ...}}')
            if name not in {tool.function.name for tool in tools}:
                raise ValueError(f"no tool is named {name[:64]!r}")
        return choice


class CompletionRequestFields(_SamplingFields):
    prompt: str | list[Annotated[str, Field(min_length=1)]] = Field(min_length=1)
    logprobs: WholeNumber | None = Field(default=None, ge=0, le=5)
    echo: bool | None = None


_FIELDS_BY_KIND: dict[RequestKind, type[_SamplingFields]] = {
    "chat": ChatRequestFields,
    "completion": CompletionRequestFields,
}


def _json_depth_exceeds(value: Any, max_depth: int) -> bool:
    """Whether nested objects/arrays go deeper than `max_depth` (iterative: no recursion)."""
    pending = [(value, 1)]
    while pending:
        item, depth = pending.pop()
        if isinstance(item, dict | list):
            if depth > max_depth:
                return True
            children = item.values() if isinstance(item, dict) else item
            pending.extend((child, depth + 1) for child in children)
    return False


def _refuse_non_json_constant(name: str) -> Any:
    # Python's json accepts NaN/Infinity; JSON does not, and no engine field wants them.
    raise ValueError(f"{name} is not valid JSON")


_DOUBLE_MAX_DIGITS = len(str(int(sys.float_info.max)))


def _finite_float(literal: str) -> float:
    # `1e400` is valid JSON but overflows a double into Infinity, which we refuse as above.
    value = float(literal)
    if math.isinf(value):
        raise ValueError(f"number {literal[:32]} is out of range")
    return value


def _double_sized_int(literal: str) -> int:
    # An integer no double can hold (`10**400`) means nothing to any field, and float() of it
    # raises OverflowError wherever a field is read as a number (a 500, not a 400).
    digits = len(literal.lstrip("-"))  # JSON has no leading zeros
    if digits > _DOUBLE_MAX_DIGITS or abs(value := int(literal)) > sys.float_info.max:
        raise ValueError(f"number {literal[:32]}... is out of range")
    return value


def parse_json_object(raw: bytes, *, max_depth: int = DEFAULT_MAX_JSON_DEPTH) -> dict[str, Any]:
    try:
        # Strict UTF-8 (RFC 8259), a BOM tolerated: json.loads(bytes) would also take UTF-16
        # and decode UTF-8-encoded surrogates (b"\xed\xa0\x80") into lone surrogates.
        text = raw.decode("utf-8-sig")
        body = json.loads(
            text,
            parse_constant=_refuse_non_json_constant,
            parse_float=_finite_float,
            parse_int=_double_sized_int,
        )
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError, NaN/Infinity, out of range
        raise InvalidRequestError(f"Request body is not valid JSON: {e}") from e
    except RecursionError as e:
        raise InvalidRequestError(f"Request body nests deeper than {max_depth} levels.") from e
    if not isinstance(body, dict):
        raise InvalidRequestError("Request body must be a JSON object.")
    if _json_depth_exceeds(body, max_depth):
        raise InvalidRequestError(f"Request body nests deeper than {max_depth} levels.")
    # JSON may escape half of a UTF-16 surrogate pair (`"\\ud800"`); Python decodes it into a
    # string no UTF-8 encoder (the engine, the cache, our own error message) can take.
    if "\\u" in text and _has_lone_surrogate(body):
        raise InvalidRequestError(
            "Request body holds a lone UTF-16 surrogate escape (\\ud800-\\udfff without its "
            "pair): not valid Unicode."
        )
    return body


def _has_lone_surrogate(value: Any) -> bool:
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return True
        elif isinstance(item, dict):
            pending.extend(item.keys())
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)
    return False


def parse_request_body(
    raw: bytes, kind: RequestKind, *, max_depth: int = DEFAULT_MAX_JSON_DEPTH
) -> dict[str, Any]:
    """Decode and validate a request body; returns the body as a plain dict."""
    return validate_request(parse_json_object(raw, max_depth=max_depth), kind)


def validate_request(body: dict[str, Any], kind: RequestKind) -> dict[str, Any]:
    try:
        _FIELDS_BY_KIND[kind].model_validate(body)
    except ValidationError as e:
        # Of a union's failed branches, the deepest location names the field best.
        deepest = max(e.errors(), key=lambda error: len(error["loc"]))
        param = ".".join(str(part) for part in _field_path(deepest["loc"])) or None
        raise InvalidRequestError(
            f"Invalid value for '{param}': {deepest['msg']}", param=param
        ) from e
    return body


def _field_path(loc: tuple[Any, ...]) -> list[Any]:
    """The body path of a pydantic error location, without union branch names (`list[str]`)."""
    scalar_branches = {"str", "int", "float", "bool", "none"}
    return [
        part
        for part in loc
        if isinstance(part, int) or (part.isidentifier() and part not in scalar_branches)
    ]


def request_json_schema(kind: RequestKind) -> dict[str, Any]:
    """JSON schema of a request body, self-contained (no `$defs`), for the OpenAPI document."""
    schema = _FIELDS_BY_KIND[kind].model_json_schema()
    definitions = schema.pop("$defs", {})
    return _inline_refs(schema, definitions)


def _inline_refs(node: Any, definitions: dict[str, Any]) -> Any:
    if isinstance(node, dict):
        if "$ref" in node:
            return _inline_refs(definitions[node["$ref"].rsplit("/", 1)[-1]], definitions)
        return {key: _inline_refs(value, definitions) for key, value in node.items()}
    if isinstance(node, list):
        return [_inline_refs(item, definitions) for item in node]
    return node


def engine_body(body: dict[str, Any], *, model: str, stream: bool) -> dict[str, Any]:
    """The body forwarded to a tier: its model id, no cascade extensions."""
    forwarded = {k: v for k, v in body.items() if k not in CASCADE_EXTENSION_FIELDS}
    forwarded["model"] = model
    forwarded["stream"] = stream
    if stream:
        # Usage is needed for cost accounting even when the client did not ask for it, and on
        # every chunk (vLLM's continuous_usage_stats): a stream cut by its deadline or by the
        # client is charged for what was generated. The relay shows the client what it asked.
        forwarded["stream_options"] = {
            **(body.get("stream_options") or {}),
            "include_usage": True,
            "continuous_usage_stats": True,
        }
    else:
        forwarded.pop("stream_options", None)
    return forwarded


def client_wants_usage_chunk(body: dict[str, Any]) -> bool:
    return bool((body.get("stream_options") or {}).get("include_usage"))


def requested_max_tokens(body: dict[str, Any], kind: RequestKind) -> int | None:
    """The client's own limit on answer tokens, as the engine reads it; None: no limit asked.

    Chat takes `max_completion_tokens`, which replaced `max_tokens` and wins when both are set.
    """
    limit = body.get("max_completion_tokens") if kind == "chat" else None
    if limit is None:
        limit = body.get("max_tokens")
    return limit if isinstance(limit, int) and not isinstance(limit, bool) else None


def with_internal_logprobs(body: dict[str, Any], kind: RequestKind) -> dict[str, Any]:
    """Ask the engine for per-token logprobs (sampled token only) for the confidence check."""
    if kind == "chat":
        return {**body, "logprobs": True, "top_logprobs": body.get("top_logprobs") or 0}
    return {**body, "logprobs": body.get("logprobs") or 0}


def client_asked_for_logprobs(body: dict[str, Any]) -> bool:
    value = body.get("logprobs")
    # Chat takes `logprobs: true`; completions take a count, where 0 still means "yes".
    return value is True or (isinstance(value, int) and not isinstance(value, bool))
