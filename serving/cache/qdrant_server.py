"""`QdrantServerStore`: a Qdrant collection through qdrant-client.

For clusters: a Qdrant server (`url`, `api_key`) shared by many cache replicas. The same
class opens qdrant-client's local modes (`":memory:"`, or a folder), which unit tests and
the store benchmark use; local mode filters in Python and is not meant for serving.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from serving.cache.store import (
    FLOAT_FIELDS,
    KEYWORD_FIELDS,
    CacheEntry,
    Condition,
    Match,
    Selector,
    VectorStore,
    match_conditions,
    selector_conditions,
)


class QdrantServerStore(VectorStore):
    """A collection of `dimension`-d cosine vectors on a Qdrant server (or in local mode).

    Give `url` (server, with `api_key` if it needs one), or `location=":memory:"`, or `path`.
    """

    def __init__(
        self,
        dimension: int,
        *,
        url: str | None = None,
        api_key: str | None = None,
        location: str | None = None,
        path: str | Path | None = None,
        collection: str = "infopt_cache",
        timeout_s: float = 5.0,
    ) -> None:
        from qdrant_client import QdrantClient, models

        self._m = models
        self.dimension = dimension
        self.collection = collection
        if url is not None:
            self._client = QdrantClient(url=url, api_key=api_key, timeout=int(max(timeout_s, 1)))
        elif path is not None:
            self._client = QdrantClient(path=str(path))
        else:
            self._client = QdrantClient(location or ":memory:")
        if not self._client.collection_exists(collection):
            self._client.create_collection(
                collection, vectors_config=models.VectorParams(size=dimension, distance=models.Distance.COSINE)
            )
            with warnings.catch_warnings():
                # Local mode ignores payload indexes (and says so); a server uses them.
                warnings.simplefilter("ignore")
                for name in KEYWORD_FIELDS + FLOAT_FIELDS:
                    schema = (models.PayloadSchemaType.KEYWORD if name in KEYWORD_FIELDS
                              else models.PayloadSchemaType.FLOAT)
                    self._client.create_payload_index(collection, name, field_schema=schema)

    # -- filters ----------------------------------------------------------------------

    def _filter(self, conditions: list[Condition]):
        """Our conditions as a qdrant-client `Filter` (an empty one matches everything)."""
        m = self._m
        must = []
        for c in conditions:
            fields = [
                m.FieldCondition(key=k, match=m.MatchValue(value=c.value)) if c.op == "eq"
                else m.FieldCondition(key=k, range=m.Range(**{c.op: c.value}))
                for k in c.keys
            ]
            must.append(fields[0] if len(fields) == 1 else m.Filter(should=fields))
        return m.Filter(must=must)

    # -- VectorStore ------------------------------------------------------------------

    def get(self, ids: list[str]) -> list[CacheEntry]:
        records = self._client.retrieve(self.collection, ids=ids, with_payload=True, with_vectors=False)
        return [CacheEntry.from_payload(r.payload or {}) for r in records]

    def search(self, vector: list[float], match: Match, limit: int, threshold: float) -> list[tuple[CacheEntry, float]]:
        points = self._client.query_points(
            self.collection, query=list(vector), query_filter=self._filter(match_conditions(match)), limit=limit,
            with_payload=True,
            score_threshold=threshold,
        ).points
        return [(CacheEntry.from_payload(p.payload or {}), float(p.score)) for p in points]

    def upsert(self, entries: list[tuple[CacheEntry, list[float]]]) -> None:
        points = [self._m.PointStruct(id=e.id, vector=list(v), payload=e.payload()) for e, v in entries]
        self._client.upsert(self.collection, points=points, wait=True)

    def record_hit(self, entry: CacheEntry, now: float) -> None:
        entry.hits += 1
        entry.last_hit_at = now
        self._client.set_payload(self.collection, payload={"hits": entry.hits, "last_hit_at": now},
                                 points=[entry.id], wait=True)

    def set_fields(self, entry_id: str, fields: dict[str, Any]) -> None:
        self._client.set_payload(self.collection, payload=dict(fields), points=[entry_id], wait=True)

    def delete(self, selector: Selector) -> int:
        flt = self._filter(selector_conditions(selector))
        n = self._client.count(self.collection, count_filter=flt, exact=True).count
        if n:
            self._client.delete(self.collection, points_selector=self._m.FilterSelector(filter=flt), wait=True)
        return n

    def delete_ids(self, ids: list[str]) -> None:
        if ids:
            self._client.delete(self.collection, points_selector=self._m.PointIdsList(points=ids), wait=True)

    def count(self, namespace: str | None = None) -> int:
        flt = self._filter(selector_conditions(Selector(namespace=namespace)))
        return self._client.count(self.collection, count_filter=flt, exact=True).count

    def namespaces(self) -> dict[str, int]:
        hits = self._client.facet(self.collection, "namespace", limit=10_000, exact=True).hits
        return {str(h.value): int(h.count) for h in hits if h.count}

    def least_recently_hit(self, namespace: str, n: int) -> list[str]:
        m = self._m
        records, _ = self._client.scroll(
            self.collection, scroll_filter=self._filter(selector_conditions(Selector(namespace=namespace))), limit=n,
            order_by=m.OrderBy(key="last_hit_at", direction=m.Direction.ASC), with_payload=False,
        )
        return [str(r.id) for r in records]

    def close(self) -> None:
        self._client.close()
