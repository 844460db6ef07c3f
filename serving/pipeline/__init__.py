"""The request pipeline: stages with typed decisions, run by one executor for streamed and non-streamed requests.

Reading order: `Route`, `Tier`, `Reason` and each stage's decision enum (`_decisions`);
the `RequestState` the stages write and the route trace is written from (`_state`);
the stages — `AnalyzerStage`, `CacheStage`, `ScoutStage`, `ValidatorStage`,
`StrategyStage`, `AdmissionStage` — each asking its policy (`serving.policy`); the `Pipeline` that runs
them (`_executor`), sharing computations of identical requests (`_flights`); and
`build_pipeline` / `pipeline_from_config`, which put one together.
"""

from serving.pipeline._analyze import AnalyzerStage
from serving.pipeline._build import build_pipeline, pipeline_from_config
from serving.pipeline._cache import AdmissionStage, CacheStage
from serving.pipeline._decisions import (
    AdmissionDecision,
    AnalyzerDecision,
    CacheDecision,
    CoalescedDecision,
    Decision,
    Reason,
    Route,
    ScoutDecision,
    SkipReason,
    StageName,
    StrategyDecision,
    Tier,
    ValidatorDecision,
)
from serving.pipeline._executor import Pipeline, Routed, RoutedStream, engines_fingerprint
from serving.pipeline._flights import Flight, Flights
from serving.pipeline._scout import ScoutStage
from serving.pipeline._stage import Observer, Stage, assemble, replay
from serving.pipeline._state import Admission, Cost, RequestState, StageOutcome, TierCost
from serving.pipeline._strategy import StrategyStage
from serving.pipeline._validator import ValidatorStage

__all__ = [
    "Admission",
    "AdmissionDecision",
    "AdmissionStage",
    "AnalyzerDecision",
    "AnalyzerStage",
    "CacheDecision",
    "CacheStage",
    "CoalescedDecision",
    "Cost",
    "Decision",
    "Flight",
    "Flights",
    "Observer",
    "Pipeline",
    "Reason",
    "RequestState",
    "Route",
    "Routed",
    "RoutedStream",
    "ScoutDecision",
    "ScoutStage",
    "SkipReason",
    "Stage",
    "StageName",
    "StageOutcome",
    "StrategyDecision",
    "StrategyStage",
    "Tier",
    "TierCost",
    "ValidatorDecision",
    "ValidatorStage",
    "assemble",
    "build_pipeline",
    "engines_fingerprint",
    "pipeline_from_config",
    "replay",
]
