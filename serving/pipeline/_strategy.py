"""The strategy stage: several candidates and one answer, when the request (or 'auto') asks for a strategy."""

from __future__ import annotations

import asyncio
import time

from serving.config import StrategiesConfig
from serving.engines.base import LLMEngine
from serving.errors import EngineTimeoutError, ServiceError
from serving.pipeline._decisions import Reason, Route, StageName, StrategyDecision, Tier
from serving.pipeline._stage import Stage, replay
from serving.pipeline._state import RequestState
from serving.strategies import StrategyName, StrategyPolicy, StrategyRunner


class StrategyStage(Stage):
    """Runs before the Scout. Nothing to do for 'greedy' (the cascade answers, untraced). Otherwise the policy
    plans the strategy within the budget: ``ran`` or ``degraded`` (its answer is the response), ``cascade``
    (the plan is greedy: the Scout and Validator stages go on), or ``failed`` (an engine failed: the cascade
    answers instead). Candidates come from the tier the route names (the Scout on 'auto'); the Validator
    scores them."""

    name = StageName.STRATEGY

    def __init__(self, scout: LLMEngine, validator: LLMEngine, policy: StrategyPolicy,
                 config: StrategiesConfig | None = None, timeout_s: float = 300.0) -> None:
        self.config = config or StrategiesConfig()
        self.policy = policy
        self.timeout_s = timeout_s
        self.runners = {Tier.SCOUT: StrategyRunner(scout, validator, self.config),
                        Tier.VALIDATOR: StrategyRunner(validator, validator, self.config)}

    async def run(self, state: RequestState) -> None:
        spec = state.strategy
        name = StrategyName(spec.name if spec is not None else self.config.default)
        if name is StrategyName.GREEDY or state.request.n > 1 or state.request.logprobs:
            return
        t0 = time.perf_counter()
        budget = self.policy.budget(spec.budget if spec is not None else None)
        complexity = state.plan.complexity if state.plan is not None else None
        plan = self.policy.plan(name, spec.n if spec is not None else 1, budget, complexity)
        detail: dict[str, object] = {**plan.as_dict(), "requested": str(name), "budget_s": budget}
        if plan.name is StrategyName.GREEDY:
            state.record(self.name, StrategyDecision.CASCADE, t0, **detail)
            return
        tier = Tier.VALIDATOR if state.route is Route.VALIDATOR else Tier.SCOUT
        runner = self.runners[tier]
        try:
            result = await asyncio.wait_for(runner.run(state.request, plan.name, plan.n), self.timeout_s)
        except (ServiceError, TimeoutError) as exc:
            if isinstance(exc, TimeoutError):
                exc = EngineTimeoutError(f"the strategy did not finish within {self.timeout_s:g} s")
            state.cost.add(tier, None, time.perf_counter() - t0)
            state.record(self.name, StrategyDecision.FAILED, t0, error=exc.message, **detail)
            return
        state.cost.add(tier, result.sampler.usage, result.sampler.seconds)
        state.metrics.tokens(tier, result.sampler.usage.prompt_tokens, result.sampler.usage.completion_tokens)
        if result.scorer.seconds:
            state.cost.add(Tier.VALIDATOR, result.scorer.usage, result.scorer.seconds)
            state.metrics.tokens(Tier.VALIDATOR, result.scorer.usage.prompt_tokens, 0)
        self.policy.costs.record(plan.name, plan.n, result.engine_s)
        chosen = result.candidates[result.choice.index]
        state.answer_tokens = chosen.tokens or None
        decision = StrategyDecision.DEGRADED if plan.why == "over_budget" else StrategyDecision.RAN
        state.record(self.name, decision, t0, cost_s=round(result.engine_s, 4), **detail, **result.trace())
        state.answered(tier, Reason.STRATEGY, result.answer.model or runner.sampler.model_id,
                       replay(result.answer, False))
