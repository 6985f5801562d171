"""The semantic cache deployment: answer repeated and near-duplicate questions without a model.

Plain class; `serve_app.builder` wraps it in `serve.deployment`. A lookup tries the exact
request first (no embedding needed), then the nearest earlier question of the same partition.
The embedder (serve_app.cache.embedder) is what `embedding_model` names: by default an ONNX
Runtime int8 export of all-MiniLM-L6-v2 built by `make models`. Every failure of the embedder
or the store fails open: the lookup reports `error` and the request is served by the model
tiers, as if the cache were not there. An embedder that cannot be built (an unprepared
export) fails the replica at start instead, with an error naming `make models`.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from serve_app.accounting.metrics import CacheMetrics
from serve_app.cache.embedder import (
    Embedder,
    EmbeddingError,
    SentenceTransformerEmbedder,
    make_embedder,
)
from serve_app.cache.keys import CacheKey
from serve_app.cache.near_miss_guard import rejection_reason
from serve_app.cache.store import CacheError, CacheStore, StoredAnswer
from serve_app.cache.store_factory import make_cache_store
from serve_app.config import CacheConfig

logger = logging.getLogger(__name__)

# Re-exported: the embedders used to live here.
__all__ = ["Embedder", "EmbeddingError", "SentenceTransformerEmbedder", "SemanticCache"]

_T = TypeVar("_T")
LookupKind = Literal["exact", "semantic", "miss", "disabled", "error"]
LOOKUP_KINDS: tuple[LookupKind, ...] = ("exact", "semantic", "miss", "disabled", "error")

# Expired entries are never served (queries filter on expiry); purging only reclaims space,
# so doing it at most this often, piggybacked on a store, is plenty.
_PURGE_INTERVAL_S = 300.0
# A miss is usually followed by a store of the same question: keep its vector so the store
# does not embed it a second time. Bounded: misses whose answer never comes are forgotten.
_RECENT_VECTORS_MAX = 1024


# all-MiniLM moves a question from 1.0 to 0.92 cosine of itself when only its "?" is dropped;
# trailing sentence punctuation carries no meaning a cached answer depends on.
_TRAILING_PUNCTUATION = re.compile(r"[?!.,;:]+(?=\s|$)")


def embedding_text(query_text: str) -> str:
    """The form of a question that gets embedded: no trailing punctuation, single spaces."""
    return " ".join(_TRAILING_PUNCTUATION.sub("", query_text).split())


@dataclass(frozen=True)
class CacheLookup:
    """Outcome of one lookup, with its latency for metrics and response headers."""

    answer: StoredAnswer | None
    kind: LookupKind
    latency_ms: float


class SemanticCache:
    """Exact and semantic lookup of earlier answers, partitioned by `CacheKey.partition`.

    `embedder`, `store` and `clock` default to what `config` describes and to wall time;
    tests pass other real ones (a shared embedder, a local-mode store, a fake clock).

    `inline` runs a lookup's and a store's blocking work (~3 ms of CPU: embedding, search) in
    the caller's event loop instead of a worker thread; the ingress holds an Edge cache that way
    (a server store's network calls stay in a thread: they could stall the loop).
    Handing ~3 ms to a thread and back cost more than the work itself there: the two threads
    trade the GIL, each wait up to Python's 5 ms switch interval (gateway time on a miss p50
    15.4 ms in a thread, 11.6-12.8 ms inline; docs/benchmarks.md).
    """

    def __init__(
        self,
        config: CacheConfig | Mapping[str, Any],
        *,
        embedder: Embedder | None = None,
        store: CacheStore | None = None,
        clock: Callable[[], float] = time.time,
        inline: bool = False,
    ) -> None:
        self._inline = inline
        self._config = (
            config if isinstance(config, CacheConfig) else CacheConfig.model_validate(config)
        )
        self._clock = clock
        self._counts: Counter[str] = Counter()
        self._metrics = CacheMetrics.create()
        self._recent_vectors: OrderedDict[str, list[float]] = OrderedDict()
        self._last_purge_s = 0.0
        self._embedder: Embedder | None = None
        self._store: CacheStore | None = None
        if not self._config.enabled:
            return
        if embedder is None:
            embedder = make_embedder(self._config.embedding_model, self._config.embedding_threads)
        self._embedder = embedder
        self._store = store if store is not None else make_cache_store(self._config, embedder.dim)
        self._last_purge_s = clock()

    async def lookup(self, key: CacheKey) -> CacheLookup:
        """The cached answer for `key`, if any; never raises."""
        started_s = time.perf_counter()
        if self._embedder is None or self._store is None:
            return self._finish_lookup(None, "disabled", started_s)
        try:
            answer, kind = await self._run(self._lookup_blocking, key, self._clock())
        except CacheError as e:
            logger.warning("Cache lookup failed, serving uncached: %s", e)
            return self._finish_lookup(None, "error", started_s)
        return self._finish_lookup(answer, kind, started_s)

    def _lookup_blocking(
        self, key: CacheKey, now_s: float
    ) -> tuple[StoredAnswer | None, LookupKind]:
        assert self._embedder is not None and self._store is not None
        exact = self._store.get_exact(key.exact_key, now_s=now_s)
        if exact is not None:
            return exact, "exact"
        vector = self._embedder.embed(embedding_text(key.query_text))
        self._remember_vector(key.exact_key, vector)
        similar = self._store.search(
            vector,
            partition=key.partition,
            threshold=self._config.similarity_threshold,
            now_s=now_s,
        )
        if similar is None:
            return None, "miss"
        if self._config.verify_candidates:
            reason = rejection_reason(key.query_text, similar.query_text)
            if reason is not None:
                self._counts[f"rejected_{reason}"] += 1
                self._metrics.rejected_candidates.inc(tags={"reason": reason})
                return None, "miss"
        return similar, "semantic"

    def _finish_lookup(
        self, answer: StoredAnswer | None, kind: LookupKind, started_s: float
    ) -> CacheLookup:
        self._counts[f"lookup_{kind}"] += 1
        latency_ms = (time.perf_counter() - started_s) * 1e3
        self._metrics.lookups.inc(tags={"result": kind})
        self._metrics.lookup_latency_ms.observe(latency_ms)
        if kind == "error":
            self._metrics.fail_opens.inc(tags={"reason": "error"})
        return CacheLookup(answer=answer, kind=kind, latency_ms=latency_ms)

    async def store(
        self,
        key: CacheKey,
        *,
        answer_text: str,
        finish_reason: str | None,
        prompt_tokens: int,
        completion_tokens: int,
        tier: str,
        ttl_s: float | None = None,
    ) -> bool:
        """Cache a complete answer; True if stored. Never raises.

        `ttl_s` (a client's per-request maximum) can shorten the configured TTL, never extend it.
        """
        if self._embedder is None or self._store is None:
            return False
        # Only whole answers: a truncated or filtered answer replayed later would look like a
        # model that always stops mid-sentence. A `length` answer comes here only when it was
        # cut at the client's own max_tokens (the ingress's rule, quality/cache_policy.py),
        # which is part of the partition: complete for every request that can hit it.
        if finish_reason not in ("stop", "length") or not answer_text.strip():
            self._counts["store_skipped"] += 1
            self._metrics.stores.inc(tags={"outcome": "skipped"})
            return False
        now_s = self._clock()
        entry = StoredAnswer(
            partition=key.partition,
            exact_key=key.exact_key,
            query_text=key.query_text,
            tenant=key.tenant,
            model=key.model,
            answer_text=answer_text,
            finish_reason=finish_reason,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            tier=tier,
            created_at_s=now_s,
            expires_at_s=now_s + min(self._config.ttl_s, ttl_s or self._config.ttl_s),
        )
        try:
            await self._run(self._store_blocking, entry)
            if now_s - self._last_purge_s >= _PURGE_INTERVAL_S:
                self._last_purge_s = now_s
                await self.purge_expired()
        except CacheError as e:
            logger.warning("Cache store failed, answer not cached: %s", e)
            self._counts["store_error"] += 1
            self._metrics.stores.inc(tags={"outcome": "error"})
            return False
        self._counts["store_ok"] += 1
        self._metrics.stores.inc(tags={"outcome": "stored"})
        return True

    async def _run(self, work: Callable[..., _T], *args: Any) -> _T:
        """A lookup's or store's blocking part: inline in the ingress (`inline`), else in a
        worker thread."""
        if self._inline:
            return work(*args)
        return await asyncio.to_thread(work, *args)

    def _remember_vector(self, exact_key: str, vector: list[float]) -> None:
        self._recent_vectors[exact_key] = vector
        while len(self._recent_vectors) > _RECENT_VECTORS_MAX:
            self._recent_vectors.popitem(last=False)

    def _store_blocking(self, entry: StoredAnswer) -> None:
        assert self._embedder is not None and self._store is not None
        vector = self._recent_vectors.pop(entry.exact_key, None)
        if vector is None:
            vector = self._embedder.embed(embedding_text(entry.query_text))
        self._store.upsert(vector, entry)

    async def invalidate(self, *, tenant: str | None = None, model: str | None = None) -> int:
        """Delete one tenant's and/or one model's entries (everything when both are None).

        Raises CacheError: unlike lookups, an operator asking for invalidation must learn that
        it failed.
        """
        if self._store is None:
            return 0
        deleted = await asyncio.to_thread(self._store.delete_matching, tenant=tenant, model=model)
        self._recent_vectors.clear()
        if deleted:
            self._metrics.evictions.inc(deleted, tags={"reason": "invalidated"})
        logger.info("Invalidated %d cache entries (tenant=%s, model=%s)", deleted, tenant, model)
        return deleted

    async def purge_expired(self) -> int:
        """Delete expired entries now; returns how many (0 if the store failed)."""
        if self._store is None:
            return 0
        try:
            purged = await asyncio.to_thread(self._store.purge_expired, self._clock())
            self._metrics.entries.set(await asyncio.to_thread(self._store.count))
        except CacheError as e:
            logger.warning("Cache purge failed: %s", e)
            return 0
        if purged:
            self._metrics.evictions.inc(purged, tags={"reason": "expired"})
        return purged

    def check_health(self) -> None:
        """Raise if the store cannot answer, so Serve restarts this replica.

        Requests keep failing open meanwhile; a restart reopens the embedded shard or
        reconnects to the server.
        """
        if self._store is not None:
            self._store.count()

    async def stats(self) -> dict[str, Any]:
        """Entry count and lookup/store counters since this replica started."""
        entries: int | None = None
        if self._store is not None:
            try:
                entries = await asyncio.to_thread(self._store.count)
            except CacheError as e:
                logger.warning("Cache entry count failed: %s", e)
        lookups = {kind: self._counts[f"lookup_{kind}"] for kind in LOOKUP_KINDS}
        return {
            "enabled": self._config.enabled,
            "entries": entries,
            "lookups": sum(lookups.values()),
            "lookups_by_kind": lookups,
            "hits": lookups["exact"] + lookups["semantic"],
            "stores": self._counts["store_ok"],
            "stores_skipped": self._counts["store_skipped"],
            "store_errors": self._counts["store_error"],
        }

    def close(self) -> None:
        """Release the store (an embedded shard's lock and its temp directory).

        The store is kept, closed: later lookups report `error` and health checks fail,
        rather than the cache pretending to be disabled.
        """
        if self._store is not None:
            self._store.close()

    def __del__(self) -> None:
        # Serve calls __del__ when it stops a replica; the embedded shard must be released
        # for the next replica to open it. Stores' close() is idempotent.
        store = getattr(self, "_store", None)
        if store is not None:
            store.close()
