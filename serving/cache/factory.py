"""Open the store that `cache.backend` names."""

from __future__ import annotations

from pathlib import Path

from serving.cache.store import VectorStore
from serving.config.cache import CacheConfig


def open_store(config: CacheConfig, default_path: Path) -> VectorStore:
    """The configured `VectorStore`: an embedded shard under `config.path` (or `default_path`), or a server."""
    if config.backend == "edge":
        from serving.cache.edge import EdgeStore

        return EdgeStore(Path(config.path or default_path) / config.collection, config.embedder.dimension)
    from serving.cache.qdrant_server import QdrantServerStore

    return QdrantServerStore(config.embedder.dimension, url=config.url, api_key=config.api_key,
                             collection=config.collection, timeout_s=config.timeout_s)
