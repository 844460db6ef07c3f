"""Load: adaptive batching, arrival-rate forecasts and the Validator's cascade-aware autoscaling."""

from serving.load.autoscaling import (
    CascadeApplicationPolicy,
    CascadeAutoscalingPolicy,
    CascadeSignals,
    CascadeStats,
    cascade_replicas,
    request_based_replicas,
)
from serving.load.batching import AdaptiveBatching, ArrivalRate, BatchController, BatchParams, batch_params
from serving.load.forecast import ArrivalForecaster, Holt, mape

__all__ = [
    "AdaptiveBatching",
    "ArrivalForecaster",
    "ArrivalRate",
    "BatchController",
    "BatchParams",
    "CascadeApplicationPolicy",
    "CascadeAutoscalingPolicy",
    "CascadeSignals",
    "CascadeStats",
    "Holt",
    "batch_params",
    "cascade_replicas",
    "mape",
    "request_based_replicas",
]
