"""The request path: cache, then Scout, then Validator when the Scout is not sure.

One decision per stage, each recorded in the `RouteTrace` returned with the answer:

* ``analyzer`` stage (when an analyzer is configured) — the request's `RoutePlan`
  (`serving.analyzer`): ``scout_first``, ``validator_direct`` (the Scout is predicted to
  fail: it is skipped, reason ``predicted_hard``) or ``forced``; its priority class goes to
  the engines (vLLM's priority scheduling) and orders our own queue (`PriorityGate`). A
  failed or slow analysis is ``failed``: the request takes the default path.
* ``cache`` stage (when a cache is configured) — ``exact_hit`` / ``semantic_hit`` serve
  the cached answer (tier ``cache``); ``miss`` goes on; ``skipped`` when the request may
  not use the cache (sampled, logprobs, ``cache.mode`` bypass/refresh); ``bypass`` when
  the cache failed or was too slow: a cache problem never fails a request.
* ``scout`` stage — the Scout answers with token logprobs; its confidence (see
  `serving.confidence`) is compared with the threshold: ``confident`` returns the
  Scout's answer, ``escalate`` hands over to the Validator. A Scout that fails or
  times out also escalates (``failed``): the Validator can still answer.
* ``validator`` stage — the Validator answers (``answered``), or, with
  ``tiering.verified_escalation``, verifies a draft and generates only the rest
  (``verified``, see `serving.verify`): the Scout's answer after an escalation, or a
  *near miss* of the cache — a cached answer to a question similar enough to be a draft
  (``cache.draft_threshold``) but not to be served. A near miss goes straight to the
  Validator: the Scout stage records ``skipped`` (reason ``near_miss_draft``) and the
  route's reason is ``near_miss``.
* ``admission`` stage (after a miss) — the answer is ``admitted`` to the cache, or
  ``rejected`` by the admission policy (`serving.cache.policy`), or ``failed``.
* ``coalesced`` stage — an identical request (same exact cache key: deterministic, same
  namespace, model, messages and parameters) was already being answered: this one waited
  for that answer instead of computing it again (`serving.coalesce`); route reason
  ``coalesced``, tier the one that answered. Streamed requests join a computation in
  flight too (and replay its answer); a streamed computation is not shared.

A client may force a tier with ``model: scout`` / ``model: validator``; the stage then
records ``forced``. Errors carry the trace so far (`exc.route`).

Streaming: the Validator streams token by token. The Scout's answer has to be complete
before its confidence is known, so on the Scout path the first token arrives when the
whole Scout answer is ready (then it is replayed token by token): the Scout path trades
time-to-first-token for a much shorter end-to-end time on small models.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Protocol

from serving.analyzer.profile import embedded_question
from serving.api import CacheControl, RouteTrace
from serving.cache.keys import CacheKey, cache_key, digest, is_deterministic
from serving.cache.policy import rejection_reason, skip_reason
from serving.cache.semantic import CachedAnswer, ResponseCache
from serving.confidence import confidence, describe
from serving.config import CacheConfig, TieringConfig
from serving.engines.base import Generation, GenerationChunk, GenerationRequest, LLMEngine, Usage
from serving.errors import (
    EngineTimeoutError,
    InferenceOptimizerError,
    InvalidRequestError,
    RequestError,
    ServiceError,
)
from serving.metrics import Metrics
from serving.priority import Priority, PriorityGate
from serving.verify import AcceptanceTracker, Draft, DraftOutcome, can_verify

if TYPE_CHECKING:
    from serving.analyzer import RoutePlan
    from serving.coalesce import Coalescer


class Analyzer(Protocol):
    """What plans a request: `serving.analyzer.RequestAnalyzer`, or its Serve deployment's client."""

    async def analyze(self, request: GenerationRequest, *, model: str = "auto",
                      priority: str | None = None) -> RoutePlan: ...


@dataclass
class Routed:
    """A finished answer and how it was produced."""

    generation: Generation
    trace: RouteTrace


@dataclass
class RoutedStream:
    """A streamed answer: the decision is known (so headers can be sent) before the first chunk."""

    chunks: AsyncIterator[GenerationChunk]
    trace: RouteTrace
    model: str


@dataclass
class _Admission:
    """What admitting the answer of a cache miss needs (the lookup's embedding included)."""

    key: CacheKey
    vector: list[float] | None
    ttl_s: float | None
    tags: list[str]


class TieredRouter:
    """Decides, per request, whether the Scout's answer is returned or the Validator is asked."""

    def __init__(
        self,
        scout: LLMEngine,
        validator: LLMEngine,
        tiering: TieringConfig,
        *,
        scout_timeout_s: float = 300.0,
        validator_timeout_s: float = 300.0,
        metrics: Metrics | None = None,
        cache: ResponseCache | None = None,
        cache_config: CacheConfig | None = None,
        analyzer: Analyzer | None = None,
        analyzer_timeout_s: float = 1.0,
        coalescer: Coalescer[Any] | None = None,
        gate: PriorityGate | None = None,
    ) -> None:
        self.scout = scout
        self.validator = validator
        self.tiering = tiering
        self.scout_timeout_s = scout_timeout_s
        self.validator_timeout_s = validator_timeout_s
        self.metrics = metrics or Metrics()
        self.cache = cache
        self.cache_config = cache_config or CacheConfig()
        self.analyzer = analyzer
        self.analyzer_timeout_s = analyzer_timeout_s
        # Whether verifying drafts still pays, per draft source (see AcceptanceTracker).
        self.acceptance = AcceptanceTracker(tiering.verify_min_acceptance,
                                            explore_every=tiering.verify_explore_every)
        # Identical requests in flight share one computation (None: each computes its own).
        self.coalescer = coalescer
        # Where we queue engine work: interactive before batch (None: no limit of our own).
        self.gate = gate
        # The engines behind every route: cached answers of other engines never match.
        self.fingerprint = digest([scout.model_id, validator.model_id])[:16]

    # -- public ---------------------------------------------------------------------------

    async def complete(
        self, request: GenerationRequest, model: str = "auto", threshold: float | None = None,
        cache: CacheControl | None = None, priority: Priority | None = None,
    ) -> Routed:
        """Answer `request`, choosing the tier by `model` ('auto', 'scout', 'validator')."""
        trace = self._new_trace(model, threshold)
        started = time.perf_counter()
        try:
            request, plan = await self._analyzer_stage(request, model, priority, trace)
            gen, admission, draft = await self._cache_stage(request, model, cache, trace, plan)
            if gen is None:
                key = self._flight_key(request, model, cache, admission)
                if key is None or self.coalescer is None:
                    gen = await self._generate(request, model, trace, draft, plan, admission)
                else:
                    t0 = time.perf_counter()
                    # `compute` runs only for the first of the identical requests (the leader), on its
                    # own trace; the others get the leader's answer and trace.
                    (gen, leader), shared = await self.coalescer.run(
                        key, lambda: self._generate_shared(request, model, trace, draft, plan, admission))
                    if shared:
                        self._record(trace, "coalesced", "joined", t0, tier=leader.tier, leader_reason=leader.reason)
                        self.metrics.coalesced()
                        trace.tier, trace.reason = leader.tier, "coalesced"
                        trace.confidence = leader.confidence
        except InferenceOptimizerError as exc:
            exc.route = self._finish(trace, started)
            raise
        self._finish(trace, started)
        return Routed(gen, trace)

    async def _generate_shared(self, request: GenerationRequest, model: str, trace: RouteTrace, draft: Draft | None,
                               plan: RoutePlan | None, admission: _Admission | None) -> tuple[Generation, RouteTrace]:
        """`_generate` as a coalesced computation: its answer and the trace of the request that ran it."""
        return await self._generate(request, model, trace, draft, plan, admission), trace

    async def _generate(self, request: GenerationRequest, model: str, trace: RouteTrace, draft: Draft | None,
                        plan: RoutePlan | None, admission: _Admission | None) -> Generation:
        """After a cache miss: Scout and/or Validator (in our queue by priority), then admission."""
        async with self._slot(request):
            if not self._skip_scout_for(draft, request, model, trace) and not self._direct(plan, model, trace):
                gen, draft = await self._scout_stage(request, model, trace)
            else:
                gen = None
            if gen is None:
                gen = await self._validator_complete(request, model, trace, draft)
            elif not request.logprobs:
                gen = replace(gen, tokens=None)
        await self._admit(admission, gen, trace)
        return gen

    async def open_stream(
        self, request: GenerationRequest, model: str = "auto", threshold: float | None = None,
        cache: CacheControl | None = None, priority: Priority | None = None,
    ) -> RoutedStream:
        """Decide the tier (running the Scout if needed), then return the chunks to send."""
        trace = self._new_trace(model, threshold)
        started = time.perf_counter()
        try:
            request, plan = await self._analyzer_stage(request, model, priority, trace)
            gen, admission, draft = await self._cache_stage(request, model, cache, trace, plan)
            if gen is not None:
                self._finish(trace, started)
                return RoutedStream(_replay(gen, False), trace, gen.model)
            key = self._flight_key(request, model, cache, admission)
            if key is not None and self.coalescer is not None and key in self.coalescer:
                # An identical request is being answered: replay its answer when it is ready.
                t0 = time.perf_counter()
                gen, leader = await self.coalescer.follow(key)
                self._record(trace, "coalesced", "joined", t0, tier=leader.tier, leader_reason=leader.reason)
                self.metrics.coalesced()
                trace.tier, trace.reason, trace.confidence = leader.tier, "coalesced", leader.confidence
                self._finish(trace, started)
                return RoutedStream(_replay(gen, False), trace, gen.model or self.validator.model_id)
            async with self._slot(request):
                if not self._skip_scout_for(draft, request, model, trace) and not self._direct(plan, model, trace):
                    gen, draft = await self._scout_stage(request, model, trace)
            if gen is not None:
                await self._admit(admission, gen, trace)
        except InferenceOptimizerError as exc:
            exc.route = self._finish(trace, started)
            raise
        if gen is not None:
            self._finish(trace, started)
            return RoutedStream(_replay(gen, request.logprobs), trace, self.scout.model_id)
        # Decided now, not when the generator first runs: the header is sent before any chunk.
        verify = self._approve(draft, request)
        trace.tier, trace.reason = "validator", self._validator_reason(model, trace, verify)
        return RoutedStream(
            self._validator_stream(request, trace, started, admission, verify, _paused_note(draft)), trace,
            self.validator.model_id,
        )

    # -- stages ---------------------------------------------------------------------------

    async def _analyzer_stage(
        self, request: GenerationRequest, model: str, priority: Priority | None, trace: RouteTrace
    ) -> tuple[GenerationRequest, RoutePlan | None]:
        """Plan the request (when an analyzer is configured); the request carries its vLLM priority."""
        if priority is not None:
            request = replace(request, priority=priority.value)
        if self.analyzer is None:
            return request, None
        t0 = time.perf_counter()
        try:
            plan = await asyncio.wait_for(
                self.analyzer.analyze(request, model=model, priority=priority.name if priority else None),
                self.analyzer_timeout_s)
        except Exception as exc:  # the plan is advice: without it the request takes the default path
            error = "timeout" if isinstance(exc, TimeoutError) else f"{type(exc).__name__}: {exc}"[:300]
            self._record(trace, "analyzer", "failed", t0, error=error)
            return request, None
        self._record(trace, "analyzer", plan.strategy, t0, **plan.trace_detail())
        return replace(request, priority=plan.vllm_priority), plan

    def _direct(self, plan: RoutePlan | None, model: str, trace: RouteTrace) -> bool:
        """Whether the plan sends an 'auto' request straight to the Validator (skipping the Scout)."""
        if plan is None or plan.strategy != "validator_direct" or not self._uses_scout(model) or model != "auto":
            return False
        self._record(trace, "scout", "skipped", time.perf_counter(), reason="predicted_hard",
                     complexity=None if plan.complexity is None else round(plan.complexity, 4))
        return True

    def _flight_key(self, request: GenerationRequest, model: str, control: CacheControl | None,
                    admission: _Admission | None) -> str | None:
        """The key identical in-flight requests share: the exact cache key, for deterministic requests only."""
        if self.coalescer is None:
            return None
        if admission is not None:
            return admission.key.exact
        if not is_deterministic(request) or request.logprobs:
            return None
        namespace = (control.namespace if control else None) or self.cache_config.default_namespace
        return cache_key(request, model=model, namespace=namespace, fingerprint=self.fingerprint).exact

    def _slot(self, request: GenerationRequest) -> Any:
        """Our queue for engine work: by priority when a gate is configured."""
        return self.gate.slot(request.priority) if self.gate is not None else contextlib.nullcontext()

    def _new_trace(self, model: str, threshold: float | None) -> RouteTrace:
        return RouteTrace(
            requested_model=model,
            threshold=self.tiering.threshold if threshold is None else threshold,
            confidence_method=describe(self.tiering.confidence),
        )

    async def _cache_stage(
        self, request: GenerationRequest, model: str, control: CacheControl | None, trace: RouteTrace,
        plan: RoutePlan | None = None,
    ) -> tuple[Generation | None, _Admission | None, Draft | None]:
        """Serve from the cache when it has the answer; otherwise say how to admit the new one
        (and hand over a near miss as a draft). The analyzer's embedding of the same question is
        reused: the request is embedded once."""
        if self.cache is None:
            return None, None, None
        cfg, control = self.cache_config, control or CacheControl()
        t0 = time.perf_counter()
        if control.ttl_s is not None and control.ttl_s > cfg.max_ttl_s:
            raise InvalidRequestError(f"cache.ttl_s is {control.ttl_s:g}, above the limit of {cfg.max_ttl_s:g} s",
                                      param="cache.ttl_s")
        reason = "bypass_requested" if control.mode == "bypass" else skip_reason(
            request, cfg, allow_sampled=control.allow_sampled)
        if reason is not None:
            self._record(trace, "cache", "skipped", t0, reason=reason)
            return None, None, None
        key = cache_key(request, model=model, namespace=control.namespace or cfg.default_namespace,
                        fingerprint=self.fingerprint)
        admission = _Admission(key, None, control.ttl_s, list(control.tags))
        if control.mode == "refresh":
            self._record(trace, "cache", "skipped", t0, reason="refresh")
            return None, admission, None
        reusable = plan is not None and key.question is not None and key.question == embedded_question(request)
        vector = plan.embedding if reusable else None
        try:
            found = await asyncio.wait_for(self.cache.lookup(key, vector=vector), cfg.timeout_s)
        except TimeoutError:
            self._record(trace, "cache", "bypass", t0, error=f"lookup took longer than {cfg.timeout_s:g} s")
            return None, None, None
        except Exception as exc:  # whatever the cache's failure, the request goes on without it
            self._record(trace, "cache", "bypass", t0, error=f"{type(exc).__name__}: {exc}"[:300])
            return None, None, None
        detail: dict[str, object] = {"namespace": key.namespace}
        if vector is not None and found.decision != "exact_hit":
            detail["embedding"] = "analyzer"  # the semantic lookup reused it, not computed again
        if found.rejected:
            detail["guard_rejected"] = found.rejected
        entry = found.entry
        if entry is None:
            admission.vector = found.vector
            draft = None
            if found.draft is not None:
                draft = Draft(found.draft.answer, "cache", similarity=found.draft_similarity)
                detail["near_miss"] = {"similarity": round(found.draft_similarity or 0.0, 4), "entry": found.draft.id}
            self._record(trace, "cache", "miss", t0, **detail)
            return None, admission, draft
        self._record(trace, "cache", found.decision, t0, similarity=round(found.similarity or 1.0, 4),
                     entry=entry.provenance(), **detail)
        trace.tier, trace.reason = "cache", "exact" if found.decision == "exact_hit" else "semantic"
        gen = Generation(text=entry.answer, finish_reason=entry.finish_reason,
                         usage=Usage(entry.prompt_tokens, entry.completion_tokens), model=entry.engine_model)
        return gen, None, None

    async def _admit(self, admission: _Admission | None, gen: Generation, trace: RouteTrace) -> None:
        """Offer a generated answer to the cache (policy first); never fails the request."""
        if admission is None or self.cache is None:
            return
        t0 = time.perf_counter()
        tier = trace.tier or "validator"
        answer = CachedAnswer(
            text=gen.text, finish_reason=gen.finish_reason, prompt_tokens=gen.usage.prompt_tokens,
            completion_tokens=gen.usage.completion_tokens, tier=tier,
            engine_model=gen.model or (self.scout if tier == "scout" else self.validator).model_id,
            confidence=trace.confidence if tier == "scout" else None,
        )
        reason = rejection_reason(answer, self.cache_config)
        if reason is not None:
            self._record(trace, "admission", "rejected", t0, reason=reason)
            return
        try:
            entry = await asyncio.wait_for(
                self.cache.admit(admission.key, answer, vector=admission.vector, ttl_s=admission.ttl_s,
                                 tags=admission.tags),
                self.cache_config.timeout_s,
            )
        except Exception as exc:
            error = "timeout" if isinstance(exc, TimeoutError) else f"{type(exc).__name__}: {exc}"[:300]
            self._record(trace, "admission", "failed", t0, error=error)
            return
        self._record(trace, "admission", "admitted", t0, entry_id=entry)

    def _uses_scout(self, model: str) -> bool:
        return model == "scout" or (model == "auto" and self.tiering.enabled)

    async def _scout_stage(
        self, request: GenerationRequest, model: str, trace: RouteTrace
    ) -> tuple[Generation | None, Draft | None]:
        """Run the Scout when the route includes it: (its answer to serve, or its draft after an escalation)."""
        if not self._uses_scout(model):
            return None, None
        forced = model == "scout"
        # The Scout always returns token logprobs: they are what confidence is made of.
        scout_req = replace(request, logprobs=True)
        t0 = time.perf_counter()
        try:
            gen = await self._call(self.scout, scout_req, self.scout_timeout_s)
        except RequestError:
            raise
        except ServiceError as exc:
            self._record(trace, "scout", "failed", t0, error=exc.message)
            if forced:
                raise
            return None, None
        score = confidence([t.logprob for t in gen.tokens or []], self.tiering.confidence)
        trace.confidence = round(score, 6)
        self.metrics.confidence(score)
        self.metrics.tokens("scout", gen.usage.prompt_tokens, gen.usage.completion_tokens)
        decision = "forced" if forced else "confident" if score >= (trace.threshold or 0.0) else "escalate"
        self._record(
            trace, "scout", decision, t0, confidence=trace.confidence, tokens=gen.usage.completion_tokens,
            finish_reason=gen.finish_reason,
        )
        if decision == "escalate":
            return None, Draft(gen.text, "scout")
        trace.tier, trace.reason = "scout", decision
        return gen, None

    def _verifies(self, draft: Draft | None, request: GenerationRequest) -> bool:
        """Whether the Validator can verify `draft` rather than generate from scratch."""
        return (draft is not None and self.tiering.verified_escalation and self.validator.can_verify
                and can_verify(request) is None)

    def _approve(self, draft: Draft | None, request: GenerationRequest) -> Draft | None:
        """Decide, once per draft, whether the Validator verifies it: it can, and it has paid lately.

        A draft not approved for low acceptance keeps a note for the validator stage.
        """
        if draft is None or draft.approved is not None:
            return draft if draft is not None and draft.approved else None
        draft.approved = self._verifies(draft, request) and self.acceptance.should_verify(draft.source)
        if not draft.approved and self._verifies(draft, request):
            draft.paused = round(self.acceptance.rate.get(draft.source, 0.0), 4)
        return draft if draft.approved else None

    def _skip_scout_for(self, draft: Draft | None, request: GenerationRequest, model: str, trace: RouteTrace) -> bool:
        """A near miss of the cache goes straight to the Validator (unless the Scout is forced).

        The cached answer to an almost identical question is a better draft than a fresh
        Scout answer, and what the Validator makes of it is final (and admitted).
        """
        if draft is None or draft.source != "cache" or model == "scout" or self._approve(draft, request) is None:
            return False
        if self._uses_scout(model):
            self._record(trace, "scout", "skipped", time.perf_counter(), reason="near_miss_draft")
        return True

    def _validator_reason(self, model: str, trace: RouteTrace, draft: Draft | None = None) -> str:
        if model == "validator":
            return "forced"
        if draft is not None and draft.source == "cache":
            return "near_miss"  # a cache draft only reaches the Validator to be verified
        if any(s.stage == "scout" and s.decision == "skipped" for s in trace.stages):
            return "validator_direct"
        if not trace.stages:
            return "tiering_disabled"
        return "scout_failed" if trace.stages[-1].decision == "failed" else "escalated"

    async def _validator_complete(
        self, request: GenerationRequest, model: str, trace: RouteTrace, draft: Draft | None = None
    ) -> Generation:
        approved = self._approve(draft, request)
        reason = self._validator_reason(model, trace, approved)
        t0 = time.perf_counter()
        verify = approved is not None
        note = _paused_note(draft)
        try:
            if verify:
                assert draft is not None
                try:
                    verified = await asyncio.wait_for(self.validator.verify(request, draft.text),
                                                      self.validator_timeout_s)
                    gen = verified.generation
                except RequestError as exc:
                    # The draft could not be scored (prompt + draft past the context window, say):
                    # verification may make an answer cheaper, never fail it. What is left of the
                    # time budget goes to plain generation.
                    verify, note = False, {"verify_failed": exc.code or exc.type}
                    left = self.validator_timeout_s - (time.perf_counter() - t0)
                    gen = await self._call(self.validator, request, max(left, 0.001))
            else:
                gen = await self._call(self.validator, request, self.validator_timeout_s)
        except TimeoutError:
            exc = EngineTimeoutError(f"{self.validator.model_id} did not answer within {self.validator_timeout_s:g} s")
            self._record(trace, "validator", "failed", t0, error=exc.message)
            raise exc from None
        except ServiceError as exc:
            self._record(trace, "validator", "failed", t0, error=exc.message)
            raise
        if verify:
            assert draft is not None
            self._record_verified(trace, t0, draft, verified.outcome, gen.usage.completion_tokens, gen.finish_reason)
        else:
            self._record(trace, "validator", "answered", t0, tokens=gen.usage.completion_tokens,
                         finish_reason=gen.finish_reason, **note)
        self.metrics.tokens("validator", gen.usage.prompt_tokens, gen.usage.completion_tokens)
        trace.tier, trace.reason = "validator", reason
        return gen

    def _record_verified(self, trace: RouteTrace, t0: float, draft: Draft, outcome: DraftOutcome, tokens: int,
                         finish_reason: str | None) -> None:
        detail: dict[str, object] = {"draft_source": draft.source}
        if draft.similarity is not None:
            detail["draft_similarity"] = round(draft.similarity, 4)
        self._record(trace, "validator", "verified", t0, tokens=tokens, finish_reason=finish_reason,
                     draft_tokens=outcome.proposed, accepted_tokens=outcome.accepted,
                     generated_tokens=max(tokens - outcome.accepted, 0), saved_tokens=outcome.saved, **detail)
        self.metrics.draft(outcome.proposed, outcome.accepted, source=draft.source, saved=outcome.saved)
        self.acceptance.record(draft.source, outcome.proposed, outcome.accepted)

    async def _validator_stream(
        self, request: GenerationRequest, trace: RouteTrace, started: float, admission: _Admission | None = None,
        draft: Draft | None = None, note: dict[str, object] | None = None,
    ) -> AsyncIterator[GenerationChunk]:
        """The Validator's answer, streamed; with a `draft`, verified first (its accepted prefix comes at once).

        It takes a place in our queue (by priority) when the client starts reading and keeps it
        until the stream ends or the client goes away, like a non-streamed generation.
        """
        async with self._slot(request):
            chunks = self._validator_chunks(request, trace, started, admission, draft, note)
            try:
                async for chunk in chunks:
                    yield chunk
            finally:
                await chunks.aclose()  # a client that leaves closes the engine stream now, not at GC

    async def _validator_chunks(
        self, request: GenerationRequest, trace: RouteTrace, started: float, admission: _Admission | None,
        draft: Draft | None, note: dict[str, object] | None,
    ) -> AsyncIterator[GenerationChunk]:
        t0 = time.perf_counter()
        tokens = 0
        outcome: DraftOutcome | None = None
        # What the stream said, so a completed answer can still be admitted to the cache.
        parts: list[str] = []
        finish_reason: str | None = None
        usage = Usage()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.validator_timeout_s
        chunks = self.validator.verify_stream(request, draft.text) if draft else self.validator.stream(request)
        try:
            while True:
                # A deadline per chunk rather than a timeout scope around `yield`: the scope
                # would cancel whatever the consumer is doing between chunks.
                try:
                    chunk = await asyncio.wait_for(anext(chunks), max(deadline - loop.time(), 0.001))
                except StopAsyncIteration:
                    break
                except RequestError as exc:
                    if draft is None or parts:
                        raise
                    # The draft could not be scored and nothing was sent yet: stream plainly.
                    draft, note = None, {"verify_failed": exc.code or exc.type}
                    chunks = self.validator.stream(request)
                    continue
                if chunk.usage is not None:
                    tokens = chunk.usage.completion_tokens
                    usage = chunk.usage
                    self.metrics.tokens("validator", chunk.usage.prompt_tokens, tokens)
                if chunk.draft is not None:
                    outcome = chunk.draft
                parts.append(chunk.text)
                finish_reason = chunk.finish_reason or finish_reason
                yield chunk
        except TimeoutError:
            exc = EngineTimeoutError(f"{self.validator.model_id} did not finish within {self.validator_timeout_s:g} s")
            self._record(trace, "validator", "failed", t0, error=exc.message)
            exc.route = self._finish(trace, started)
            raise exc from None
        except InferenceOptimizerError as exc:
            self._record(trace, "validator", "failed", t0, error=exc.message)
            exc.route = self._finish(trace, started)
            raise
        finally:
            if hasattr(chunks, "aclose"):
                await chunks.aclose()
        if draft is not None and outcome is not None:
            self._record_verified(trace, t0, draft, outcome, tokens, finish_reason)
        else:
            self._record(trace, "validator", "answered", t0, tokens=tokens, **(note or {}))
        gen = Generation(text="".join(parts), finish_reason=finish_reason, usage=usage, model=self.validator.model_id)
        await self._admit(admission, gen, trace)
        self._finish(trace, started)

    def _record(self, trace: RouteTrace, stage: str, decision: str, started: float, **detail: object) -> None:
        """One stage's decision: into the route trace and the metrics, always both."""
        rec = trace.add(stage, decision, started, **detail)
        self.metrics.stage(stage, decision, rec.latency_ms)

    async def _call(self, engine: LLMEngine, request: GenerationRequest, timeout_s: float) -> Generation:
        try:
            return await asyncio.wait_for(engine.generate(request), timeout_s)
        except TimeoutError:
            raise EngineTimeoutError(f"{engine.model_id} did not answer within {timeout_s:g} s") from None

    @staticmethod
    def _finish(trace: RouteTrace, started: float) -> RouteTrace:
        trace.total_ms = round((time.perf_counter() - started) * 1000, 3)
        return trace


def _paused_note(draft: Draft | None) -> dict[str, object]:
    """The validator stage's note when a draft went unverified because verification has not paid lately."""
    if draft is None or draft.paused is None:
        return {}
    return {"verify_paused": draft.source, "recent_acceptance": draft.paused}


# Before every non-space that follows a space: word-sized pieces that join back to the text.
_WORD_START = re.compile(r"(?<=\s)(?=\S)")


async def _replay(gen: Generation, with_logprobs: bool) -> AsyncIterator[GenerationChunk]:
    """Replay a finished answer as chunks: one per token when the tokens spell the text, else one per word."""
    tokens = gen.tokens or []
    if tokens and "".join(t.token for t in tokens) == gen.text:
        for t in tokens:
            yield GenerationChunk(text=t.token, tokens=[t] if with_logprobs else None)
    elif with_logprobs and tokens:
        yield GenerationChunk(text=gen.text, tokens=tokens)
    else:
        for piece in _WORD_START.split(gen.text):
            if piece:
                yield GenerationChunk(text=piece)
    yield GenerationChunk(finish_reason=gen.finish_reason, usage=gen.usage)
