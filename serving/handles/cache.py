"""`ServeResponseCache`: the ingress's side of the `SemanticCache` deployment."""

from __future__ import annotations

from typing import Any

from serving.cache.keys import CacheKey
from serving.cache.semantic import CachedAnswer, CacheLookup, ResponseCache
from serving.cache.store import Selector


class ServeResponseCache(ResponseCache):
    """Forwards every call to the `SemanticCache` deployment through its handle.

    Failures and timeouts are the caller's business: the cache stage turns them into a bypass.
    """

    def __init__(self, handle: Any) -> None:
        self._handle = handle

    async def lookup(self, key: CacheKey, *, vector: list[float] | None = None) -> CacheLookup:
        return await self._handle.lookup.remote(key, vector=vector)

    async def admit(self, key: CacheKey, answer: CachedAnswer, *, vector: list[float] | None = None,
                    ttl_s: float | None = None, tags: list[str] | None = None) -> str:
        return await self._handle.admit.remote(key, answer, vector=vector, ttl_s=ttl_s, tags=tags)

    async def invalidate(self, selector: Selector) -> int:
        return await self._handle.invalidate.remote(selector)

    async def stats(self) -> dict[str, Any]:
        return await self._handle.stats.remote()

    async def raise_bound(self, entry_id: str, *, similarity: float | None = None, score: float | None = None
                          ) -> bool:
        return await self._handle.raise_bound.remote(entry_id, similarity=similarity, score=score)
