"""One request's state as it travels the pipeline; the route trace is written from it.

Each stage reads what earlier stages decided from typed fields here (`plan`, `draft`,
`scout`, `threshold`…) and writes its own decision with `record`. Nothing reads the trace
to decide: `trace()` is only the client's view of this state.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from serving.api import CacheControl, RouteTrace, StageRecord
from serving.engines.base import Generation, GenerationChunk, GenerationRequest, Usage
from serving.metrics import Metrics
from serving.pipeline._decisions import Decision, Reason, Route, ScoutDecision, StageName, Tier

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from serving.analyzer import RoutePlan
    from serving.api import StrategySpec
    from serving.cache.keys import CacheKey
    from serving.priority import Priority
    from serving.verify import Draft


@dataclass
class StageOutcome:
    """What one stage decided, when, and its figures."""

    stage: StageName
    decision: Decision
    latency_ms: float
    detail: dict[str, Any] = field(default_factory=dict)
    offset_ms: float = 0.0  # when it started, after the request's start (what a tracing span needs)


@dataclass
class TierCost:
    """What one tier's engine spent on a request."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    engine_s: float = 0.0  # wall time of the engine call(s), seen from the pipeline

    def as_dict(self) -> dict[str, float]:
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
                "engine_s": round(self.engine_s, 4)}


@dataclass
class Cost:
    """Engine work per tier so far, including work thrown away (a Scout answer that escalated)."""

    tiers: dict[Tier, TierCost] = field(default_factory=dict)
    # Scoring passes that answer nothing (the cache's cross-check of a candidate by a cascade engine): that
    # engine's time all the same, but not a measure of what the Validator would spend answering.
    checks: dict[Tier, TierCost] = field(default_factory=dict)

    @staticmethod
    def _add(into: dict[Tier, TierCost], tier: Tier, usage: Usage | None, seconds: float) -> None:
        c = into.setdefault(tier, TierCost())
        if usage is not None:
            c.prompt_tokens += usage.prompt_tokens
            c.completion_tokens += usage.completion_tokens
        c.engine_s += seconds

    def add(self, tier: Tier, usage: Usage | None, seconds: float) -> None:
        """Work of a tier on the request's answer (kept or thrown away)."""
        self._add(self.tiers, tier, usage, seconds)

    def check(self, tier: Tier, usage: Usage | None, seconds: float) -> None:
        """A tier's scoring pass that is not an answer (see `checks`)."""
        self._add(self.checks, tier, usage, seconds)

    def engine_s(self, tier: Tier | None = None) -> float:
        """Engine seconds spent, checks included: of one tier, or of all."""
        return sum(c.engine_s for part in (self.tiers, self.checks) for t, c in part.items()
                   if tier is None or t is tier)

    def as_dict(self) -> dict[str, dict[str, float]]:
        return {**{str(t): c.as_dict() for t, c in self.tiers.items()},
                **{f"{t}_check": c.as_dict() for t, c in self.checks.items()}}


@dataclass
class Admission:
    """What admitting a cache miss's answer needs: its key, the lookup's embedding, TTL and tags."""

    key: CacheKey
    vector: list[float] | None
    ttl_s: float | None
    tags: list[str]


@dataclass
class RequestState:
    """Everything the stages decided about one request."""

    request: GenerationRequest
    route: Route
    threshold: float
    confidence_method: str
    cache_control: CacheControl
    priority: Priority | None = None
    tenant: str | None = None  # the caller's tenant (serving.tenancy), None on an open service
    stream: bool = False  # the client reads the answer as it is generated
    strategy: StrategySpec | None = None  # the request's inference strategy (None: the configured default)
    metrics: Metrics = field(default_factory=Metrics)
    started: float = field(default_factory=time.perf_counter)
    # Decided by the stages, in order.
    plan: RoutePlan | None = None
    key: CacheKey | None = None  # the request's cache key, when the cache stage computed one
    admission: Admission | None = None  # set on a miss that may be admitted
    draft: Draft | None = None  # a near miss or an escalated Scout answer, for the Validator to verify
    scout: ScoutDecision | None = None
    scout_answer: Generation | None = None  # what the Scout said, kept or not (the audit judges it)
    confidence: float | None = None
    agreement: float | None = None  # calibrated P(the Scout's answer agrees with the Validator's)
    calibration: str = "uncalibrated"  # the calibration's version
    tier: Tier | None = None
    reason: Reason | None = None
    model: str = ""  # the engine model that produced the answer
    # The answer, as chunks: set by the stage that answers (cache hit, Scout, Validator).
    answer: AsyncIterator[GenerationChunk] | None = None
    result: Generation | None = None  # the whole answer, once generated (what admission offers the cache)
    outcomes: list[StageOutcome] = field(default_factory=list)
    cost: Cost = field(default_factory=Cost)
    counterfactual_s: float | None = None  # what the Validator alone would have spent (the cost ledger's)
    total_ms: float | None = None
    ttft_ms: float | None = None  # time to the answer's first chunk (the live page's TTFT)
    # Completion tokens of the answer itself when its usage counts more (a strategy's candidates): the ledger's.
    answer_tokens: int | None = None

    def record(self, stage: StageName, decision: Decision, started: float, **detail: Any) -> StageOutcome:
        """One stage's decision, started at `started` (time.perf_counter()): into the state and the metrics."""
        out = StageOutcome(stage, decision, round((time.perf_counter() - started) * 1000, 3), detail,
                           offset_ms=round(max(0.0, started - self.started) * 1000, 3))
        self.outcomes.append(out)
        self.metrics.stage(stage, decision, out.latency_ms)
        return out

    def answered(self, tier: Tier, reason: Reason, model: str, chunks: AsyncIterator[GenerationChunk]) -> None:
        """A stage answers the request: the rest of the path only streams `chunks` (and admits them)."""
        self.tier, self.reason, self.model, self.answer = tier, reason, model, chunks

    def first_chunk(self) -> None:
        """The answer's first chunk leaves the path now."""
        if self.ttft_ms is None:
            self.ttft_ms = round((time.perf_counter() - self.started) * 1000, 3)

    def finish(self) -> None:
        self.total_ms = round((time.perf_counter() - self.started) * 1000, 3)

    def trace(self) -> RouteTrace:
        """The route trace the client sees (`route` field and `x-infopt-route` header)."""
        return RouteTrace(
            tier=self.tier, requested_model=self.route, reason=self.reason, confidence=self.confidence,
            agreement=self.agreement, calibration=self.calibration,
            threshold=self.threshold if math.isfinite(self.threshold) else None,
            confidence_method=self.confidence_method,
            stages=[StageRecord(stage=o.stage, decision=o.decision, latency_ms=o.latency_ms, detail=o.detail)
                    for o in self.outcomes],
            cost=self.cost.as_dict() or None, total_ms=self.total_ms,
        )
