"""Configuration of the OpenAI-compatible front door."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from serving.config.engine import (
    QUEUED_DESCRIPTION,
    RESOURCES_DESCRIPTION,
    AutoscalingConfig,
    check_custom_resources,
    check_replicas,
    replicas_description,
)


class ApiConfig(BaseModel):
    """Limits the ingress enforces before any engine sees a request."""

    model_config = ConfigDict(extra="forbid")

    max_tokens_limit: int = Field(
        1024, ge=1, description="Largest max_tokens a request may ask for; larger gets a 400."
    )
    default_max_tokens: int = Field(
        256, ge=1, description="max_tokens used when a request does not set it."
    )
    max_stop_sequences: int = Field(4, ge=0, description="Most stop sequences a request may give.")
    model_name: str = Field(
        "auto", description="Public name of the optimizer's own model in /v1/models and responses."
    )
    num_cpus: float = Field(0.1, gt=0, description="Ray CPUs reserved by each ingress replica.")
    num_replicas: int = Field(1, ge=1, description="Ingress replicas.")
    autoscaling: AutoscalingConfig | None = Field(None, description=replicas_description("Ingress"))
    max_ongoing_requests: int = Field(
        256, ge=1, description="Requests one ingress replica handles at once."
    )
    max_queued_requests: int = Field(-1, ge=-1, description=QUEUED_DESCRIPTION)
    resources: dict[str, float] = Field(default_factory=dict, description=RESOURCES_DESCRIPTION)
    coalesce: bool = Field(
        True, description="Identical deterministic requests in flight (same exact cache key) share one computation."
    )
    max_in_flight: int | None = Field(
        32, ge=1, description="Generations one ingress replica runs at once; more wait in our priority queue "
        "(interactive before batch). None: no queue of our own (Ray Serve's and vLLM's only).",
    )
    priority_aging_per_s: float = Field(
        0.5, ge=0, description="In that queue, a waiting request's priority value drops by this much per second "
        "waited, so batch traffic is delayed, never starved (batch, 10, waiting 20 s competes as interactive, 0). "
        "0: strict priority.",
    )

    @field_validator("resources")
    @classmethod
    def _resources(cls, v: dict[str, float]) -> dict[str, float]:
        return check_custom_resources(v)

    @model_validator(mode="after")
    def _defaults_within_limit(self) -> ApiConfig:
        check_replicas(self.num_replicas, self.autoscaling, "api")
        if self.default_max_tokens > self.max_tokens_limit:
            raise ValueError(
                f"default_max_tokens ({self.default_max_tokens}) exceeds max_tokens_limit ({self.max_tokens_limit})"
            )
        return self
