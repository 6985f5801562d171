"""Request builders shared by the tests of the live stack."""

from __future__ import annotations

from typing import Any


def chat_body(content: str, **overrides: Any) -> dict[str, Any]:
    """A deterministic, routed chat request with room for a complete short answer."""
    body = {
        "model": "cascade",
        "messages": [{"role": "user", "content": content}],
        "max_tokens": 160,
        "temperature": 0,
    }
    return {**body, **overrides}
