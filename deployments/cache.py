"""The cache's two deployments: `Embedder` (autoscaled, batched) and `SemanticCache` (owns the store)."""

from __future__ import annotations

import asyncio
from typing import Any

from ray import serve

from serving.cache.embedder import SentenceTransformerEmbedder
from serving.cache.factory import open_store
from serving.cache.keys import CacheKey
from serving.cache.semantic import CachedAnswer, CacheLookup, SemanticCache
from serving.cache.store import Selector
from serving.cache.verifier import open_verifier
from serving.config import AdaptiveBatchingConfig, AppConfig, EmbedderConfig
from serving.handles import ServeEmbedder
from serving.load.batching import AdaptiveBatching
from serving.metrics import ServeMetrics


@serve.deployment(name="Embedder")
class Embedder:
    """Sentence embeddings; concurrent single-text calls are embedded together (`@serve.batch`).

    Batch size and wait adapt to the arrival rate (`serving.load.batching`, configured by
    `load.batching`); `cache.embedder.max_batch_size` and `batch_wait_timeout_s` are their ceilings.
    """

    def __init__(self, model_path: str, config: EmbedderConfig, batching: AdaptiveBatchingConfig | None = None) -> None:
        self.embedder = SentenceTransformerEmbedder(model_path, device=config.device,
                                                    torch_threads=config.torch_threads)
        if self.embedder.dimension != config.dimension:
            raise ValueError(f"{config.model} makes {self.embedder.dimension}-d vectors; "
                             f"cache.embedder.dimension says {config.dimension}")
        metrics = ServeMetrics()
        self.batching = AdaptiveBatching(
            self._embed_batch, config.max_batch_size, config.batch_wait_timeout_s, batching,
            on_change=lambda p: metrics.batch_params("Embedder", p.max_batch_size, p.batch_wait_timeout_s),
        )

    async def embed(self, text: str) -> list[float]:
        """One text's embedding (the handle's entry point: measures arrivals, then joins a batch)."""
        self.batching.on_request()
        return await self._embed_batch(text)

    async def batching_state(self) -> dict[str, float]:
        """Measured arrival rate and the batch parameters in force (for dashboards and tests)."""
        return self.batching.state()

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.005)
    async def _embed_batch(self, texts: list[str]) -> list[list[float]]:
        return await self.embedder.embed(texts)


@serve.deployment(name="SemanticCache")
class SemanticCacheDeployment:
    """Holds one `SemanticCache` (and its store); sweeps expired entries in the background."""

    def __init__(self, embedder: Any, config: AppConfig, engines: dict[str, Any] | None = None) -> None:
        store = open_store(config.cache, config.cache_store_path())
        # `engines`: the cascade engine the verifier asks, when `cache.verifier.model` names one.
        verifier, self.verifier_state = open_verifier(config.cache.verifier, config.cache_dir, engines)
        self.cache = SemanticCache(store, ServeEmbedder(embedder, config.cache.embedder.dimension), config.cache,
                                   metrics=ServeMetrics(), verifier=verifier)
        self.sweep_interval_s = config.cache.sweep_interval_s
        self._sweeper: asyncio.Task | None = None

    def _ensure_sweeper(self) -> None:
        # Started from a request, where the replica's event loop is running.
        if self._sweeper is None or self._sweeper.done():
            self._sweeper = asyncio.get_running_loop().create_task(self.cache.sweep_forever(self.sweep_interval_s))

    async def lookup(self, key: CacheKey, *, vector: list[float] | None = None) -> CacheLookup:
        self._ensure_sweeper()
        return await self.cache.lookup(key, vector=vector)

    async def admit(self, key: CacheKey, answer: CachedAnswer, *, vector: list[float] | None = None,
                    ttl_s: float | None = None, tags: list[str] | None = None) -> str:
        self._ensure_sweeper()
        return await self.cache.admit(key, answer, vector=vector, ttl_s=ttl_s, tags=tags)

    async def invalidate(self, selector: Selector) -> int:
        return await self.cache.invalidate(selector)

    async def raise_bound(self, entry_id: str, *, similarity: float | None = None, score: float | None = None
                          ) -> bool:
        self._ensure_sweeper()
        return await self.cache.raise_bound(entry_id, similarity=similarity, score=score)

    async def sweep(self) -> int:
        return await self.cache.sweep()

    async def stats(self) -> dict[str, Any]:
        return {**await self.cache.stats(), "verifier_state": self.verifier_state}

    def __del__(self) -> None:
        # Serve calls this on graceful shutdown: flush and release the store's folder lock.
        if self._sweeper is not None:
            self._sweeper.cancel()
        self.cache.close_now()
