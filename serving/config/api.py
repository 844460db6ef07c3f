"""Configuration of the OpenAI-compatible front door."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from serving.config.deployment import IngressDeployment
from serving.config.moved import reject_moved, to_deployment

_MOVED = to_deployment("api")


class DashboardConfig(BaseModel):
    """The live page: what it shows is a rolling window of the Ingress replica's finished requests."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(True, description="Serve the page and its data; off: both answer 404.")
    window_s: float = Field(900.0, gt=0, le=86_400, description="Seconds of finished requests the page shows.")
    bucket_s: float = Field(10.0, gt=0, description="Width in seconds of one point of the page's time series.")
    max_requests: int = Field(20_000, ge=100, description="Most requests kept in the window (memory bound).")
    refresh_s: float = Field(2.0, gt=0, description="How often the page asks for new data.")


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
    max_choices: int = Field(
        16, ge=1, le=64, description="Largest `n` (choices) and `strategy.n` (candidates) a request may ask for.")
    max_body_bytes: int = Field(
        4 << 20, ge=1024, description="Largest request body accepted; a larger one is a 413 before it is parsed.")
    max_prompt_chars: int = Field(
        400_000, ge=1, description="Most characters of prompt (all messages together) a request may send; more is "
        "a 400 before any model or tokenizer reads it (no window here holds that much).")
    model_name: str = Field(
        "auto", description="Public name of the optimizer's own model in /v1/models and responses."
    )
    coalesce: bool = Field(
        True, description="Identical deterministic requests in flight (same exact cache key) share one computation."
    )
    max_in_flight: int | None = Field(
        32, ge=1, description="Generations one ingress replica runs at once; more wait in our priority queue "
        "(interactive before batch). None: no queue of our own (Ray Serve's and vLLM's only).",
    )
    max_waiting: int | None = Field(
        256, ge=0, description="Most requests waiting in that queue; one more gets a 429 with Retry-After at once "
        "(None: unbounded).")
    max_wait_s: float | None = Field(
        60.0, gt=0, description="Longest a request waits in that queue for a slot; then a 503 with Retry-After "
        "(None: no deadline).")
    request_timeout_s: float | None = Field(
        900.0, gt=0, description="End-to-end deadline of one request, our queue included: a non-streamed request "
        "gets a 504 (the work is cancelled, and vLLM aborts it); a stream ends with a timeout error event and [DONE]. "
        "None: only the engines' own request_timeout_s.")
    breaker_failures: int | None = Field(
        3, ge=1, description="Consecutive failures (errors or timeouts) of the analyzer, the cache or the Scout "
        "after which it is skipped for breaker_reset_s (the request takes its fallback at once); None: no "
        "circuit breakers.")
    breaker_reset_s: float = Field(30.0, gt=0, description="How long an open circuit skips its dependency before "
                                   "one request probes it again.")
    priority_aging_per_s: float = Field(
        0.5, ge=0, description="In that queue, a waiting request's priority value drops by this much per second "
        "waited, so batch traffic is delayed, never starved (batch, 10, waiting 20 s competes as interactive, 0). "
        "0: strict priority.",
    )
    dashboard: DashboardConfig = Field(
        default_factory=DashboardConfig,
        description="The live page at /dashboard and its data at /v1/dashboard/state (behind an admin key when keys "
        "are configured).",
    )
    deployment: IngressDeployment = Field(
        default_factory=IngressDeployment,
        description="Ray Serve options of the Ingress deployment (replicas, queues, CPUs, resources); the request "
        "analyzer runs inside it.",
    )

    @model_validator(mode="before")
    @classmethod
    def _moved(cls, data: Any) -> Any:
        return reject_moved(data, "api", _MOVED)

    @model_validator(mode="after")
    def _defaults_within_limit(self) -> ApiConfig:
        if self.default_max_tokens > self.max_tokens_limit:
            raise ValueError(
                f"default_max_tokens ({self.default_max_tokens}) exceeds max_tokens_limit ({self.max_tokens_limit})"
            )
        return self
