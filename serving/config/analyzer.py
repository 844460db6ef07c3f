"""Configuration of the request analyzer, the adaptive batching of `@serve.batch` methods and load planning."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from serving.config.engine import (
    QUEUED_DESCRIPTION,
    RESOURCES_DESCRIPTION,
    AutoscalingConfig,
    check_custom_resources,
    check_replicas,
    replicas_description,
)

DEFAULT_OUTPUT_TOKENS = {"short_answer": 16, "chat": 256, "math": 320, "code": 512, "reasoning": 512}


class AdaptiveBatchingConfig(BaseModel):
    """How `@serve.batch` methods (Embedder, analyzer) adapt batch size and wait to the arrival rate.

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
    """Per-class arrival-rate forecast (Holt's linear trend) and the Validator autoscaling policy."""

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


class AnalyzerConfig(BaseModel):
    """The request analyzer: profile, complexity, priority and strategy of each request (a `RoutePlan`)."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(
        False, description="Analyze requests before the cache; send predicted-hard ones straight to the Validator."
    )
    artifact: Path | None = Field(
        None, description="Complexity model JSON (default: serving/analyzer/complexity-v1.json, from "
        "scripts/train_analyzer.py)."
    )
    direct_threshold: float = Field(
        0.4, ge=0, le=1, description="Complexity (P(Scout not good enough)) at or above which an 'auto' request "
        "skips the Scout (strategy validator_direct); 1 never skips it. 0.4 sends ~1% direct, mostly hard "
        "(scripts/eval_analyzer.py)."
    )
    tokenizer: str | None = Field(
        None, description="Model whose tokenizer counts prompt tokens (default: the Validator's)."
    )
    timeout_s: float = Field(
        1.0, gt=0, description="An analysis slower than this is abandoned; the request takes the default path."
    )
    priority_header: str = Field("x-infopt-priority", description="Request header naming the priority class.")
    default_priority: str = Field("interactive", description="Priority class of requests that name none.")
    priorities: dict[str, int] = Field(
        default_factory=lambda: {"interactive": 0, "batch": 10},
        description="Priority classes and their vLLM priority (lower is served first; the engines "
        "apply it with <engine>.scheduling_policy 'priority', the default).",
    )
    tenant_priorities: dict[str, str] = Field(
        default_factory=dict,
        description="Priority class per API key, keyed by the key's sha256 hex digest; it wins over the header.",
    )
    expected_output_tokens: dict[str, int] = Field(
        default_factory=lambda: dict(DEFAULT_OUTPUT_TOKENS),
        description="Expected answer length per task kind (short_answer, chat, math, code, reasoning), the "
        "max_tokens prediction for resource planning.",
    )
    num_cpus: float = Field(0.1, gt=0, description="Ray CPUs reserved by each RequestAnalyzer replica.")
    num_replicas: int = Field(1, ge=1, description="RequestAnalyzer replicas.")
    autoscaling: AutoscalingConfig | None = Field(None, description=replicas_description("RequestAnalyzer"))
    max_queued_requests: int = Field(-1, ge=-1, description=QUEUED_DESCRIPTION)
    resources: dict[str, float] = Field(default_factory=dict, description=RESOURCES_DESCRIPTION)
    max_batch_size: int = Field(16, ge=1, description="Most requests analyzed in one `@serve.batch` call.")
    batch_wait_timeout_s: float = Field(0.005, ge=0, description="Longest a batch of analyses waits to fill.")
    batching: AdaptiveBatchingConfig = Field(
        default_factory=AdaptiveBatchingConfig, description="Adaptive batch size and wait of batched deployments."
    )
    load: LoadConfig = Field(default_factory=LoadConfig, description="Arrival forecast and Validator autoscaling.")

    @field_validator("resources")
    @classmethod
    def _resources(cls, v: dict[str, float]) -> dict[str, float]:
        return check_custom_resources(v)

    @model_validator(mode="after")
    def _known_classes(self) -> AnalyzerConfig:
        check_replicas(self.num_replicas, self.autoscaling, "analyzer")
        if self.default_priority not in self.priorities:
            raise ValueError(f"default_priority '{self.default_priority}' is not one of the priorities "
                             f"{sorted(self.priorities)}")
        unknown = sorted(set(self.tenant_priorities.values()) - set(self.priorities))
        if unknown:
            raise ValueError(f"tenant_priorities name unknown classes {unknown} (known: {sorted(self.priorities)})")
        missing = sorted(set(DEFAULT_OUTPUT_TOKENS) - set(self.expected_output_tokens))
        if missing:
            raise ValueError(f"expected_output_tokens lacks task kinds {missing}")
        return self
