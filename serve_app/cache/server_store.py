"""The Qdrant server cache store: a collection shared by replicas (or qdrant-client's local
mode, its stand-in in tests)."""

from __future__ import annotations

import contextlib
import threading
from typing import Any

from serve_app.cache.store import (
    CacheStoreError,
    StoredAnswer,
    ensure_open,
    live_exact_match,
    point_id,
    store_errors,
)


class QdrantServerCacheStore:
    """A collection on a Qdrant server (shared by replicas), or qdrant-client's local mode.

    `location` is an http(s) URL for a server; `:memory:` or a directory selects the
    pure-Python local mode, a test stand-in for the server API.
    """

    def __init__(self, location: str, api_key: str | None, collection: str, dim: int) -> None:
        from qdrant_client import QdrantClient, models

        self._models = models
        self._collection = collection
        self._remote = location.startswith(("http://", "https://"))
        if self._remote:
            client = QdrantClient(url=location, api_key=api_key)
        elif location == ":memory:":
            client = QdrantClient(location=":memory:")
        else:
            # Local mode on disk uses sqlite, which refuses calls from other threads unless
            # told otherwise; our lock below serialises them instead.
            client = QdrantClient(path=location, force_disable_check_same_thread=True)
        self._client: Any = client
        # Local mode is plain Python state: serialise it. The HTTP client is thread-safe.
        self._lock: contextlib.AbstractContextManager[Any] = (
            contextlib.nullcontext() if self._remote else threading.Lock()
        )
        try:
            self._ensure_collection(dim)
        except Exception as e:
            client.close()
            raise CacheStoreError(f"cannot prepare Qdrant collection {collection}: {e}") from e

    def _ensure_collection(self, dim: int) -> None:
        models = self._models
        if not self._client.collection_exists(self._collection):
            try:
                self._client.create_collection(
                    self._collection,
                    vectors_config=models.VectorParams(size=dim, distance=models.Distance.COSINE),
                )
            except Exception:
                # Another replica may have created it between our check and create.
                if not self._client.collection_exists(self._collection):
                    raise
        self._check_dim(dim)
        if self._remote:  # local mode has no payload indexes and warns when asked for them
            self._create_indexes()

    def _check_dim(self, dim: int) -> None:
        vectors = self._client.get_collection(self._collection).config.params.vectors
        size = getattr(vectors, "size", None)
        if size != dim:
            raise CacheStoreError(
                f"collection {self._collection} holds {size}-d vectors, the embedder makes {dim}"
            )

    def _create_indexes(self) -> None:
        models = self._models
        indexes = {
            "partition": models.KeywordIndexParams(
                type=models.KeywordIndexType.KEYWORD, is_tenant=True
            ),
            "exact_key": models.PayloadSchemaType.KEYWORD,
            "tenant": models.PayloadSchemaType.KEYWORD,
            "model": models.PayloadSchemaType.KEYWORD,
            "expires_at_s": models.PayloadSchemaType.FLOAT,
        }
        for field, schema in indexes.items():
            self._client.create_payload_index(self._collection, field, field_schema=schema)

    def _live_in_partition(self, partition: str, now_s: float) -> Any:
        models = self._models
        return models.Filter(
            must=[
                models.FieldCondition(key="partition", match=models.MatchValue(value=partition)),
                models.FieldCondition(key="expires_at_s", range=models.Range(gt=now_s)),
            ]
        )

    @store_errors
    def search(
        self, vector: list[float], *, partition: str, threshold: float, now_s: float
    ) -> StoredAnswer | None:
        with self._lock:
            response = ensure_open(self._client).query_points(
                self._collection,
                query=vector,
                query_filter=self._live_in_partition(partition, now_s),
                limit=1,
                score_threshold=threshold,
                with_payload=True,
            )
        if not response.points:
            return None
        best = response.points[0]
        return StoredAnswer.from_payload(best.payload, similarity=float(best.score))

    @store_errors
    def get_exact(self, exact_key: str, *, now_s: float) -> StoredAnswer | None:
        with self._lock:
            records = ensure_open(self._client).retrieve(
                self._collection, ids=[point_id(exact_key)], with_payload=True
            )
        return live_exact_match(records, exact_key, now_s)

    @store_errors
    def upsert(self, vector: list[float], entry: StoredAnswer) -> None:
        point = self._models.PointStruct(
            id=point_id(entry.exact_key), vector=vector, payload=entry.to_payload()
        )
        with self._lock:
            ensure_open(self._client).upsert(self._collection, points=[point], wait=True)

    @store_errors
    def purge_expired(self, now_s: float) -> int:
        models = self._models
        return self._delete_where(
            models.Filter(
                must=[models.FieldCondition(key="expires_at_s", range=models.Range(lte=now_s))]
            )
        )

    @store_errors
    def delete_matching(self, *, tenant: str | None, model: str | None) -> int:
        models = self._models
        fields = {"tenant": tenant, "model": model}
        return self._delete_where(
            models.Filter(
                must=[
                    models.FieldCondition(key=name, match=models.MatchValue(value=value))
                    for name, value in fields.items()
                    if value is not None
                ]
            )
        )

    def _delete_where(self, condition: Any) -> int:
        models = self._models
        with self._lock:
            client = ensure_open(self._client)
            deleted = client.count(self._collection, count_filter=condition, exact=True).count
            if deleted:
                client.delete(
                    self._collection, points_selector=models.FilterSelector(filter=condition)
                )
        return int(deleted)

    @store_errors
    def count(self) -> int:
        with self._lock:
            return int(ensure_open(self._client).count(self._collection, exact=True).count)

    def close(self) -> None:
        with self._lock:
            client, self._client = self._client, None
            if client is not None:
                client.close()
