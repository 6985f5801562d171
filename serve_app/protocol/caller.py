"""Who sent a request: the tenant an API key maps to (gateway/auth.py decides it)."""

from __future__ import annotations

from dataclasses import dataclass

from serve_app.config import ApiKeyConfig


@dataclass(frozen=True)
class Caller:
    tenant: str
    key: ApiKeyConfig | None
