"""The vector store behind the semantic cache: one interface, Qdrant underneath.

`VectorStore` is the swappable backend (chosen by `cache.backend`):

* `EdgeStore` (`serving.cache.edge`) — the Qdrant engine in-process (qdrant-edge-py),
  persisted in a folder that one process owns;
* `QdrantServerStore` (`serving.cache.qdrant_server`) — a Qdrant server through
  qdrant-client (also its `:memory:` and folder local modes, for tests and comparisons).

Every entry is one point: the embedding of its question and a payload holding the answer
and its provenance (`CacheEntry`). The point id is derived from the exact key, so writing
the same request twice replaces one entry instead of adding a second.

Store methods are synchronous (both Qdrant bindings are); `SemanticCache` calls them from
one worker thread, which also serialises writers.
"""

from __future__ import annotations

import uuid
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from typing import Any

# Payload fields filtered on exactly (keyword indexes) and by range (float indexes).
# `lookup` is "semantic" or "exact" (a keyword: qdrant-edge 0.9.0 does not match bool payloads).
KEYWORD_FIELDS = ("namespace", "model", "engine_model", "fingerprint", "context", "params", "tags", "lookup")
FLOAT_FIELDS = ("created_at", "expires_at", "last_hit_at")


def entry_id(exact: str) -> str:
    """The point id of the entry with exact key `exact` (a sha256 hex digest): a UUID."""
    return str(uuid.UUID(exact[:32]))


@dataclass
class CacheEntry:
    """One cached answer and where it came from."""

    namespace: str
    model: str  # the routing model asked for ('auto', 'scout', 'validator')
    fingerprint: str  # the engines behind the route: a model change invalidates implicitly
    exact: str
    context: str
    params: str
    question: str | None  # None: only exact hits are possible (semantic False)
    answer: str
    finish_reason: str | None
    prompt_tokens: int
    completion_tokens: int
    tier: str  # who produced it: 'scout' or 'validator'
    engine_model: str  # the engine model that produced it
    confidence: float | None
    created_at: float
    expires_at: float
    last_hit_at: float
    hits: int = 0
    tags: list[str] = field(default_factory=list)
    # Learned from audits (vCache's per-entry thresholds, in their simplest form): a semantic hit from this entry
    # that an audit found wrong at this cosine similarity (threshold rule) or verifier score (verifier rule) means
    # it serves only above it from then on. None: no failed audit yet.
    min_similarity: float | None = None
    min_score: float | None = None

    @property
    def id(self) -> str:
        return entry_id(self.exact)

    @property
    def semantic(self) -> bool:
        return self.question is not None

    def payload(self) -> dict[str, Any]:
        """The point payload."""
        return {**asdict(self), "lookup": "semantic" if self.semantic else "exact"}

    @classmethod
    def from_payload(cls, payload: dict[str, Any]) -> CacheEntry:
        known = cls.__dataclass_fields__
        return cls(**{k: v for k, v in payload.items() if k in known})

    def provenance(self) -> dict[str, Any]:
        """What a hit reports about the entry it was served from."""
        return {
            "entry_id": self.id, "namespace": self.namespace, "tier": self.tier, "model": self.engine_model,
            "confidence": self.confidence, "created_at": self.created_at, "hits": self.hits,
        }


@dataclass(frozen=True)
class Selector:
    """Which entries an invalidation removes. Set fields are combined with AND; none set: all."""

    namespace: str | None = None
    model: str | None = None  # matches the routing model or the engine model
    older_than: float | None = None  # created_at < this (epoch seconds)
    tag: str | None = None
    expired_at: float | None = None  # expires_at <= this

    def is_all(self) -> bool:
        return all(v is None for v in asdict(self).values())


@dataclass(frozen=True)
class Match:
    """What a semantic search must match exactly, besides similarity."""

    namespace: str
    model: str
    fingerprint: str
    context: str
    params: str
    now: float  # entries with expires_at <= now are never returned


@dataclass(frozen=True)
class Condition:
    """One filter condition, independent of the Qdrant binding: any of `keys` satisfies `op` `value`.

    `op` is "eq" (keyword match) or a range bound: "lt", "lte", "gt", "gte".
    """

    keys: tuple[str, ...]
    op: str
    value: str | float


def selector_conditions(s: Selector) -> list[Condition]:
    """The conditions (all must hold) of an invalidation; empty: every entry."""
    out = []
    if s.namespace is not None:
        out.append(Condition(("namespace",), "eq", s.namespace))
    if s.model is not None:
        out.append(Condition(("model", "engine_model"), "eq", s.model))
    if s.tag is not None:
        out.append(Condition(("tags",), "eq", s.tag))
    if s.older_than is not None:
        out.append(Condition(("created_at",), "lt", s.older_than))
    if s.expired_at is not None:
        out.append(Condition(("expires_at",), "lte", s.expired_at))
    return out


def match_conditions(m: Match) -> list[Condition]:
    """The conditions (all must hold) a semantic candidate meets besides similarity."""
    return [
        Condition(("lookup",), "eq", "semantic"),
        *(Condition((k,), "eq", getattr(m, k)) for k in ("namespace", "model", "fingerprint", "context", "params")),
        Condition(("expires_at",), "gt", m.now),
    ]


class StoreError(Exception):
    """The store failed; the cache treats it as a miss (the request bypasses the cache)."""


class VectorStore(ABC):
    """Where cache entries and their question embeddings live."""

    dimension: int

    @abstractmethod
    def get(self, ids: list[str]) -> list[CacheEntry]:
        """Entries by id (missing ids are left out)."""

    @abstractmethod
    def search(self, vector: list[float], match: Match, limit: int, threshold: float) -> list[tuple[CacheEntry, float]]:
        """Entries matching `match` with cosine similarity >= threshold, most similar first."""

    @abstractmethod
    def upsert(self, entries: list[tuple[CacheEntry, list[float]]]) -> None:
        """Write entries with their vectors (an existing id is replaced)."""

    @abstractmethod
    def record_hit(self, entry: CacheEntry, now: float) -> None:
        """Count a hit on `entry` and make it the most recently hit."""

    @abstractmethod
    def set_fields(self, entry_id: str, fields: dict[str, Any]) -> None:
        """Overwrite some of an entry's payload fields (its vector and the others stay)."""

    @abstractmethod
    def delete(self, selector: Selector) -> int:
        """Delete the selected entries; return how many there were."""

    @abstractmethod
    def delete_ids(self, ids: list[str]) -> None:
        """Delete entries by id."""

    @abstractmethod
    def count(self, namespace: str | None = None) -> int:
        """Entries in `namespace` (or in all)."""

    @abstractmethod
    def namespaces(self) -> dict[str, int]:
        """Entries per namespace."""

    @abstractmethod
    def least_recently_hit(self, namespace: str, n: int) -> list[str]:
        """Ids of the `n` entries of `namespace` hit least recently (never hit: oldest first)."""

    def flush(self) -> None:  # noqa: B027 - optional hook
        """Make writes durable (where the backend buffers them)."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release the store (its folder lock, its connections)."""
