"""Who sent a request: the tenant an API key maps to (gateway/auth.py decides it)."""

from __future__ import annotations

from dataclasses import dataclass

from serve_app.config import OTHER_TENANT, ApiKeyConfig


@dataclass(frozen=True)
class Caller:
    tenant: str
    key: ApiKeyConfig | None

    @property
    def tenant_label(self) -> str:
        """The tenant as metrics and cost summaries name it: a configured key's tenant, else
        `other`. Open mode makes a tenant of every bearer key; as a label that would be one
        series per client, without bound."""
        return self.tenant if self.key is not None else OTHER_TENANT
