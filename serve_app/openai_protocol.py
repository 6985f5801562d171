"""The OpenAI wire format at the ingress: request validation, SSE framing, response shapes.

Validation here checks what clients get wrong (missing messages, negative max_tokens,
out-of-range sampling params) and reports it as OpenAI does: 400 with the offending `param`.
Fields we do not know pass through to vLLM, which validates them again.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from serve_app.errors import InvalidRequestError

RequestKind = Literal["chat", "completion"]

# Extensions of the OpenAI request body that belong to the cascade and never reach the engine.
CASCADE_EXTENSION_FIELDS = ("cache",)


class _SamplingFields(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str = Field(min_length=1)
    stream: bool = False
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    n: int = Field(default=1, ge=1, le=16)
    cache: bool = True


class _ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[dict[str, Any]] | None = None


class ChatRequestFields(_SamplingFields):
    messages: list[_ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)


class CompletionRequestFields(_SamplingFields):
    prompt: str | list[str] = Field(min_length=1)


_FIELDS_BY_KIND: dict[RequestKind, type[_SamplingFields]] = {
    "chat": ChatRequestFields,
    "completion": CompletionRequestFields,
}


def parse_json_object(raw: bytes) -> dict[str, Any]:
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InvalidRequestError(f"Request body is not valid JSON: {e}") from e
    if not isinstance(body, dict):
        raise InvalidRequestError("Request body must be a JSON object.")
    return body


def parse_request_body(raw: bytes, kind: RequestKind) -> dict[str, Any]:
    """Decode and validate a request body; returns the body as a plain dict."""
    return validate_request(parse_json_object(raw), kind)


def validate_request(body: dict[str, Any], kind: RequestKind) -> dict[str, Any]:
    try:
        _FIELDS_BY_KIND[kind].model_validate(body)
    except ValidationError as e:
        first = e.errors()[0]
        param = ".".join(str(part) for part in first["loc"]) or None
        raise InvalidRequestError(
            f"Invalid value for '{param}': {first['msg']}", param=param
        ) from e
    return body


def engine_body(body: dict[str, Any], *, model: str, stream: bool) -> dict[str, Any]:
    """The body forwarded to a tier: its model id, no cascade extensions."""
    forwarded = {k: v for k, v in body.items() if k not in CASCADE_EXTENSION_FIELDS}
    forwarded["model"] = model
    forwarded["stream"] = stream
    if stream:
        # Usage is needed for cost accounting even when the client did not ask for it.
        forwarded["stream_options"] = {**(body.get("stream_options") or {}), "include_usage": True}
    else:
        forwarded.pop("stream_options", None)
    return forwarded


def client_wants_usage_chunk(body: dict[str, Any]) -> bool:
    return bool((body.get("stream_options") or {}).get("include_usage"))


@dataclass(frozen=True)
class Answer:
    """A complete single-choice answer, independent of how it was produced."""

    text: str
    finish_reason: str | None
    prompt_tokens: int
    completion_tokens: int
    model: str
    token_logprobs: tuple[float, ...] = ()
    """Log-probability of each generated token, when the engine was asked for them."""


def sse_event(payload: dict[str, Any]) -> str:
    return f"data: {json.dumps(payload, separators=(',', ':'))}\n\n"


SSE_DONE = "data: [DONE]\n\n"


def _object_names(kind: RequestKind) -> tuple[str, str]:
    if kind == "chat":
        return "chat.completion", "chat.completion.chunk"
    return "text_completion", "text_completion"


def _usage(answer: Answer) -> dict[str, int]:
    return {
        "prompt_tokens": answer.prompt_tokens,
        "completion_tokens": answer.completion_tokens,
        "total_tokens": answer.prompt_tokens + answer.completion_tokens,
    }


def new_response_id(kind: RequestKind) -> str:
    return f"{'chatcmpl' if kind == 'chat' else 'cmpl'}-{uuid.uuid4().hex}"


def response_json(answer: Answer, kind: RequestKind) -> dict[str, Any]:
    """A non-streamed OpenAI response carrying `answer`."""
    object_name, _ = _object_names(kind)
    if kind == "chat":
        choice: dict[str, Any] = {
            "index": 0,
            "message": {"role": "assistant", "content": answer.text},
            "logprobs": None,
            "finish_reason": answer.finish_reason,
        }
    else:
        choice = {
            "index": 0,
            "text": answer.text,
            "logprobs": None,
            "finish_reason": answer.finish_reason,
        }
    return {
        "id": new_response_id(kind),
        "object": object_name,
        "created": int(time.time()),
        "model": answer.model,
        "choices": [choice],
        "usage": _usage(answer),
    }


def replay_as_sse(answer: Answer, kind: RequestKind, *, include_usage: bool) -> list[str]:
    """OpenAI SSE events for an answer that already exists (cache hit, held answer)."""
    _, chunk_object = _object_names(kind)
    base = {
        "id": new_response_id(kind),
        "object": chunk_object,
        "created": int(time.time()),
        "model": answer.model,
    }

    def chunk(delta_text: str | None, finish_reason: str | None, *, first: bool = False):
        if kind == "chat":
            delta: dict[str, Any] = {"role": "assistant", "content": ""} if first else {}
            if delta_text is not None:
                delta["content"] = delta_text
            choice: dict[str, Any] = {"index": 0, "delta": delta}
        else:
            choice = {"index": 0, "text": delta_text or ""}
        choice.update({"logprobs": None, "finish_reason": finish_reason})
        return sse_event({**base, "choices": [choice]})

    events = []
    if kind == "chat":
        events.append(chunk(None, None, first=True))
    events.append(chunk(answer.text, None))
    events.append(chunk(None if kind == "chat" else "", answer.finish_reason))
    if include_usage:
        events.append(sse_event({**base, "choices": [], "usage": _usage(answer)}))
    events.append(SSE_DONE)
    return events


def answer_from_response(response: dict[str, Any], kind: RequestKind) -> Answer:
    """Extract the first choice of an engine's non-streamed response."""
    choice = response["choices"][0]
    text = choice["message"].get("content") if kind == "chat" else choice.get("text")
    usage = response.get("usage") or {}
    return Answer(
        text=text or "",
        finish_reason=choice.get("finish_reason"),
        prompt_tokens=int(usage.get("prompt_tokens") or 0),
        completion_tokens=int(usage.get("completion_tokens") or 0),
        model=response.get("model", ""),
        token_logprobs=_token_logprobs(choice.get("logprobs"), kind),
    )


def _token_logprobs(logprobs: dict[str, Any] | None, kind: RequestKind) -> tuple[float, ...]:
    if not logprobs:
        return ()
    if kind == "chat":
        values = [entry.get("logprob") for entry in logprobs.get("content") or []]
    else:
        values = logprobs.get("token_logprobs") or []
    # -inf/None appear for tokens the engine could not score; they carry no confidence signal.
    return tuple(float(v) for v in values if v is not None and v > float("-inf"))


def with_internal_logprobs(body: dict[str, Any], kind: RequestKind) -> dict[str, Any]:
    """Ask the engine for per-token logprobs (sampled token only) for the confidence check."""
    if kind == "chat":
        return {**body, "logprobs": True, "top_logprobs": body.get("top_logprobs") or 0}
    return {**body, "logprobs": body.get("logprobs") or 0}


def client_asked_for_logprobs(body: dict[str, Any]) -> bool:
    value = body.get("logprobs")
    # Chat takes `logprobs: true`; completions take a count, where 0 still means "yes".
    return value is True or (isinstance(value, int) and not isinstance(value, bool))


def without_logprobs(response: dict[str, Any]) -> dict[str, Any]:
    """Drop logprobs the cascade requested for itself before the client sees the response."""
    choices = [{**choice, "logprobs": None} for choice in response.get("choices", [])]
    return {**response, "choices": choices}


class StreamAccumulator:
    """Follows an engine's SSE stream to rebuild the answer and its usage."""

    def __init__(self, kind: RequestKind, model: str):
        self.kind = kind
        self.model = model
        self.parts: list[str] = []
        self.finish_reason: str | None = None
        self.prompt_tokens = 0
        self.completion_tokens = 0

    def observe(self, payload: dict[str, Any]) -> None:
        for choice in payload.get("choices") or []:
            if self.kind == "chat":
                piece = (choice.get("delta") or {}).get("content")
            else:
                piece = choice.get("text")
            if piece:
                self.parts.append(piece)
            if choice.get("finish_reason"):
                self.finish_reason = choice["finish_reason"]
        usage = payload.get("usage")
        if usage:
            self.prompt_tokens = int(usage.get("prompt_tokens") or 0)
            self.completion_tokens = int(usage.get("completion_tokens") or 0)

    def answer(self) -> Answer:
        return Answer(
            text="".join(self.parts),
            finish_reason=self.finish_reason,
            prompt_tokens=self.prompt_tokens,
            completion_tokens=self.completion_tokens,
            model=self.model,
        )


def parse_sse_event(event: str) -> dict[str, Any] | None:
    """The JSON payload of one `data: ...` event; None for `[DONE]` or non-data lines."""
    data = event.strip()
    if not data.startswith("data:"):
        return None
    data = data.removeprefix("data:").strip()
    if data == "[DONE]":
        return None
    return json.loads(data)


# Nullable fields of OpenAI's own schema; other null fields are vLLM extensions we drop.
_OPENAI_NULLABLE_FIELDS = frozenset(
    {"logprobs", "finish_reason", "content", "refusal", "system_fingerprint"}
)


def without_engine_nulls(payload: Any) -> Any:
    """Drop vLLM's null extension fields (token_ids, kv_transfer_params, ...) from a response."""
    if isinstance(payload, dict):
        return {
            key: without_engine_nulls(value)
            for key, value in payload.items()
            if value is not None or key in _OPENAI_NULLABLE_FIELDS
        }
    if isinstance(payload, list):
        return [without_engine_nulls(item) for item in payload]
    return payload
