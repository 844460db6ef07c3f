"""Putting a pipeline together: from parts (tests, tools) or from the application's config (the Ingress)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from serving.config import CacheConfig, TieringConfig
from serving.engines.base import LLMEngine
from serving.metrics import Metrics
from serving.pipeline._analyze import AnalyzerStage
from serving.pipeline._cache import AdmissionStage, CacheStage
from serving.pipeline._executor import Pipeline, engines_fingerprint
from serving.pipeline._flights import Flights
from serving.pipeline._scout import ScoutStage
from serving.pipeline._stage import Stage
from serving.pipeline._validator import ValidatorStage
from serving.policy.escalation import EscalationPolicy
from serving.priority import PriorityGate

if TYPE_CHECKING:
    from serving.analyzer import Analyzer
    from serving.cache.semantic import ResponseCache
    from serving.config import AppConfig


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
) -> Pipeline:
    """A pipeline over two engines; the cache, the analyzer, coalescing and our priority queue are optional."""
    tiering = tiering or TieringConfig()
    cache_config = cache_config or CacheConfig()
    escalation = EscalationPolicy(tiering, can_verify_drafts=validator.can_verify)
    fingerprint = engines_fingerprint(scout.model_id, validator.model_id)
    front: list[Stage] = []
    if analyzer is not None:
        front.append(AnalyzerStage(analyzer, analyzer_timeout_s))
    if cache is not None:
        front.append(CacheStage(cache, cache_config, fingerprint))
    return Pipeline(
        front=front,
        generate=[ScoutStage(scout, escalation, tiering.confidence, scout_timeout_s),
                  ValidatorStage(validator, escalation, validator_timeout_s)],
        escalation=escalation,
        admission=AdmissionStage(cache, cache_config) if cache is not None else None,
        flights=Flights() if coalesce else None,
        gate=gate,
        metrics=metrics,
        cache_config=cache_config,
        fingerprint=fingerprint,
    )


def pipeline_from_config(
    config: AppConfig, scout: LLMEngine, validator: LLMEngine, *, cache: ResponseCache | None = None,
    analyzer: Analyzer | None = None, metrics: Metrics | None = None,
) -> Pipeline:
    """The application's pipeline: every setting from `config`, the parts given (the composition root's)."""
    api = config.api
    return build_pipeline(
        scout, validator, config.tiering, cache=cache, cache_config=config.cache, analyzer=analyzer,
        analyzer_timeout_s=config.analyzer.timeout_s, scout_timeout_s=config.scout.request_timeout_s,
        validator_timeout_s=config.validator.request_timeout_s, coalesce=api.coalesce,
        gate=PriorityGate(api.max_in_flight, aging_per_s=api.priority_aging_per_s) if api.max_in_flight else None,
        metrics=metrics,
    )
