"""The cache stages: look the request up before generation; offer the new answer after it.

What may be looked up, served and admitted is the cache policy's (`serving.policy.cache`);
these stages ask it, talk to the `ResponseCache`, and record. A cache problem never fails
a request: a failed or slow lookup is a ``bypass``, a failed admission is recorded and the
answer returned anyway.
"""

from __future__ import annotations

import asyncio
import time

from serving.breaker import CircuitBreaker
from serving.cache.keys import cache_key
from serving.cache.semantic import CachedAnswer, ResponseCache
from serving.config import CacheConfig
from serving.engines.base import Generation, Usage
from serving.pipeline._decisions import AdmissionDecision, CacheDecision, Reason, StageName, Tier
from serving.pipeline._stage import Stage, replay
from serving.pipeline._state import Admission, RequestState
from serving.policy import cache as policy
from serving.verify import Draft


class CacheStage(Stage):
    """Serves an exact or semantic hit; on a miss leaves what admission needs, and a near miss as a draft.

    `fingerprint` names the engines behind the routes: answers cached for other engines never match.
    """

    name = StageName.CACHE

    def __init__(self, cache: ResponseCache, config: CacheConfig, fingerprint: str,
                 semantic_closed: set[str] | None = None, breaker: CircuitBreaker | None = None) -> None:
        self.cache = cache
        self.breaker = breaker
        self.config = config
        self.fingerprint = fingerprint
        # Namespaces where the audit found semantic hits disagreeing too often: exact hits only there.
        self.semantic_closed = semantic_closed if semantic_closed is not None else set()

    async def run(self, state: RequestState) -> None:
        cfg, control = self.config, state.cache_control
        t0 = time.perf_counter()
        policy.check_ttl(control, cfg)
        reason = policy.skip_reason(state.request, control, cfg)
        if reason is None and state.strategy is not None and state.strategy.name != "greedy":
            reason = "strategy"  # it asked for several candidates and a choice, not the remembered answer
        if reason is not None:
            state.record(self.name, CacheDecision.SKIPPED, t0, reason=reason)
            return
        key = cache_key(state.request, model=state.route.value, namespace=control.namespace or cfg.default_namespace,
                        fingerprint=self.fingerprint)
        state.key = key
        admission = Admission(key, None, control.ttl_s, list(control.tags))
        if control.mode == "refresh":
            state.admission = admission
            state.record(self.name, CacheDecision.SKIPPED, t0, reason="refresh")
            return
        # The analyzer embedded this very question (`policy.embedded_question`): reuse its vector.
        vector = state.plan.embedding if state.plan is not None and key.question is not None else None
        if self.breaker is not None and not self.breaker.allow():
            state.record(self.name, CacheDecision.BYPASS, t0, error=self.breaker.describe())
            return
        try:
            found = await asyncio.wait_for(self.cache.lookup(key, vector=vector), cfg.timeout_s)
        except Exception as exc:  # whatever the cache's failure, the request goes on without it
            if self.breaker is not None:
                self.breaker.failure()
            error = f"lookup took longer than {cfg.timeout_s:g} s" if isinstance(exc, TimeoutError) \
                else f"{type(exc).__name__}: {exc}"[:300]
            state.record(self.name, CacheDecision.BYPASS, t0, error=error)
            return
        if self.breaker is not None:
            self.breaker.success()
        decision = CacheDecision(found.decision)
        detail: dict[str, object] = {"namespace": key.namespace}
        if vector is not None and decision is not CacheDecision.EXACT_HIT:
            detail["embedding"] = "analyzer"  # the semantic lookup reused it, not computed again
        if found.rejected:
            detail["guard_rejected"] = found.rejected
        if found.rule is not None and decision is not CacheDecision.EXACT_HIT:
            detail["rule"] = found.rule  # threshold, verifier, verifier_timeout or verifier_error
        if found.score is not None:
            detail["verifier_score"] = found.score
        if found.check is not None:  # a cascade engine cross-checked the candidates: its time is this request's
            state.cost.check(Tier(found.check.tier), found.check.usage, found.check.seconds)
        entry = found.entry
        if decision is CacheDecision.SEMANTIC_HIT and key.namespace in self.semantic_closed and entry is not None:
            # Not served; still the best draft there is for the Validator to verify.
            detail["semantic_closed"] = True
            decision = CacheDecision.MISS
            found.draft, found.draft_similarity, entry = entry, found.similarity, None
        if entry is None:
            admission.vector = found.vector
            state.admission = admission
            if found.draft is not None:
                state.draft = Draft(found.draft.answer, "cache", similarity=found.draft_similarity)
                detail["near_miss"] = {"similarity": round(found.draft_similarity or 0.0, 4), "entry": found.draft.id}
            state.record(self.name, decision, t0, **detail)
            return
        state.record(self.name, decision, t0, similarity=round(found.similarity or 1.0, 4),
                     entry=entry.provenance(), **detail)
        gen = Generation(text=entry.answer, finish_reason=entry.finish_reason,
                         usage=Usage(entry.prompt_tokens, entry.completion_tokens), model=entry.engine_model)
        reason_ = Reason.EXACT if decision is CacheDecision.EXACT_HIT else Reason.SEMANTIC
        state.answered(Tier.CACHE, reason_, entry.engine_model, replay(gen, False))


class AdmissionStage(Stage):
    """Offers a generated answer (`state.result`) to the cache, policy first."""

    name = StageName.ADMISSION

    def __init__(self, cache: ResponseCache, config: CacheConfig, breaker: CircuitBreaker | None = None) -> None:
        self.cache = cache
        self.config = config
        self.breaker = breaker  # the cache's, shared with the lookup

    async def run(self, state: RequestState) -> None:
        gen, admission = state.result, state.admission
        if admission is None or gen is None:
            return
        t0 = time.perf_counter()
        tier = state.tier or Tier.VALIDATOR
        answer = CachedAnswer(
            text=gen.text, finish_reason=gen.finish_reason, prompt_tokens=gen.usage.prompt_tokens,
            completion_tokens=gen.usage.completion_tokens, tier=tier.value, engine_model=gen.model,
            confidence=state.confidence if tier is Tier.SCOUT else None,
        )
        # A strategy's answer is a sampled candidate chosen by vote: not the greedy answer later requests expect.
        reason = "strategy" if state.reason is Reason.STRATEGY else policy.rejection_reason(answer, self.config)
        if reason is not None:
            state.record(self.name, AdmissionDecision.REJECTED, t0, reason=reason)
            return
        if self.breaker is not None and not self.breaker.allow():
            state.record(self.name, AdmissionDecision.FAILED, t0, error=self.breaker.describe())
            return
        try:
            entry = await asyncio.wait_for(
                self.cache.admit(admission.key, answer, vector=admission.vector, ttl_s=admission.ttl_s,
                                 tags=admission.tags),
                self.config.timeout_s,
            )
        except Exception as exc:
            if self.breaker is not None:
                self.breaker.failure()
            error = "timeout" if isinstance(exc, TimeoutError) else f"{type(exc).__name__}: {exc}"[:300]
            state.record(self.name, AdmissionDecision.FAILED, t0, error=error)
            return
        if self.breaker is not None:
            self.breaker.success()
        state.record(self.name, AdmissionDecision.ADMITTED, t0, entry_id=entry)
