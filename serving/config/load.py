"""Configuration of load prediction: the arrival forecast, the Validator's cascade autoscaling, and the
adaptive batching of `@serve.batch` methods (`serving.load`)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class AdaptiveBatchingConfig(BaseModel):
    """How `@serve.batch` methods (the Embedder's) adapt batch size and wait to the arrival rate.

    The configured `max_batch_size` / `batch_wait_timeout_s` of a batched method are the
    ceilings; the controller (`serving.load.batching`) moves below them. See its docstring.
    """

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(True, description="Adapt batch size and wait to the measured arrival rate; false keeps "
                          "the configured values.")
    min_wait_s: float = Field(0.0, ge=0, description="Wait of a batch at low load (nothing else is coming).")
    halflife_s: float = Field(
        2.0, gt=0, description="Half-life of the decayed arrival count that estimates the arrival rate."
    )
    update_interval_s: float = Field(
        0.5, ge=0, description="Least time between two changes of the batch parameters (avoids churn)."
    )


class CascadeAutoscalingConfig(BaseModel):
    """The Validator's cascade-aware autoscaling policy (`serving.load.autoscaling`)."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(
        False, description="Scale the Validator by forecast cascade load instead of its ongoing requests (an "
        "application-level autoscaling policy: needs a Serve config deploy)."
    )
    target_ongoing_requests: float = Field(
        8.0, gt=0, description="Concurrent Validator requests one replica should carry (Little's law target)."
    )
    headroom_sigmas: float = Field(
        1.0, ge=0, description="Capacity kept above the mean Validator load, in standard deviations of its "
        "in-flight count (sqrt(load): Poisson, as in an M/G/inf queue)."
    )
    horizon_s: float = Field(
        60.0, ge=0, description="How far ahead the arrival forecast looks: about a Validator replica's start time."
    )
    scale_down_hysteresis: float = Field(
        0.2, ge=0, lt=1, description="Scale down only when the smaller count would be loaded at most "
        "(1 - this) of its target."
    )
    downscale_delay_s: float = Field(
        120.0, ge=0, description="How long the load must stay low before a replica is removed."
    )
    default_escalation_rate: float = Field(
        0.5, ge=0, le=1, description="Share of cache misses that reach the Validator, used until one is measured."
    )
    default_service_time_s: float = Field(
        5.0, gt=0, description="Mean Validator request time, used until one is measured."
    )


class LoadConfig(BaseModel):
    """Per-class arrival-rate forecast (Holt's linear trend), the Validator autoscaling policy built on it,
    and the adaptive batching that follows the measured arrival rate."""

    model_config = ConfigDict(extra="forbid")

    interval_s: float = Field(5.0, gt=0, description="Length of one forecast step (arrivals are counted per step).")
    level_alpha: float = Field(0.3, gt=0, le=1, description="Holt smoothing of the arrival-rate level.")
    trend_beta: float = Field(0.05, ge=0, le=1, description="Holt smoothing of the arrival-rate trend.")
    damping: float = Field(
        0.9, gt=0, le=1, description="Damped trend factor per step (1 = Holt's plain linear trend)."
    )
    autoscaling: CascadeAutoscalingConfig = Field(
        default_factory=CascadeAutoscalingConfig, description="The Validator's cascade-aware autoscaling."
    )
    batching: AdaptiveBatchingConfig = Field(
        default_factory=AdaptiveBatchingConfig, description="Adaptive batch size and wait of batched deployments."
    )
