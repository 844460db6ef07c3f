"""`EdgeStore`: the Qdrant engine inside this process (qdrant-edge-py).

Filtered search runs in Qdrant's Rust engine with payload indexes (about a millisecond at
tens of thousands of entries), where qdrant-client's local mode filters in Python. The
shard is persisted in its folder (write-ahead log), so entries survive a restart; the
folder is locked by the process that opened it, hence one cache replica in this mode.
API notes: docs/notes/qdrant-edge.md.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from serving.cache.store import (
    FLOAT_FIELDS,
    KEYWORD_FIELDS,
    CacheEntry,
    Condition,
    Match,
    Selector,
    StoreError,
    VectorStore,
    match_conditions,
    selector_conditions,
)


class EdgeStore(VectorStore):
    """A persistent qdrant-edge shard in `path` holding `dimension`-d cosine vectors."""

    def __init__(self, path: str | Path, dimension: int, *, open_timeout_s: float = 30.0) -> None:
        import qdrant_edge as q

        self._q = q
        self.path = Path(path)
        self.dimension = dimension
        self._shard = self._open(open_timeout_s)

    def _open(self, timeout_s: float):
        q = self._q
        self.path.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                if (self.path / "edge_config.json").exists():
                    shard = q.EdgeShard.load(str(self.path))
                else:
                    config = q.EdgeConfig(
                        vectors=q.EdgeVectorParams(size=self.dimension, distance=q.Distance.Cosine),
                        # One search thread: the cache shares small machines with the engines.
                        max_search_threads=1,
                    )
                    shard = q.EdgeShard.create(str(self.path), config)
                break
            except Exception as exc:
                # A replica being replaced may still hold the folder's lock for a moment.
                if "WouldBlock" not in str(exc) or time.monotonic() > deadline:
                    raise StoreError(f"cannot open the cache store at {self.path}: {exc}") from exc
                time.sleep(0.5)
        schema = shard.info().payload_schema
        for name in KEYWORD_FIELDS + FLOAT_FIELDS:
            if name not in schema:
                kind = q.PayloadSchemaType.Keyword if name in KEYWORD_FIELDS else q.PayloadSchemaType.Float
                shard.update(q.UpdateOperation.create_field_index(name, kind))
        return shard

    # -- filters ----------------------------------------------------------------------

    def _filter(self, conditions: list[Condition]):
        """Our conditions as a qdrant-edge `Filter` (None when there are none)."""
        q = self._q
        must = []
        for c in conditions:
            fields = [
                q.FieldCondition(key=k, match=q.MatchValue(c.value)) if c.op == "eq"
                else q.FieldCondition(key=k, range=q.RangeFloat(**{c.op: c.value}))
                for k in c.keys
            ]
            must.append(fields[0] if len(fields) == 1 else q.Filter(should=fields))
        return q.Filter(must=must) if must else None

    # -- VectorStore ------------------------------------------------------------------

    def get(self, ids: list[str]) -> list[CacheEntry]:
        return [CacheEntry.from_payload(r.payload) for r in self._shard.retrieve(ids, True, False)]

    def search(self, vector: list[float], match: Match, limit: int, threshold: float) -> list[tuple[CacheEntry, float]]:
        q = self._q
        points = self._shard.query(q.QueryRequest(
            query=q.Query.Nearest(list(vector)), filter=self._filter(match_conditions(match)), limit=limit,
            with_payload=True, with_vector=False,
            score_threshold=threshold,
        ))
        return [(CacheEntry.from_payload(p.payload), float(p.score)) for p in points]

    def upsert(self, entries: list[tuple[CacheEntry, list[float]]]) -> None:
        q = self._q
        points = [q.Point(e.id, list(v), e.payload()) for e, v in entries]
        self._shard.update(q.UpdateOperation.upsert_points(points))

    def record_hit(self, entry: CacheEntry, now: float) -> None:
        entry.hits += 1
        entry.last_hit_at = now
        self._shard.update(self._q.UpdateOperation.set_payload([entry.id], {"hits": entry.hits, "last_hit_at": now}))

    def set_fields(self, entry_id: str, fields: dict[str, Any]) -> None:
        self._shard.update(self._q.UpdateOperation.set_payload([entry_id], dict(fields)))

    def delete(self, selector: Selector) -> int:
        q = self._q
        conditions = selector_conditions(selector)
        n = self._shard.count(q.CountRequest(exact=True, filter=self._filter(conditions)))
        if n:
            # delete_points_by_filter needs a filter: with none given, one that every entry matches.
            flt = self._filter(conditions or [Condition(("created_at",), "gte", 0.0)])
            self._shard.update(q.UpdateOperation.delete_points_by_filter(flt))
        return n

    def delete_ids(self, ids: list[str]) -> None:
        if ids:
            self._shard.update(self._q.UpdateOperation.delete_points(ids))

    def count(self, namespace: str | None = None) -> int:
        flt = self._filter(selector_conditions(Selector(namespace=namespace)))
        return self._shard.count(self._q.CountRequest(exact=True, filter=flt))

    def namespaces(self) -> dict[str, int]:
        facets = self._shard.facet(self._q.FacetRequest("namespace", limit=10_000, exact=True))
        # Deleted values linger in the facet with count 0.
        return {str(h.value): int(h.count) for h in facets.hits if h.count}

    def least_recently_hit(self, namespace: str, n: int) -> list[str]:
        q = self._q
        records, _ = self._shard.scroll(q.ScrollRequest(
            limit=n, filter=self._filter(selector_conditions(Selector(namespace=namespace))), with_payload=False,
            order_by=q.OrderBy("last_hit_at", q.Direction.Asc),
        ))
        return [str(r.id) for r in records]

    def flush(self) -> None:
        self._shard.flush()

    def close(self) -> None:
        self._shard.flush()
        self._shard.close()
