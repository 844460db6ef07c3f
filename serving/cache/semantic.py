"""The semantic cache: exact and semantic lookup, guarded hits, admission, freshness, size.

`ResponseCache` is what the request path talks to; `SemanticCache` implements it over a
`VectorStore` and an `Embedder` (the `SemanticCache` deployment holds one, the ingress
talks to it through `serving.handles.ServeResponseCache`).

Lookup, in order:

1. **exact** — the entry whose id is derived from the request's exact key (same namespace,
   model, messages and output-changing parameters). No embedding, no guard.
2. **semantic** — the compared question is embedded (or the analyzer's vector reused); the
   store returns the nearest entries among those with the *same* namespace, model,
   engines, context digest (system prompt + earlier turns) and parameters, not expired.
   Each candidate, most similar first, is judged by the cache policy
   (`serving.policy.cache.judge_candidate`: the similarity threshold, then the guards); a
   vetoed candidate is counted and the next one tried.
   With a pair verifier (`serving.cache.verifier`), the search reaches down to the verifier's
   proposal floor; the candidates the guards let through (at most `verifier.max_pairs`, most
   similar first) are scored together, and the best one is served when its score passes
   (`policy.judge_verified`). The verifier degrades, never fails: a verifier that times out or
   raises makes the lookup a miss (with its near miss), and `rule` in the result says which rule
   decided: `exact`, `threshold`, `verifier`, `verifier_timeout` or `verifier_error`.
   An entry an audit caught serving a wrong answer carries its own bound (`min_similarity`,
   `min_score`: vCache's per-entry thresholds, learned from outcomes): it serves only above the
   similarity or score it failed at (`raise_bound`; the candidate's reason is `audited`).
3. **near miss** — on a miss, the most similar candidate the policy judged a near miss
   (similarity >= `draft_threshold`, not served: too far, or vetoed) comes back as `draft`: the
   Validator can verify it instead of starting from nothing (`serving.verify`), which is
   safe whatever the draft says, since only what the Validator itself would write is kept.

Expired entries are never returned (the search filters on `expires_at`) and are deleted by
`sweep()`. When a namespace holds more than `max_entries_per_namespace` entries, the least
recently hit are evicted on admission.
"""

from __future__ import annotations

import asyncio
import logging
import time
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from serving.cache.embedder import Embedder
from serving.cache.keys import CacheKey
from serving.cache.store import CacheEntry, Match, Selector, VectorStore, entry_id
from serving.cache.verifier import PairVerifier, VerifierBusy
from serving.config.cache import CacheConfig
from serving.engines.base import Usage
from serving.metrics import Metrics
from serving.policy import cache as policy

T = TypeVar("T")
logger = logging.getLogger(__name__)


@dataclass
class CachedAnswer:
    """An answer offered for admission, with who produced it."""

    text: str
    finish_reason: str | None
    prompt_tokens: int
    completion_tokens: int
    tier: str
    engine_model: str
    confidence: float | None = None


@dataclass
class CheckCost:
    """A cascade engine's work on one lookup's cross-checks: booked to that tier by the cache stage."""

    tier: str  # "validator" or "scout"
    usage: Usage
    seconds: float  # wall time of the lookup's cross-checks (run concurrently), as the pipeline times engine calls


@dataclass
class CacheLookup:
    """The outcome of a lookup. On a miss, `vector` is kept so admission need not embed again."""

    decision: Literal["exact_hit", "semantic_hit", "miss"]
    entry: CacheEntry | None = None
    similarity: float | None = None
    vector: list[float] | None = None
    # Semantic candidates above the threshold that a guard vetoed: [{"reason", "similarity"}].
    rejected: list[dict[str, Any]] = field(default_factory=list)
    # On a miss: the near miss to verify as a draft (see the module docstring), and its similarity.
    draft: CacheEntry | None = None
    draft_similarity: float | None = None
    # Which rule decided (see the module docstring), and the verifier's score of the served or best candidate.
    rule: str | None = None
    score: float | None = None
    # What a cascade engine spent cross-checking the candidates (`PairVerifier.tier`), for the request's cost.
    check: CheckCost | None = None

    @property
    def hit(self) -> bool:
        return self.entry is not None


class ResponseCache(ABC):
    """A cache of final answers, consulted before generation and fed after it."""

    @abstractmethod
    async def lookup(self, key: CacheKey, *, vector: list[float] | None = None) -> CacheLookup:
        """Find an answer for `key` (exact, then semantic).

        `vector` is `key.question` already embedded by the same embedder (the request
        analyzer's), so the semantic lookup need not embed it again.
        """

    @abstractmethod
    async def admit(self, key: CacheKey, answer: CachedAnswer, *, vector: list[float] | None = None,
                    ttl_s: float | None = None, tags: list[str] | None = None) -> str:
        """Store `answer` for `key`; return the entry id."""

    @abstractmethod
    async def invalidate(self, selector: Selector) -> int:
        """Delete the selected entries; return how many."""

    @abstractmethod
    async def stats(self) -> dict[str, Any]:
        """Entries per namespace and this cache's counters."""

    @abstractmethod
    async def raise_bound(self, entry_id: str, *, similarity: float | None = None, score: float | None = None
                          ) -> bool:
        """An audit found a semantic hit from `entry_id` wrong at this similarity (threshold rule) or verifier
        score (verifier rule): from now on the entry serves only above it. False when the entry is gone."""


class SemanticCache(ResponseCache):
    """`ResponseCache` over a vector store and an embedder (see the module docstring)."""

    def __init__(
        self,
        store: VectorStore,
        embedder: Embedder,
        config: CacheConfig,
        *,
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.time,
        verifier: PairVerifier | None = None,
    ) -> None:
        if store.dimension != embedder.dimension:
            raise ValueError(f"store holds {store.dimension}-d vectors, the embedder makes {embedder.dimension}-d")
        self.store = store
        self.embedder = embedder
        self.config = config
        self.metrics = metrics or Metrics()
        self.clock = clock
        self.verifier = verifier
        self.counters: Counter[str] = Counter()
        # One thread for every store call: the bindings block (and hold the GIL), and one
        # writer at a time keeps read-modify-write steps (hits, eviction) consistent.
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cache-store")

    async def _store(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    def _count(self, event: str, reason: str = "", n: int = 1) -> None:
        self.counters[f"{event}:{reason}" if reason else event] += n
        self.metrics.cache_event(event, reason, n)

    # -- lookup ---------------------------------------------------------------------------

    async def lookup(self, key: CacheKey, *, vector: list[float] | None = None) -> CacheLookup:
        t0 = time.perf_counter()
        result = await self._lookup(key, vector)
        self.metrics.cache_lookup(result.decision, (time.perf_counter() - t0) * 1000)
        self._count(result.decision)
        return result

    async def _lookup(self, key: CacheKey, vector: list[float] | None = None) -> CacheLookup:
        now = self.clock()
        found = await self._store(self.store.get, [entry_id(key.exact)])
        if found and found[0].expires_at > now and found[0].namespace == key.namespace:
            entry = found[0]
            await self._store(self.store.record_hit, entry, now)
            return CacheLookup("exact_hit", entry, similarity=1.0, rule="exact")
        if key.question is None:
            return CacheLookup("miss")
        if vector is None or len(vector) != self.embedder.dimension:
            (vector,) = await self.embedder.embed([key.question])
        match = Match(namespace=key.namespace, model=key.model, fingerprint=key.fingerprint, context=key.context,
                      params=key.params, now=now)
        verifying = self.verifier is not None
        candidates = await self._store(self.store.search, vector, match,
                                       max(self.config.candidates, self.config.verifier.max_pairs if verifying else 0),
                                       policy.search_floor(self.config, verifying=verifying))
        if verifying:
            return await self._verify(key.question, vector, candidates, now)
        rejected: list[dict[str, Any]] = []
        near: tuple[CacheEntry, float] | None = None
        for entry, similarity in candidates:  # most similar first
            verdict, vetoed = policy.judge_candidate(self.config, similarity, entry.question or "", key.question,
                                                     entry.min_similarity)
            if vetoed is not None:
                rejected.append({"reason": vetoed, "similarity": round(similarity, 4)})
                self._count("guard_rejected", vetoed)
            if verdict is policy.Candidate.SERVE:
                await self._store(self.store.record_hit, entry, now)
                return CacheLookup("semantic_hit", entry, similarity=similarity, rejected=rejected, rule="threshold")
            if verdict is policy.Candidate.NEAR_MISS and near is None:
                near = (entry, similarity)
        return self._miss(vector, rejected, near, "threshold")

    def _miss(self, vector: list[float], rejected: list[dict[str, Any]], near: tuple[CacheEntry, float] | None,
              rule: str, score: float | None = None) -> CacheLookup:
        if near is not None:
            self._count("near_miss")
            return CacheLookup("miss", vector=vector, rejected=rejected, draft=near[0], draft_similarity=near[1],
                               rule=rule, score=score)
        return CacheLookup("miss", vector=vector, rejected=rejected, rule=rule, score=score)

    async def _verify(self, question: str, vector: list[float], candidates: list[tuple[CacheEntry, float]],
                      now: float) -> CacheLookup:
        """Propose, then verify (see the module docstring)."""
        assert self.verifier is not None
        settings = self.config.verifier
        rejected: list[dict[str, Any]] = []
        vetoes: dict[str, str | None] = {}
        proposed: list[tuple[CacheEntry, float]] = []
        for entry, similarity in candidates:  # most similar first
            if similarity < settings.propose_threshold:
                continue
            vetoes[entry.id] = policy.vetoed_by(self.config, entry.question or "", question)
            if vetoes[entry.id] is not None:
                rejected.append({"reason": vetoes[entry.id], "similarity": round(similarity, 4)})
                self._count("guard_rejected", vetoes[entry.id] or "")
            elif len(proposed) < settings.max_pairs:
                proposed.append((entry, similarity))
        scores: dict[str, float] = {}
        rule = "verifier"
        check: CheckCost | None = None
        if proposed:
            t0 = time.perf_counter()
            try:
                pairs = [(entry.question or "", question) for entry, _ in proposed]
                got, usage = await asyncio.wait_for(self.verifier.score_costed(pairs), settings.timeout_s)
                scores = {entry.id: s for (entry, _), s in zip(proposed, got, strict=True)}
                if self.verifier.tier is not None and usage is not None:
                    check = CheckCost(self.verifier.tier, usage, time.perf_counter() - t0)
            except TimeoutError:
                rule = "verifier_timeout"
            except VerifierBusy:  # still on calls that timed out: no more work queued behind them
                rule = "verifier_busy"
            except Exception:  # a broken verifier makes a miss, never a failed request
                logger.exception("the cache's verifier failed; the lookup is a miss")
                rule = "verifier_error"
            self.metrics.cache_verify(rule, len(proposed), (time.perf_counter() - t0) * 1000)
            self._count(rule)
        best = max(scores.items(), key=lambda kv: kv[1], default=None)
        near: tuple[CacheEntry, float] | None = None
        for entry, similarity in sorted(candidates, key=lambda c: -scores.get(c[0].id, -1.0)):
            verdict, why = policy.judge_verified(self.config, similarity, scores.get(entry.id), vetoes.get(entry.id),
                                                 entry.min_score)
            if why == policy.AUDITED:  # the guards' vetoes were recorded when the candidates were proposed
                rejected.append({"reason": why, "similarity": round(similarity, 4)})
                self._count("guard_rejected", why)
            if verdict is policy.Candidate.SERVE:
                await self._store(self.store.record_hit, entry, now)
                return CacheLookup("semantic_hit", entry, similarity=similarity, rejected=rejected, rule=rule,
                                   score=round(scores[entry.id], 4), check=check)
            if verdict is policy.Candidate.NEAR_MISS and (near is None or similarity > near[1]):
                near = (entry, similarity)
        found = self._miss(vector, rejected, near, rule, round(best[1], 4) if best else None)
        found.check = check
        return found

    # -- admission ------------------------------------------------------------------------

    async def admit(self, key: CacheKey, answer: CachedAnswer, *, vector: list[float] | None = None,
                    ttl_s: float | None = None, tags: list[str] | None = None) -> str:
        now = self.clock()
        if vector is None:
            if key.question is not None:
                (vector,) = await self.embedder.embed([key.question])
            else:
                # Exact-only entries are never searched (semantic=False): any unit vector will do.
                vector = [1.0] + [0.0] * (self.store.dimension - 1)
        entry = CacheEntry(
            namespace=key.namespace, model=key.model, fingerprint=key.fingerprint, exact=key.exact,
            context=key.context, params=key.params, question=key.question, answer=answer.text,
            finish_reason=answer.finish_reason, prompt_tokens=answer.prompt_tokens,
            completion_tokens=answer.completion_tokens, tier=answer.tier, engine_model=answer.engine_model,
            confidence=answer.confidence, created_at=now, expires_at=now + (ttl_s or self.config.default_ttl_s),
            last_hit_at=now, hits=0, tags=sorted(set(tags or [])),
        )
        await self._store(self._write, entry, vector)
        self._count("admitted")
        return entry.id

    def _write(self, entry: CacheEntry, vector: list[float]) -> None:
        """Upsert, then evict the least recently hit entries of the namespace beyond its cap."""
        self.store.upsert([(entry, vector)])
        excess = self.store.count(entry.namespace) - self.config.max_entries_per_namespace
        if excess > 0:
            victims = [i for i in self.store.least_recently_hit(entry.namespace, excess + 1) if i != entry.id]
            self.store.delete_ids(victims[:excess])
            self._count("evicted", n=len(victims[:excess]))

    # -- freshness and administration -----------------------------------------------------

    async def sweep(self) -> int:
        """Delete expired entries; return how many."""
        n = await self._store(self.store.delete, Selector(expired_at=self.clock()))
        if n:
            self._count("expired", n=n)
        await self._store(self.store.flush)
        return n

    async def sweep_forever(self, interval_s: float) -> None:
        """Sweep every `interval_s` seconds until cancelled; a failed sweep is logged and retried."""
        while True:
            await asyncio.sleep(interval_s)
            try:
                await self.sweep()
            except Exception:
                logger.exception("cache sweep failed")

    async def raise_bound(self, entry_id: str, *, similarity: float | None = None, score: float | None = None
                          ) -> bool:
        found = await self._store(self.store.get, [entry_id])
        if not found:
            return False
        entry, fields = found[0], {}
        if similarity is not None:
            fields["min_similarity"] = policy.raised_bound(entry.min_similarity, similarity)
        if score is not None:
            fields["min_score"] = policy.raised_bound(entry.min_score, score)
        if fields:
            await self._store(self.store.set_fields, entry_id, fields)
            self._count("bound_raised")
        return True

    async def invalidate(self, selector: Selector) -> int:
        n = await self._store(self.store.delete, selector)
        self._count("invalidated", n=n)
        return n

    async def stats(self) -> dict[str, Any]:
        namespaces = await self._store(self.store.namespaces)
        return {
            "entries": sum(namespaces.values()),
            "namespaces": namespaces,
            "backend": type(self.store).__name__,
            "similarity_threshold": self.config.similarity_threshold,
            "guards": self.config.guards,
            "rule": "verifier" if self.verifier is not None else "threshold",
            "verifier": getattr(self.verifier, "name", None),
            "max_entries_per_namespace": self.config.max_entries_per_namespace,
            "counters": dict(sorted(self.counters.items())),
        }

    async def close(self) -> None:
        """Flush and release the store."""
        await self._store(self.store.close)
        self._pool.shutdown(wait=True)

    def close_now(self, timeout_s: float = 10.0) -> None:
        """`close()` for synchronous callers (a replica's `__del__`)."""
        self._pool.submit(self.store.close).result(timeout=timeout_s)
        self._pool.shutdown(wait=False)
