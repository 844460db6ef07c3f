"""The Scout stage: the small model answers with token logprobs; the escalation policy keeps or escalates it."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace

from serving.confidence import confidence
from serving.config import ConfidenceConfig
from serving.engines.base import LLMEngine
from serving.errors import EngineTimeoutError, RequestError, ServiceError
from serving.pipeline._decisions import Reason, Route, ScoutDecision, SkipReason, StageName, Tier
from serving.pipeline._stage import Stage, replay
from serving.pipeline._state import RequestState
from serving.policy.escalation import EscalationPolicy
from serving.verify import Draft


class ScoutStage(Stage):
    """Runs the Scout when the route uses it and the policy does not skip it.

    ``confident`` / ``forced``: its answer is the response. ``escalate``: its answer becomes
    the Validator's draft. ``failed`` (error or timeout): the Validator can still answer,
    unless the Scout was forced. ``skipped``: a validator-direct plan, or a near miss the
    Validator verifies.
    """

    name = StageName.SCOUT

    def __init__(self, engine: LLMEngine, policy: EscalationPolicy, confidence_config: ConfidenceConfig,
                 timeout_s: float = 300.0) -> None:
        self.engine = engine
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
        try:
            # The Scout always returns token logprobs: they are what confidence is made of.
            gen = await asyncio.wait_for(self.engine.generate(replace(state.request, logprobs=True)), self.timeout_s)
        except RequestError:
            raise
        except (ServiceError, TimeoutError) as exc:
            if isinstance(exc, TimeoutError):
                exc = EngineTimeoutError(f"{self.engine.model_id} did not answer within {self.timeout_s:g} s")
            state.scout = ScoutDecision.FAILED
            state.cost.add(Tier.SCOUT, None, time.perf_counter() - t0)
            state.record(self.name, ScoutDecision.FAILED, t0, error=exc.message)
            if state.route is Route.SCOUT:
                raise exc from None
            return
        state.cost.add(Tier.SCOUT, gen.usage, time.perf_counter() - t0)
        score = confidence([t.logprob for t in gen.tokens or []], self.confidence_config)
        state.confidence = round(score, 6)
        state.metrics.confidence(score)
        state.metrics.tokens(Tier.SCOUT, gen.usage.prompt_tokens, gen.usage.completion_tokens)
        decision = self.policy.judge(state.route, score, state.threshold)
        state.scout = decision
        state.record(self.name, decision, t0, confidence=state.confidence, tokens=gen.usage.completion_tokens,
                     finish_reason=gen.finish_reason)
        if decision is ScoutDecision.ESCALATE:
            state.draft = Draft(gen.text, "scout")
            return
        reason = Reason.FORCED if decision is ScoutDecision.FORCED else Reason.CONFIDENT
        state.answered(Tier.SCOUT, reason, gen.model or self.engine.model_id, replay(gen, state.request.logprobs))
