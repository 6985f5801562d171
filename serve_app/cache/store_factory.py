"""Opens the cache store a CacheConfig selects."""

from __future__ import annotations

import os

from serve_app.cache.edge_store import EdgeCacheStore
from serve_app.cache.server_store import QdrantServerCacheStore
from serve_app.cache.store import CacheStore
from serve_app.config import CacheConfig


def make_cache_store(config: CacheConfig, dim: int) -> CacheStore:
    """The store `config` selects, opened and ready for `dim`-dimensional vectors."""
    if config.store == "edge":
        path = config.edge_path
        return EdgeCacheStore(os.path.expandvars(os.path.expanduser(path)) if path else None, dim)
    if config.qdrant_url is None:
        raise ValueError("cache.qdrant_url is required when cache.store is 'qdrant'")
    return QdrantServerCacheStore(
        config.qdrant_url, _api_key(config), collection=config.collection, dim=dim
    )


def _api_key(config: CacheConfig) -> str | None:
    if config.qdrant_api_key_env is None:
        return None
    api_key = os.environ.get(config.qdrant_api_key_env)
    if not api_key:
        # Connecting without the key would fail every lookup later; say why now.
        raise ValueError(
            f"cache.qdrant_api_key_env names {config.qdrant_api_key_env}, which is not set"
        )
    return api_key
