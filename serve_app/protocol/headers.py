"""Request headers of the cascade's own (`x-cascade-*`) that carry a number of seconds."""

from __future__ import annotations

from typing import Any

from serve_app.protocol.errors import InvalidRequestError


def seconds_header(headers: Any, name: str) -> float | None:
    """A client header holding a positive number of seconds; None when absent, 400 when bad."""
    raw = headers.get(name)
    if raw is None:
        return None
    try:
        seconds = float(raw)
    except ValueError as e:
        raise InvalidRequestError(f"{name} must be a number of seconds.") from e
    if not seconds > 0:
        raise InvalidRequestError(f"{name} must be a positive number.")
    return seconds
