"""The Qdrant Edge cache store: a shard embedded in this process."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import threading
import time
from typing import Any

from serve_app.cache.store import (
    CacheStoreError,
    StoredAnswer,
    ensure_open,
    live_exact_match,
    point_id,
    store_errors,
)

logger = logging.getLogger(__name__)

# A replica replacing another on the same node (a rolling update, a restart) can start before
# the old one, still draining its requests, lets go of the shard: wait that long for it rather
# than fail the new replica. Serve's graceful shutdown drains for 20 s by default.
SHARD_RELEASE_WAIT_S = 60.0
_SHARD_POLL_S = 0.25

# Nearest entries an Edge search fetches, so that a few expired ones (purged every few
# minutes) in front of a live entry do not hide it.
_EDGE_SEARCH_CANDIDATES = 4


class EdgeCacheStore:
    """Qdrant Edge shard embedded in this process (one process owns a shard directory)."""

    def __init__(self, path: str | None, dim: int) -> None:
        import qdrant_edge as qe

        self._qe = qe
        self._owned_dir = tempfile.mkdtemp(prefix="cascade-cache-") if path is None else None
        self._path = self._owned_dir or path
        os.makedirs(self._path, exist_ok=True)
        config = qe.EdgeConfig(vectors=qe.EdgeVectorParams(size=dim, distance=qe.Distance.Cosine))
        # The pyo3 shard is driven from worker threads (and inline by an ingress's cache); one
        # lock serialises calls (each is ~1 ms) and makes close() safe against an in-flight query.
        self._lock = threading.Lock()
        try:
            # load() with a config creates an empty shard, or opens the existing one after
            # checking its vector size; while another process holds the shard, it waits.
            self._shard: Any = self._load_when_free(config)
            self._create_indexes()
        except Exception as e:
            self._remove_owned_dir()
            raise CacheStoreError(f"cannot open Qdrant Edge shard at {self._path}: {e}") from e

    def _load_when_free(self, config: Any) -> Any:
        """The shard, once no other process (or store) holds it; its lock's error after
        SHARD_RELEASE_WAIT_S, any other error at once."""
        deadline_s = time.monotonic() + SHARD_RELEASE_WAIT_S
        waiting = False
        while True:
            try:
                return self._qe.EdgeShard.load(self._path, config)
            except Exception as e:  # qdrant_edge raises plain Exception; the lock says WouldBlock
                if "WouldBlock" not in str(e) or time.monotonic() >= deadline_s:
                    raise
                if not waiting:
                    logger.info("Edge shard %s is held (by an old replica?); waiting", self._path)
                    waiting = True
                time.sleep(_SHARD_POLL_S)

    def _create_indexes(self) -> None:
        qe = self._qe
        indexes = {
            "partition": qe.KeywordIndexParams(is_tenant=True),
            "exact_key": qe.KeywordIndexParams(),
            "tenant": qe.KeywordIndexParams(),
            "model": qe.KeywordIndexParams(),
            "expires_at_s": qe.FloatIndexParams(),
        }
        for field, params in indexes.items():
            self._shard.update(qe.UpdateOperation.create_field_index(field, params))

    @store_errors
    def search(
        self, vector: list[float], *, partition: str, threshold: float, now_s: float
    ) -> StoredAnswer | None:
        qe = self._qe
        # Filtering on the partition alone and dropping expired candidates here is 2.5x faster
        # than adding the expiry range to the filter (1.5 vs 3.9 ms p50 at 100k entries): the
        # range check made the shard test every point of the partition against a float index.
        # Expired entries are never served; more than a few expired closer ones make a miss.
        request = qe.QueryRequest(
            limit=_EDGE_SEARCH_CANDIDATES,
            query=qe.Query.Nearest(vector),
            filter=qe.Filter(must=[qe.FieldCondition("partition", match=qe.MatchValue(partition))]),
            score_threshold=threshold,
            with_payload=True,
            with_vector=False,
        )
        with self._lock:
            points = ensure_open(self._shard).query(request)
        for point in points:
            if point.payload["expires_at_s"] > now_s:
                return StoredAnswer.from_payload(point.payload, similarity=float(point.score))
        return None

    @store_errors
    def get_exact(self, exact_key: str, *, now_s: float) -> StoredAnswer | None:
        with self._lock:
            records = ensure_open(self._shard).retrieve(
                [point_id(exact_key)], with_payload=True, with_vector=False
            )
        return live_exact_match(records, exact_key, now_s)

    @store_errors
    def upsert(self, vector: list[float], entry: StoredAnswer) -> None:
        qe = self._qe
        point = qe.Point(point_id(entry.exact_key), vector, entry.to_payload())
        with self._lock:
            ensure_open(self._shard).update(qe.UpdateOperation.upsert_points([point]))

    @store_errors
    def purge_expired(self, now_s: float) -> int:
        qe = self._qe
        return self._delete_where(
            qe.Filter(must=[qe.FieldCondition("expires_at_s", range=qe.RangeFloat(lte=now_s))])
        )

    @store_errors
    def delete_matching(self, *, tenant: str | None, model: str | None) -> int:
        qe = self._qe
        fields = {"tenant": tenant, "model": model}
        return self._delete_where(
            qe.Filter(
                must=[
                    qe.FieldCondition(name, match=qe.MatchValue(value))
                    for name, value in fields.items()
                    if value is not None
                ]
            )
        )

    def _delete_where(self, condition: Any) -> int:
        qe = self._qe
        with self._lock:
            shard = ensure_open(self._shard)
            deleted = shard.count(qe.CountRequest(exact=True, filter=condition))
            if deleted:
                shard.update(qe.UpdateOperation.delete_points_by_filter(condition))
        # No shard.optimize() here: building HNSW over 20k points took 27 s on 2 cores while
        # holding the lock, and unoptimised filtered search was still ~1.4 ms at that size.
        return int(deleted)

    @store_errors
    def count(self) -> int:
        with self._lock:
            return int(ensure_open(self._shard).count(self._qe.CountRequest(exact=True)))

    def close(self) -> None:
        with self._lock:
            shard, self._shard = self._shard, None
            if shard is not None:
                try:
                    shard.close()
                finally:
                    self._remove_owned_dir()

    def _remove_owned_dir(self) -> None:
        if self._owned_dir is not None:
            shutil.rmtree(self._owned_dir, ignore_errors=True)
            self._owned_dir = None
