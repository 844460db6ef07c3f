"""The semantic cache: answer what was already answered, never a wrong answer.

Reading order: `keys` (when two requests are the same question), `guards` (cheap vetoes
of semantic hits whose meaning may differ), `policy` (what may be looked up and admitted),
`store` (the `VectorStore` interface and its entries) with `edge` (Qdrant in-process) and
`qdrant_server` (qdrant-client), `embedder`, and `semantic` (the `SemanticCache` itself).
`client` is the ingress's side of the cache deployment.
"""

from serving.cache.keys import CacheKey, cache_key
from serving.cache.semantic import CachedAnswer, CacheLookup, ResponseCache, SemanticCache
from serving.cache.store import CacheEntry, Selector, StoreError, VectorStore

__all__ = [
    "CacheEntry",
    "CacheKey",
    "CacheLookup",
    "CachedAnswer",
    "ResponseCache",
    "Selector",
    "SemanticCache",
    "StoreError",
    "VectorStore",
    "cache_key",
]
