"""The text the router scores for a request: Ray-free, shared by the ingress, the quality
fallback and the router deployment's callers."""

from __future__ import annotations

from typing import Any, Literal

# A system prompt longer than this is boilerplate (persona, tool specs), not a hint about the
# difficulty of the question, and would push the user's words out of the classifier's window.
SYSTEM_PROMPT_MAX_WORDS = 64


def routing_text(body: dict[str, Any], kind: Literal["chat", "completion"]) -> str:
    """The text the router scores: the last user turn of a chat, or the completion prompt."""
    if kind == "chat":
        return _chat_routing_text(body.get("messages") or [])
    prompt = body.get("prompt", "")
    if isinstance(prompt, list):
        prompt = prompt[0] if prompt else ""
    # Token-id prompts carry no text to score; the router then sees an empty (easy) request.
    return prompt if isinstance(prompt, str) else ""


def _chat_routing_text(messages: list[dict[str, Any]]) -> str:
    user_turn = next(
        (_content_text(m.get("content")) for m in reversed(messages) if m.get("role") == "user"),
        "",
    )
    system = next(
        (_content_text(m.get("content")) for m in messages if m.get("role") == "system"), ""
    )
    if system and len(system.split()) <= SYSTEM_PROMPT_MAX_WORDS:
        return f"{system}\n\n{user_turn}"
    return user_turn


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(
            part["text"]
            for part in content
            if isinstance(part, dict) and part.get("type") == "text" and "text" in part
        )
    return ""
