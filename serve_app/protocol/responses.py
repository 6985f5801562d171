"""The OpenAI wire format of answers: response bodies, SSE framing and the engine's stream.

A tier's response is followed (StreamAccumulator) or replayed (cache hits, held answers) in
OpenAI's shapes; vLLM's own null extension fields are dropped before a client sees them.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from typing import Any

from serve_app.protocol.openai_api import RequestKind


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
    tool_calls: tuple[dict[str, Any], ...] = ()
    """The tool calls of a chat answer (OpenAI's `message.tool_calls`: id, type, function)."""


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
        message: dict[str, Any] = {"role": "assistant", "content": answer.text}
        if answer.tool_calls:
            message["content"] = answer.text or None
            message["tool_calls"] = [dict(call) for call in answer.tool_calls]
        choice: dict[str, Any] = {
            "index": 0,
            "message": message,
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
    """OpenAI SSE events for an answer that already exists (a cache hit)."""
    return response_as_sse(response_json(answer, kind), kind, include_usage=include_usage)


def response_as_sse(
    response: dict[str, Any], kind: RequestKind, *, include_usage: bool
) -> list[str]:
    """A complete non-streamed response as OpenAI SSE events (a held answer, a cache hit).

    Everything a client could get from a live stream survives: every choice (`n > 1`), text,
    tool calls (as `delta.tool_calls` with their index), logprobs and each finish reason.
    """
    _, chunk_object = _object_names(kind)
    base = {
        "id": response.get("id") or new_response_id(kind),
        "object": chunk_object,
        "created": response.get("created") or int(time.time()),
        "model": response.get("model", ""),
    }
    events: list[str] = []
    for choice in response.get("choices") or []:
        for piece in _choice_chunks(choice, kind):
            events.append(sse_event({**base, "choices": [piece]}))
    usage = response.get("usage")
    if include_usage and usage:
        events.append(sse_event({**base, "choices": [], "usage": usage}))
    events.append(SSE_DONE)
    return events


def _choice_chunks(choice: dict[str, Any], kind: RequestKind) -> list[dict[str, Any]]:
    """One choice of a complete response as the choices of successive stream chunks."""
    index = choice.get("index", 0)
    if kind == "chat":
        message = choice.get("message") or {}
        content = message.get("content")
        tool_calls = message.get("tool_calls") or []
        deltas: list[dict[str, Any]] = []
        if content or not tool_calls:
            deltas.append({"content": content or ""})
        deltas += [{"tool_calls": [{"index": i, **call}]} for i, call in enumerate(tool_calls)]
        pieces = [{"index": index, "delta": {"role": "assistant", "content": ""}}]
        pieces += [{"index": index, "delta": delta} for delta in deltas]
        pieces.append({"index": index, "delta": {}})
    else:
        pieces = [{"index": index, "text": choice.get("text") or ""}, {"index": index, "text": ""}]
    for piece in pieces:
        piece.update({"logprobs": None, "finish_reason": None})
    # The whole answer's logprobs ride on its first chunk of content (OpenAI's shape per chunk).
    pieces[1 if kind == "chat" else 0]["logprobs"] = choice.get("logprobs")
    pieces[-1]["finish_reason"] = choice.get("finish_reason")
    return pieces


def answer_from_response(response: dict[str, Any], kind: RequestKind) -> Answer:
    """Extract the first choice of an engine's non-streamed response."""
    choice = response["choices"][0]
    text = choice["message"].get("content") if kind == "chat" else choice.get("text")
    tool_calls = (choice["message"].get("tool_calls") if kind == "chat" else None) or ()
    usage = response.get("usage") or {}
    return Answer(
        text=text or "",
        finish_reason=choice.get("finish_reason"),
        prompt_tokens=int(usage.get("prompt_tokens") or 0),
        completion_tokens=int(usage.get("completion_tokens") or 0),
        model=response.get("model", ""),
        token_logprobs=_token_logprobs(choice.get("logprobs"), kind),
        tool_calls=tuple(tool_calls),
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


def without_logprobs(response: dict[str, Any]) -> dict[str, Any]:
    """Drop logprobs the cascade requested for itself before the client sees the response."""
    choices = [{**choice, "logprobs": None} for choice in response.get("choices", [])]
    return {**response, "choices": choices}


class RelayedUsage:
    """The usage a client asked to see in a relayed stream.

    The engine is asked for usage on every chunk (for the cascade's own accounting); the
    client gets the final usage chunk only with `stream_options.include_usage`, and running
    usage on each chunk only with `continuous_usage_stats` as well.
    """

    def __init__(self, body: dict[str, Any]):
        options = body.get("stream_options") or {}
        self.final = bool(options.get("include_usage"))
        self.running = self.final and bool(options.get("continuous_usage_stats"))

    def client_event(self, event: str, payload: dict[str, Any] | None) -> str | None:
        """The event as the client should see it; None: not for this client."""
        if payload is None or payload.get("usage") is None:
            return event
        if not payload.get("choices"):  # the closing usage-only chunk
            return event if self.final else None
        if self.running:
            return event
        return sse_event({key: value for key, value in payload.items() if key != "usage"})


class StreamAccumulator:
    """Follows an engine's SSE stream to rebuild the answer and its usage."""

    def __init__(self, kind: RequestKind, model: str):
        self.kind = kind
        self.model = model
        self.parts: list[str] = []
        self.tool_calls: dict[int, dict[str, Any]] = {}
        self.finish_reason: str | None = None
        self.prompt_tokens = 0
        self.completion_tokens = 0

    def observe(self, payload: dict[str, Any]) -> None:
        for choice in payload.get("choices") or []:
            if choice.get("index", 0) != 0:
                continue  # the first choice is the answer (as for non-streamed responses)
            if self.kind == "chat":
                delta = choice.get("delta") or {}
                piece = delta.get("content")
                for call in delta.get("tool_calls") or []:
                    self._observe_tool_call(call)
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

    def _observe_tool_call(self, fragment: dict[str, Any]) -> None:
        """Merge a `delta.tool_calls` fragment: id, type and name come once, arguments in parts."""
        call = self.tool_calls.setdefault(int(fragment.get("index") or 0), {})
        for field in ("id", "type"):
            if fragment.get(field):
                call[field] = fragment[field]
        function = fragment.get("function") or {}
        merged = call.setdefault("function", {})
        if function.get("name"):
            merged["name"] = function["name"]
        if function.get("arguments") is not None:
            merged["arguments"] = merged.get("arguments", "") + function["arguments"]

    def answer(self) -> Answer:
        return Answer(
            text="".join(self.parts),
            finish_reason=self.finish_reason,
            prompt_tokens=self.prompt_tokens,
            completion_tokens=self.completion_tokens,
            model=self.model,
            tool_calls=tuple(self.tool_calls[index] for index in sorted(self.tool_calls)),
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
