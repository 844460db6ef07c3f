"""The analyzer stage: plan the request (`RoutePlan`) before the cache; the plan is advice, never a failure."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace

from serving.analyzer import Analyzer
from serving.breaker import CircuitBreaker
from serving.pipeline._decisions import AnalyzerDecision, StageName
from serving.pipeline._stage import Stage
from serving.pipeline._state import RequestState


class AnalyzerStage(Stage):
    """Asks the `Analyzer` for the request's plan within `timeout_s`; the request takes the plan's vLLM
    priority. A failed or slow analysis is recorded ``failed`` and the request takes the default path."""

    name = StageName.ANALYZER

    def __init__(self, analyzer: Analyzer, timeout_s: float = 1.0, breaker: CircuitBreaker | None = None) -> None:
        self.analyzer = analyzer
        self.timeout_s = timeout_s
        self.breaker = breaker

    async def run(self, state: RequestState) -> None:
        t0 = time.perf_counter()
        if self.breaker is not None and not self.breaker.allow():
            state.record(self.name, AnalyzerDecision.FAILED, t0, error=self.breaker.describe())
            return
        priority = state.priority.name if state.priority else None
        try:
            plan = await asyncio.wait_for(self.analyzer.analyze(state.request, model=state.route, priority=priority),
                                          self.timeout_s)
        except Exception as exc:  # the plan is advice: without it the request takes the default path
            error = "timeout" if isinstance(exc, TimeoutError) else f"{type(exc).__name__}: {exc}"[:300]
            if self.breaker is not None:
                self.breaker.failure()
            state.record(self.name, AnalyzerDecision.FAILED, t0, error=error)
            return
        if self.breaker is not None:
            self.breaker.success()
        state.plan = plan
        state.request = replace(state.request, priority=plan.vllm_priority)
        state.metrics.plan(plan.strategy, plan.priority, plan.complexity)
        state.record(self.name, AnalyzerDecision(plan.strategy), t0, **plan.trace_detail())
