"""The semantic cache's vector-store contract: what a store keeps (`StoredAnswer`), what it
does (`CacheStore`), how it fails (`CacheError`), and the helpers both backends share.

A store keeps one point per exact request (the point id derives from `exact_key`, so storing
the same request again overwrites it) and only ever compares similarity inside one partition:
the partition filter runs inside the vector query, not after it, so a closer entry of another
tenant can neither be served nor crowd out the right one.

Backends: Qdrant Edge in-process (serve_app.cache.edge_store) and a Qdrant server, or
qdrant-client's local mode (serve_app.cache.server_store); serve_app.cache.store_factory opens
the one a CacheConfig selects.
"""

from __future__ import annotations

import dataclasses
import functools
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ParamSpec, Protocol, TypeVar

_P = ParamSpec("_P")
_R = TypeVar("_R")
_C = TypeVar("_C")

# Namespace of point ids; any fixed UUID works, it only has to never change.
_POINT_ID_NAMESPACE = uuid.UUID("5d1f0e8e-3c1a-4f55-9a43-7f0c2b1e6a10")


class CacheError(Exception):
    """The cache could not answer; callers serve the request uncached."""


class CacheStoreError(CacheError):
    """The vector store failed, or was used after close()."""


@dataclass(frozen=True)
class StoredAnswer:
    """A cached answer and what it cost to produce."""

    partition: str
    exact_key: str
    query_text: str
    tenant: str
    model: str
    answer_text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    tier: str
    created_at_s: float
    expires_at_s: float
    similarity: float = 1.0
    """Cosine similarity to the query that found it (1.0 for an exact hit)."""

    def to_payload(self) -> dict[str, Any]:
        payload = dataclasses.asdict(self)
        del payload["similarity"]  # a property of a lookup, not of the entry
        return payload

    @classmethod
    def from_payload(cls, payload: Mapping[str, Any], *, similarity: float) -> StoredAnswer:
        fields = {field.name for field in dataclasses.fields(cls)} - {"similarity"}
        return cls(**{name: payload[name] for name in fields}, similarity=similarity)


class CacheStore(Protocol):
    """Vectors of past questions with their answers, searched inside one partition."""

    def search(
        self, vector: list[float], *, partition: str, threshold: float, now_s: float
    ) -> StoredAnswer | None:
        """The most similar unexpired entry of `partition` with cosine >= threshold."""
        ...

    def get_exact(self, exact_key: str, *, now_s: float) -> StoredAnswer | None:
        """The unexpired entry stored for exactly this request."""
        ...

    def upsert(self, vector: list[float], entry: StoredAnswer) -> None: ...

    def delete_matching(self, *, tenant: str | None, model: str | None) -> int:
        """Delete the entries of one tenant and/or one model (all when both are None)."""
        ...

    def purge_expired(self, now_s: float) -> int:
        """Delete expired entries; returns how many were deleted."""
        ...

    def count(self) -> int: ...

    def close(self) -> None: ...


def point_id(exact_key: str) -> str:
    """Deterministic point id, so the same request always overwrites its own entry."""
    return str(uuid.uuid5(_POINT_ID_NAMESPACE, exact_key))


def store_errors(method: Callable[_P, _R]) -> Callable[_P, _R]:
    """Re-raise backend failures as CacheStoreError so callers can fail open on one type.

    The backends raise bare `Exception` (qdrant_edge), `RuntimeError` (closed local client)
    or network errors (qdrant-client), so there is no narrower class to catch here.
    """

    @functools.wraps(method)
    def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        try:
            return method(*args, **kwargs)
        except CacheStoreError:
            raise
        except Exception as e:
            raise CacheStoreError(f"{method.__qualname__} failed: {e}") from e

    return wrapper


def ensure_open(client: _C | None) -> _C:
    if client is None:
        raise CacheStoreError("cache store is closed")
    return client


def live_exact_match(records: list[Any], exact_key: str, now_s: float) -> StoredAnswer | None:
    """The retrieved entry if it really is this request's and has not expired."""
    for record in records:
        payload = record.payload or {}
        # Comparing the key guards against a (vanishingly unlikely) uuid5 collision.
        if payload.get("exact_key") == exact_key and payload.get("expires_at_s", 0.0) > now_s:
            return StoredAnswer.from_payload(payload, similarity=1.0)
    return None
