"""A non-streamed response rebuilt from an engine's stream, for answers generated internally
as streams (early escalation watches the small tier's tokens while they are generated).

The rebuilt body has the shape of the engine's own non-streamed response once its null
extension fields are dropped (`without_engine_nulls`): id, object, created, model, one choice
with its message or text, logprobs (chat: every token's entry, as non-streamed), finish_reason
and stop_reason, system_fingerprint and usage. Requests whose shape a stream cannot reproduce
exactly (several choices, tool calls, completion logprobs with text offsets, echo) are not
streamed internally: see `rebuildable_from_stream`.
"""

from __future__ import annotations

import time
from typing import Any

from serve_app.protocol.openai_api import RequestKind, client_asked_for_logprobs


def rebuildable_from_stream(body: dict[str, Any], kind: RequestKind) -> bool:
    """Whether a streamed generation of `body` rebuilds into its exact non-streamed response."""
    if (body.get("n") or 1) > 1 or (body.get("best_of") or 1) > 1:
        return False  # several choices: one stream interleaves them
    if body.get("prompt_logprobs") is not None:
        return False
    if kind == "chat":
        # Tool calls are parsed differently from a stream than from a whole answer.
        return not (body.get("tools") or body.get("functions"))
    prompt = body.get("prompt")
    single_prompt = isinstance(prompt, str) or (isinstance(prompt, list) and len(prompt) == 1)
    # Completion logprobs carry text offsets, counted per chunk in a stream.
    return single_prompt and not body.get("echo") and not client_asked_for_logprobs(body)


def chunk_token_logprobs(payload: dict[str, Any], kind: RequestKind) -> list[float]:
    """The logprobs of the tokens one stream chunk adds to the first choice."""
    values: list[Any] = []
    for choice in payload.get("choices") or []:
        if choice.get("index", 0) != 0 or not choice.get("logprobs"):
            continue
        logprobs = choice["logprobs"]
        if kind == "chat":
            values += [entry.get("logprob") for entry in logprobs.get("content") or []]
        else:
            values += logprobs.get("token_logprobs") or []
    # -inf/None: tokens the engine could not score, as in responses._token_logprobs.
    return [float(v) for v in values if v is not None and v > float("-inf")]


class StreamCollector:
    """Follows an engine stream's payloads (one choice) and rebuilds the non-streamed body."""

    def __init__(self, kind: RequestKind):
        self.kind = kind
        self.id: str | None = None
        self.created: int | None = None
        self.model = ""
        self.system_fingerprint: str | None = None
        self.parts: list[str] = []
        self.logprob_entries: list[dict[str, Any]] = []  # chat: one entry per token
        self.completion_logprobs: dict[str, list[Any]] = {"tokens": [], "token_logprobs": []}
        self.saw_logprobs = False
        self.finish_reason: str | None = None
        self.stop_reason: int | str | None = None
        self.prompt_tokens = 0
        self.completion_tokens = 0

    def observe(self, payload: dict[str, Any]) -> None:
        self.id = self.id or payload.get("id")
        self.created = self.created or payload.get("created")
        self.model = self.model or payload.get("model", "")
        self.system_fingerprint = self.system_fingerprint or payload.get("system_fingerprint")
        for choice in payload.get("choices") or []:
            if choice.get("index", 0) == 0:
                self._observe_choice(choice)
        usage = payload.get("usage")
        if usage:
            self.prompt_tokens = int(usage.get("prompt_tokens") or 0)
            self.completion_tokens = int(usage.get("completion_tokens") or 0)

    def _observe_choice(self, choice: dict[str, Any]) -> None:
        if self.kind == "chat":
            piece = (choice.get("delta") or {}).get("content")
        else:
            piece = choice.get("text")
        if piece:
            self.parts.append(piece)
        logprobs = choice.get("logprobs")
        if logprobs:
            self.saw_logprobs = True
            self.logprob_entries += logprobs.get("content") or []
            for key, values in self.completion_logprobs.items():
                values += logprobs.get(key) or []
        if choice.get("finish_reason"):
            self.finish_reason = choice["finish_reason"]
            self.stop_reason = choice.get("stop_reason")

    def response(self) -> dict[str, Any]:
        """The non-streamed response body for everything observed so far."""
        text = "".join(self.parts)
        choice: dict[str, Any]
        if self.kind == "chat":
            logprobs = {"content": self.logprob_entries} if self.saw_logprobs else None
            message = {"role": "assistant", "content": text, "refusal": None}
            choice = {"index": 0, "message": message, "logprobs": logprobs}
        else:
            # Only the cascade reads these (a client's own completion logprobs, with their text
            # offsets, are never rebuilt from a stream): no text_offset.
            logprobs = dict(self.completion_logprobs) if self.saw_logprobs else None
            choice = {"index": 0, "text": text, "logprobs": logprobs}
        choice["finish_reason"] = self.finish_reason
        if self.stop_reason is not None:
            choice["stop_reason"] = self.stop_reason
        prefix = "chatcmpl" if self.kind == "chat" else "cmpl"
        return {
            "id": self.id or f"{prefix}-stream",
            "object": "chat.completion" if self.kind == "chat" else "text_completion",
            "created": self.created or int(time.time()),
            "model": self.model,
            "choices": [choice],
            "system_fingerprint": self.system_fingerprint,
            "usage": {
                "prompt_tokens": self.prompt_tokens,
                "total_tokens": self.prompt_tokens + self.completion_tokens,
                "completion_tokens": self.completion_tokens,
            },
        }
