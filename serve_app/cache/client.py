"""The ingress side of the semantic cache: which requests use it, lookups within a budget, stores.

The cache must never make a request fail or wait: a lookup that errors or exceeds
`lookup_timeout_s` is a fail-open (served uncached and counted), and stores are fire-and-forget.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

from ray.serve.handle import DeploymentHandle

from serve_app.accounting.metrics import IngressMetrics
from serve_app.cache.deployment import SemanticCache
from serve_app.cache.keys import CacheKey, cache_key_for_request
from serve_app.config import CacheConfig
from serve_app.protocol.errors import DEPLOYMENT_CALL_FAILURES
from serve_app.protocol.headers import seconds_header
from serve_app.protocol.openai_api import RequestKind
from serve_app.protocol.responses import Answer

logger = logging.getLogger("ray.serve")

CLIENT_TTL_HEADER = "x-cascade-cache-ttl-s"
_CACHE_FAILURES = (*DEPLOYMENT_CALL_FAILURES, TimeoutError)


@dataclass(frozen=True)
class CacheTicket:
    """A cacheable request: where its answer lives and how long the client lets it live."""

    key: CacheKey
    ttl_s: float | None


def _client_opted_out(body: dict[str, Any], headers: Any) -> bool:
    cache_control = headers.get("cache-control", "").lower()
    return body.get("cache") is False or "no-store" in cache_control


class CacheClient:
    """The ingress's way to the cache: a cache deployment's handle, or the cache itself when it
    runs in this replica (serve_app.cache.placement); both behave the same to the pipeline."""

    def __init__(
        self,
        cache: DeploymentHandle | SemanticCache,
        config: CacheConfig,
        metrics: IngressMetrics,
    ):
        self.cache = cache
        self.config = config
        self.metrics = metrics
        # Stores of the cache in this replica, held until done (fire and forget).
        self._stores: set[asyncio.Future[bool]] = set()

    def ticket(
        self, body: dict[str, Any], kind: RequestKind, *, tenant: str, headers: Any
    ) -> CacheTicket | None:
        """The request's cache ticket, or None when it must bypass the cache."""
        # Validated even when bypassing: bad input is a 400.
        ttl_s = seconds_header(headers, CLIENT_TTL_HEADER)
        if _client_opted_out(body, headers):
            return None
        key = cache_key_for_request(
            body,
            kind=kind,
            tenant=tenant,
            model=body["model"],
            cache_nondeterministic=self.config.cache_nondeterministic,
            epoch=self.config.epoch,
        )
        return CacheTicket(key, ttl_s) if key is not None else None

    async def lookup(self, ticket: CacheTicket) -> Any | None:
        """The cache's CacheLookup, or None when the cache failed or was too slow."""
        try:
            if isinstance(self.cache, SemanticCache):
                call = self.cache.lookup(ticket.key)
            else:
                call = self.cache.lookup.remote(ticket.key)  # a dead deployment raises here
            return await asyncio.wait_for(call, timeout=self.config.lookup_timeout_s)
        except _CACHE_FAILURES as e:
            reason = "timeout" if isinstance(e, TimeoutError) else "unavailable"
            logger.warning("Cache lookup failed open (%s): %s", reason, type(e).__name__)
            self.metrics.cache_fail_opens.inc(tags={"reason": reason})
            return None

    def store(self, ticket: CacheTicket, answer: Answer, tier: str) -> None:
        # Fire and forget: the client never waits for, or fails on, a cache write.
        fields = {
            "answer_text": answer.text,
            "finish_reason": answer.finish_reason,
            "prompt_tokens": answer.prompt_tokens,
            "completion_tokens": answer.completion_tokens,
            "tier": tier,
            "ttl_s": ticket.ttl_s,
        }
        if not isinstance(self.cache, SemanticCache):
            self.cache.store.remote(ticket.key, **fields)
            return
        task = asyncio.ensure_future(self.cache.store(ticket.key, **fields))  # never raises
        self._stores.add(task)
        task.add_done_callback(self._stores.discard)

    def close(self) -> None:
        """Release a cache held in this replica (its Edge shard's lock, for the replica that
        replaces this one); a cache deployment is not this replica's to close."""
        if isinstance(self.cache, SemanticCache):
            self.cache.close()

    async def invalidate(self, *, tenant: str | None, model: str | None) -> int:
        if isinstance(self.cache, SemanticCache):
            return await self.cache.invalidate(tenant=tenant, model=model)
        return await self.cache.invalidate.remote(tenant=tenant, model=model)
