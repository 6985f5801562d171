"""Cache keys of OpenAI-shaped requests: what may be cached, and what must match for a hit.

A request is answered from the cache only by an entry in the same *partition*: same tenant,
same model, same conversation context (system prompt, earlier turns, response format) and the
same answer-changing parameters. Inside a partition only the last user turn may differ, and
it is compared exactly (`exact_key`) or by embedding similarity (`query_text`).

Pure functions, no I/O: the ingress computes the key, the cache deployment only stores it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

RequestKind = Literal["chat", "completion"]

# Bumped when the canonical form changes, so old entries land in partitions nobody queries.
_KEY_VERSION = 1

# OpenAI's default sampling temperature: a request without one is nondeterministic.
_DEFAULT_TEMPERATURE = 1.0

# Fields that do not change the answer text (transport, bookkeeping) or are handled on their
# own (the prompt, the model, our opt-out). Every other field partitions the cache, so an
# engine parameter we have never heard of (top_k, min_p, guided_json...) cannot leak an answer
# produced under different settings.
_FIELDS_OUTSIDE_PARAMS = frozenset(
    {"messages", "prompt", "model", "cache", "stream", "stream_options", "user", "metadata"}
)

# Defaults folded in so that spelling a default out and omitting it share one partition.
_PARAM_DEFAULTS: dict[str, Any] = {
    "temperature": _DEFAULT_TEMPERATURE,
    "top_p": 1.0,
    "n": 1,
    "presence_penalty": 0.0,
    "frequency_penalty": 0.0,
}

# Requests whose answer is more than text, or is driven by tools: caching them would replay
# tool calls, audio or logprobs we never stored.
_UNCACHEABLE_FIELDS = ("tools", "functions", "audio")


@dataclass(frozen=True)
class CacheKey:
    """Where a request's answer lives in the cache."""

    partition: str
    """Hash of tenant, model, context and answer-changing parameters; hits never cross it."""
    exact_key: str
    """Hash of the partition plus the exact last user turn: identical requests share it."""
    query_text: str
    """The last user turn (the prompt for completions); what gets embedded."""
    tenant: str = ""
    """Stored beside the entry so an operator can invalidate one tenant's answers."""
    model: str = ""
    """Stored beside the entry so an operator can invalidate one model's answers."""


def cache_key_for_request(
    body: Mapping[str, Any],
    *,
    kind: RequestKind,
    tenant: str,
    model: str,
    cache_nondeterministic: bool,
    epoch: int = 0,
) -> CacheKey | None:
    """The cache key of an OpenAI chat/completions request body, or None if not cacheable."""
    if not _is_cacheable(body, kind=kind, cache_nondeterministic=cache_nondeterministic):
        return None
    split = _split_chat(body) if kind == "chat" else _split_completion(body)
    if split is None:
        return None
    context, query_text = split
    partition = _sha256(
        {
            "v": _KEY_VERSION,
            "epoch": epoch,
            "tenant": tenant,
            "model": model,
            "kind": kind,
            "context": context,
            "params": _answer_params(body),
        }
    )
    exact_key = _sha256({"partition": partition, "query": query_text})
    return CacheKey(
        partition=partition, exact_key=exact_key, query_text=query_text, tenant=tenant, model=model
    )


def _is_cacheable(
    body: Mapping[str, Any], *, kind: RequestKind, cache_nondeterministic: bool
) -> bool:
    if body.get("cache") is False:
        return False
    if any(body.get(field) for field in _UNCACHEABLE_FIELDS):
        return False
    if _number(body.get("n"), default=1) > 1 or _number(body.get("best_of"), default=1) > 1:
        return False
    if _wants_logprobs(body, kind=kind):
        return False
    modalities = body.get("modalities")
    if modalities and any(modality != "text" for modality in modalities):
        return False
    temperature = _number(body.get("temperature"), default=_DEFAULT_TEMPERATURE)
    return temperature <= 0 or cache_nondeterministic


def _wants_logprobs(body: Mapping[str, Any], *, kind: RequestKind) -> bool:
    if kind == "chat":
        return bool(body.get("logprobs")) or body.get("top_logprobs") is not None
    # Completions: `logprobs` is a count, and 0 still asks for the sampled token's logprob.
    return body.get("logprobs") is not None


def _number(value: Any, *, default: float) -> float:
    """A numeric request field, with null meaning the default; junk counts as the default."""
    if value is None or isinstance(value, bool) or not isinstance(value, int | float):
        return float(default)
    return float(value)


def _split_chat(body: Mapping[str, Any]) -> tuple[list[dict[str, Any]], str] | None:
    """(context messages, last user turn text), or None for shapes we do not cache."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return None
    canonical: list[dict[str, Any]] = []
    for message in messages:
        entry = _canonical_message(message)
        if entry is None:
            return None
        canonical.append(entry)
    # The answer responds to the last turn; if that is not a user turn (assistant prefill,
    # tool result) there is no question to match, so the request is not cached.
    if canonical[-1]["role"] != "user":
        return None
    return canonical[:-1], canonical[-1]["content"]


def _canonical_message(message: Any) -> dict[str, Any] | None:
    if not isinstance(message, Mapping):
        return None
    role = message.get("role")
    if role not in ("system", "developer", "user", "assistant"):
        return None  # tool/function results: tool use is not cached
    if message.get("tool_calls") or message.get("function_call"):
        return None
    content = _content_text(message.get("content"))
    if content is None:
        return None
    entry: dict[str, Any] = {"role": role, "content": content}
    if message.get("name") is not None:
        entry["name"] = message["name"]
    return entry


def _content_text(content: Any) -> str | None:
    """Text of a message's content; None when it carries anything but text."""
    if isinstance(content, str):
        return content
    if content is None:
        return ""
    if not isinstance(content, list):
        return None
    texts: list[str] = []
    for part in content:
        if not isinstance(part, Mapping) or part.get("type") != "text":
            return None  # images, audio, files: the text alone does not determine the answer
        text = part.get("text")
        if not isinstance(text, str):
            return None
        texts.append(text)
    return "\n".join(texts)


def _split_completion(body: Mapping[str, Any]) -> tuple[list[dict[str, Any]], str] | None:
    prompt = body.get("prompt")
    if isinstance(prompt, list):
        # A batch of prompts gets a batch of answers; token-id prompts have no text to embed.
        if len(prompt) != 1 or not isinstance(prompt[0], str):
            return None
        prompt = prompt[0]
    if not isinstance(prompt, str):
        return None
    return [], prompt


def _answer_params(body: Mapping[str, Any]) -> dict[str, Any]:
    """Every field that may change the answer, with defaults and aliases folded in."""
    params = {
        name: value
        for name, value in body.items()
        if name not in _FIELDS_OUTSIDE_PARAMS and value is not None
    }
    # `max_completion_tokens` replaced `max_tokens` in the chat API; both mean the same limit.
    if "max_completion_tokens" in params:
        params["max_tokens"] = params.pop("max_completion_tokens")
    if isinstance(params.get("stop"), str):
        params["stop"] = [params["stop"]]
    for name, default in _PARAM_DEFAULTS.items():
        params[name] = _number(params.get(name), default=default)
    return params


def _sha256(value: Any) -> str:
    canonical = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()
