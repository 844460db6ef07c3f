"""The Scout stage: the small model answers with token logprobs; the escalation policy keeps or escalates it."""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import replace
from typing import TYPE_CHECKING

from serving.breaker import CircuitBreaker
from serving.confidence import confidence
from serving.config import ConfidenceConfig
from serving.engines.base import Generation, GenerationChunk, GenerationRequest, LLMEngine, Usage
from serving.errors import (
    ContextLengthExceededError,
    EngineTimeoutError,
    EngineUnavailableError,
    OverloadedError,
    RequestError,
    ServiceError,
)
from serving.pipeline._decisions import Reason, Route, ScoutDecision, SkipReason, StageName, Tier
from serving.pipeline._stage import Stage, assemble, replay
from serving.pipeline._state import RequestState
from serving.quality.calibration import q10_reachable
from serving.verify import Draft

if TYPE_CHECKING:
    from serving.policy.escalation import EscalationPolicy


class ScoutStage(Stage):
    """Runs the Scout when the route uses it and the policy does not skip it.

    ``confident`` / ``forced``: its answer is the response. ``escalate``: its answer becomes
    the Validator's draft. ``failed`` (error or timeout): the Validator can still answer,
    unless the Scout was forced. ``skipped``: a validator-direct plan, or a near miss the
    Validator verifies.
    """

    name = StageName.SCOUT

    def __init__(self, engine: LLMEngine, policy: EscalationPolicy, confidence_config: ConfidenceConfig,
                 timeout_s: float = 300.0, breaker: CircuitBreaker | None = None) -> None:
        self.engine = engine
        self.breaker = breaker
        self.policy = policy
        self.confidence_config = confidence_config
        self.timeout_s = timeout_s

    async def run(self, state: RequestState) -> None:
        if not self.policy.uses_scout(state.route):
            return
        skip = self.policy.skip_scout(state.route, state.plan, state.draft, state.request)
        if skip is not None:
            detail: dict[str, object] = {"reason": skip}
            if skip is SkipReason.PREDICTED_HARD and state.plan is not None:
                detail["complexity"] = None if state.plan.complexity is None else round(state.plan.complexity, 4)
            state.scout = ScoutDecision.SKIPPED
            state.record(self.name, ScoutDecision.SKIPPED, time.perf_counter(), **detail)
            return
        state.draft = None  # the Scout's answer, not an earlier near miss, is what escalates
        t0 = time.perf_counter()
        if self.breaker is not None and not self.breaker.allow():
            # A Scout that keeps failing costs its timeout once, not on every request.
            state.scout = ScoutDecision.FAILED
            state.record(self.name, ScoutDecision.FAILED, t0, error=self.breaker.describe())
            if state.route is Route.SCOUT:
                raise EngineUnavailableError(self.breaker.describe())
            return
        stopped_at: int | None = None
        try:
            # The Scout always returns token logprobs: they are what confidence is made of.
            request = replace(state.request, logprobs=True)
            floor = self.policy.early_stop_floor(state.route)
            if floor is None:
                gen = await asyncio.wait_for(self.engine.generate(request), self.timeout_s)
            else:
                gen, stopped_at = await asyncio.wait_for(self._until_hopeless(request, floor), self.timeout_s)
        except ContextLengthExceededError as exc:
            if state.route is Route.SCOUT:
                raise
            # The prompt fits the Validator's window, perhaps, not the Scout's: the Validator answers.
            state.scout = ScoutDecision.FAILED
            state.record(self.name, ScoutDecision.FAILED, t0, error=exc.message, reason="context_length")
            return
        except RequestError:
            raise
        except OverloadedError as exc:
            # Busy is not broken (the breaker is left alone); the policy decides whether the Validator takes it.
            state.scout = ScoutDecision.OVERLOADED
            overflow = state.route is not Route.SCOUT and self.policy.overflow_to_validator()
            state.record(self.name, ScoutDecision.OVERLOADED, t0, error=exc.message,
                         then="validator" if overflow else "rejected")
            if not overflow:
                raise
            return
        except (ServiceError, TimeoutError) as exc:
            if isinstance(exc, TimeoutError):
                exc = EngineTimeoutError(f"{self.engine.model_id} did not answer within {self.timeout_s:g} s")
            if self.breaker is not None:
                self.breaker.failure()
            state.scout = ScoutDecision.FAILED
            state.cost.add(Tier.SCOUT, None, time.perf_counter() - t0)
            state.record(self.name, ScoutDecision.FAILED, t0, error=exc.message)
            if state.route is Route.SCOUT:
                raise exc from None
            return
        if self.breaker is not None:
            self.breaker.success()
        state.cost.add(Tier.SCOUT, gen.usage, time.perf_counter() - t0)
        raw = confidence([t.logprob for t in gen.tokens or []], self.confidence_config)
        state.confidence = round(raw, 6)
        state.metrics.confidence(raw)
        state.metrics.tokens(Tier.SCOUT, gen.usage.prompt_tokens, gen.usage.completion_tokens)
        # The score the bound applies to: the calibrated P(agree with the Validator), or the raw confidence.
        score = self.policy.score(gen, state.plan, raw)
        detail: dict[str, object] = {"confidence": state.confidence}
        if self.policy.calibration is not None:
            state.agreement = round(score, 6)
            detail["p_agree"] = state.agreement
        detail["bound"] = state.threshold if math.isfinite(state.threshold) else None
        decision = self.policy.judge(state.route, score, state.threshold)
        if stopped_at is not None:
            # Stopped mid-answer: whatever it would have said next, it could not have been kept.
            decision = ScoutDecision.ESCALATE
            detail["early_stop_at"] = stopped_at
        state.scout = decision
        state.scout_answer = gen
        state.record(self.name, decision, t0, tokens=gen.usage.completion_tokens, finish_reason=gen.finish_reason,
                     **detail)
        if decision is ScoutDecision.ESCALATE:
            state.draft = Draft(gen.text, "scout")
            return
        reason = Reason.FORCED if decision is ScoutDecision.FORCED else Reason.CONFIDENT
        state.answered(Tier.SCOUT, reason, gen.model or self.engine.model_id, replay(gen, state.request.logprobs))

    async def _until_hopeless(self, request: GenerationRequest, floor: float) -> tuple[Generation, int | None]:
        """The Scout's answer, streamed and stopped as soon as its q10 token probability can no longer reach
        `floor` (`serving.quality.calibration.q10_reachable`): (the answer so far, the token it stopped at)."""
        chunks: list[GenerationChunk] = []
        logprobs: list[float] = []
        stopped: int | None = None
        source = self.engine.stream(request)
        try:
            async for chunk in source:
                chunks.append(chunk)
                logprobs += [t.logprob for t in chunk.tokens or []]
                stopped = q10_reachable(logprobs, request.max_tokens, floor)
                if stopped is not None:
                    break
        finally:
            await source.aclose()  # stops the engine's generation (the stream is abandoned)
        gen = assemble(chunks, self.engine.model_id)
        if stopped is not None:
            gen.usage = Usage(gen.usage.prompt_tokens, len(logprobs))
        return gen, stopped
