"""Configuration of OpenTelemetry tracing (an optional extra: `inference-optimizer[otel]`)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class TracingConfig(BaseModel):
    """One OpenTelemetry span per request and one child span per stage, carrying its decision, exported over OTLP.
    Off by default."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(False, description="Export a trace of every answered request over OTLP.")
    endpoint: str | None = Field(
        None, description="The OTLP/HTTP traces endpoint, e.g. http://otel-collector:4318/v1/traces (None: the "
        "exporter's own default and OTEL_EXPORTER_OTLP_* environment variables).")
    headers: dict[str, str] = Field(default_factory=dict, description="Extra HTTP headers of the OTLP exporter "
                                    "(e.g. an authorization header of a hosted collector).")
    service_name: str = Field("inference-optimizer", description="The `service.name` resource attribute.")
    sample_ratio: float = Field(1.0, ge=0, le=1, description="Share of requests traced (a trace-id ratio sampler).")
