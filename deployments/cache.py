"""The cache's two deployments: `Embedder` (autoscaled, batched) and `SemanticCache` (owns the store)."""

from __future__ import annotations

import asyncio
from typing import Any

from ray import serve

from serving.cache.embedder import SentenceTransformerEmbedder, ServeEmbedder
from serving.cache.factory import open_store
from serving.cache.keys import CacheKey
from serving.cache.semantic import CachedAnswer, CacheLookup, SemanticCache
from serving.cache.store import Selector
from serving.config import AppConfig, EmbedderConfig
from serving.metrics import ServeMetrics


@serve.deployment(name="Embedder")
class Embedder:
    """Sentence embeddings; concurrent single-text calls are embedded together (`@serve.batch`)."""

    def __init__(self, model_path: str, config: EmbedderConfig) -> None:
        self.embedder = SentenceTransformerEmbedder(model_path, device=config.device,
                                                    torch_threads=config.torch_threads)
        if self.embedder.dimension != config.dimension:
            raise ValueError(f"{config.model} makes {self.embedder.dimension}-d vectors; "
                             f"cache.embedder.dimension says {config.dimension}")
        self.embed.set_max_batch_size(config.max_batch_size)
        self.embed.set_batch_wait_timeout_s(config.batch_wait_timeout_s)

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.005)
    async def embed(self, texts: list[str]) -> list[list[float]]:
        return await self.embedder.embed(texts)


@serve.deployment(name="SemanticCache")
class SemanticCacheDeployment:
    """Holds one `SemanticCache` (and its store); sweeps expired entries in the background."""

    def __init__(self, embedder: Any, config: AppConfig) -> None:
        store = open_store(config.cache, config.cache_store_path())
        self.cache = SemanticCache(store, ServeEmbedder(embedder, config.cache.embedder.dimension), config.cache,
                                   metrics=ServeMetrics())
        self.sweep_interval_s = config.cache.sweep_interval_s
        self._sweeper: asyncio.Task | None = None

    def _ensure_sweeper(self) -> None:
        # Started from a request, where the replica's event loop is running.
        if self._sweeper is None or self._sweeper.done():
            self._sweeper = asyncio.get_running_loop().create_task(self.cache.sweep_forever(self.sweep_interval_s))

    async def lookup(self, key: CacheKey) -> CacheLookup:
        self._ensure_sweeper()
        return await self.cache.lookup(key)

    async def admit(self, key: CacheKey, answer: CachedAnswer, *, vector: list[float] | None = None,
                    ttl_s: float | None = None, tags: list[str] | None = None) -> str:
        self._ensure_sweeper()
        return await self.cache.admit(key, answer, vector=vector, ttl_s=ttl_s, tags=tags)

    async def invalidate(self, selector: Selector) -> int:
        return await self.cache.invalidate(selector)

    async def sweep(self) -> int:
        return await self.cache.sweep()

    async def stats(self) -> dict[str, Any]:
        return await self.cache.stats()

    def __del__(self) -> None:
        # Serve calls this on graceful shutdown: flush and release the store's folder lock.
        if self._sweeper is not None:
            self._sweeper.cancel()
        self.cache.close_now()
