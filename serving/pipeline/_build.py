"""Putting a pipeline together: from parts (tests, tools) or from the application's config (the Ingress)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from serving.breaker import CircuitBreaker
from serving.config import CacheConfig, StrategiesConfig, TieringConfig
from serving.engines.base import LLMEngine
from serving.metrics import Metrics
from serving.pipeline._analyze import AnalyzerStage
from serving.pipeline._cache import AdmissionStage, CacheStage
from serving.pipeline._executor import Pipeline, engines_fingerprint
from serving.pipeline._flights import Flights
from serving.pipeline._scout import ScoutStage
from serving.pipeline._stage import Observer, Stage
from serving.pipeline._strategy import StrategyStage
from serving.pipeline._validator import ValidatorStage
from serving.priority import PriorityGate
from serving.strategies import CostModel, Frontier, StrategyPolicy

if TYPE_CHECKING:
    from serving.analyzer import Analyzer
    from serving.cache.embedder import Embedder
    from serving.cache.semantic import ResponseCache
    from serving.config import AppConfig
    from serving.policy.escalation import EscalationPolicy


def build_pipeline(
    scout: LLMEngine,
    validator: LLMEngine,
    tiering: TieringConfig | None = None,
    *,
    cache: ResponseCache | None = None,
    cache_config: CacheConfig | None = None,
    analyzer: Analyzer | None = None,
    analyzer_timeout_s: float = 1.0,
    scout_timeout_s: float = 300.0,
    validator_timeout_s: float = 300.0,
    coalesce: bool = False,
    gate: PriorityGate | None = None,
    metrics: Metrics | None = None,
    escalation: EscalationPolicy | None = None,
    observers: list[Observer] | None = None,
    semantic_closed: set[str] | None = None,
    breakers: tuple[int, float] | None = None,
    strategies: StrategiesConfig | None = None,
    strategy_policy: StrategyPolicy | None = None,
) -> Pipeline:
    """A pipeline over two engines; the cache, the analyzer, coalescing, our priority queue, a calibrated
    escalation policy, observers (ledger, audit) and circuit breakers ((failures, reset_s) for the analyzer,
    the cache and the Scout) are optional. Inference strategies run by `strategies` (greedy by default: the
    cascade alone) and `strategy_policy` (no frontier, no budget, unless given)."""
    from serving.policy.escalation import EscalationPolicy  # here: the policy imports the pipeline's decisions

    tiering = tiering or TieringConfig()
    cache_config = cache_config or CacheConfig()
    strategies = strategies or StrategiesConfig()
    strategy_policy = strategy_policy or StrategyPolicy(CostModel(strategies.prior_candidate_s))
    escalation = escalation or EscalationPolicy(tiering, can_verify_drafts=validator.can_verify)
    fingerprint = engines_fingerprint(scout.model_id, validator.model_id)

    def breaker(name: str) -> CircuitBreaker | None:
        return CircuitBreaker(name, *breakers) if breakers is not None else None

    cache_breaker = breaker("cache")
    front: list[Stage] = []
    if analyzer is not None:
        front.append(AnalyzerStage(analyzer, analyzer_timeout_s, breaker("analyzer")))
    if cache is not None:
        front.append(CacheStage(cache, cache_config, fingerprint, semantic_closed, cache_breaker))
    return Pipeline(
        front=front,
        generate=[StrategyStage(scout, validator, strategy_policy, strategies, validator_timeout_s),
                  ScoutStage(scout, escalation, tiering.confidence, scout_timeout_s, breaker("scout")),
                  ValidatorStage(validator, escalation, validator_timeout_s)],
        escalation=escalation,
        admission=AdmissionStage(cache, cache_config, cache_breaker) if cache is not None else None,
        flights=Flights() if coalesce else None,
        gate=gate,
        metrics=metrics,
        cache_config=cache_config,
        fingerprint=fingerprint,
        observers=observers,
    )


def pipeline_from_config(
    config: AppConfig, scout: LLMEngine, validator: LLMEngine, *, cache: ResponseCache | None = None,
    analyzer: Analyzer | None = None, metrics: Metrics | None = None, embedder: Embedder | None = None,
) -> Pipeline:
    """The application's pipeline: every setting from `config`, the parts given (the composition root's).

    With `quality.calibration` the escalation policy is calibrated by the file's Scout part (a file for other
    models is refused), and the cache's similarity threshold is the file's cache part's when it has one for
    the configured embedder (`serving.policy.cache.threshold_in_force`; the SemanticCache deployment gets
    the same threshold from `deployments.app.build_cache`); the calibration version in traces names the
    parts in force. The cost ledger always observes; with `quality.audit.enabled` the auditor does too
    (judging with `embedder` when given). Both are reachable as `pipeline.ledger` and `pipeline.auditor`.
    """
    from serving.policy.cache import threshold_in_force
    from serving.policy.escalation import EscalationPolicy
    from serving.quality.audit import Auditor
    from serving.quality.calibration import Calibration
    from serving.quality.judge import default_panel
    from serving.quality.ledger import CostLedger

    api, quality = config.api, config.quality
    calibration = None
    path = config.calibration_path()
    if path is not None:
        calibration = Calibration.load(path)
        calibration.check(scout.model_id, validator.model_id)
    cache_config, calibration = threshold_in_force(config.cache, calibration)
    # A file with the cache part only leaves the Scout uncalibrated (the trace then says "uncalibrated").
    scout_calibration = calibration if calibration is not None and calibration.scout is not None else None
    escalation = EscalationPolicy(config.tiering, can_verify_drafts=validator.can_verify,
                                  calibration=scout_calibration)
    ledger = CostLedger(metrics)
    observers: list[Observer] = [ledger]
    semantic_closed: set[str] = set()
    auditor = None
    if quality.audit.enabled:
        state_path = quality.audit.state_path or config.cache_dir / "audit" / f"{config.profile}.json"
        auditor = Auditor(quality.audit, validator, default_panel(embedder), escalation,
                          epsilon=quality.max_disagreement, delta=quality.delta, cache=cache, metrics=metrics,
                          state_path=state_path, ledger=ledger, semantic_closed=semantic_closed)
        observers.append(auditor)
    if config.tracing.enabled:  # OpenTelemetry spans of every answered request (the optional extra)
        from serving.tracing import StageTracer

        observers.append(StageTracer.from_config(config.tracing))
    st = config.strategies
    frontier = Frontier.load(config.resolve_path(st.frontier)) if st.frontier is not None else None
    strategy_policy = StrategyPolicy(CostModel(st.prior_candidate_s, frontier), frontier, target=st.target,
                                     default_budget_s=st.budget_s, max_n=api.max_choices)
    pipeline = build_pipeline(
        scout, validator, config.tiering, cache=cache, cache_config=cache_config, analyzer=analyzer,
        analyzer_timeout_s=config.analyzer.timeout_s, scout_timeout_s=config.scout.request_timeout_s,
        validator_timeout_s=config.validator.request_timeout_s, coalesce=api.coalesce,
        gate=PriorityGate(api.max_in_flight, aging_per_s=api.priority_aging_per_s, max_waiting=api.max_waiting,
                          max_wait_s=api.max_wait_s) if api.max_in_flight else None,
        metrics=metrics, escalation=escalation, observers=observers, semantic_closed=semantic_closed,
        breakers=(api.breaker_failures, api.breaker_reset_s) if api.breaker_failures else None,
        strategies=st, strategy_policy=strategy_policy,
    )
    pipeline.ledger, pipeline.auditor = ledger, auditor
    return pipeline
