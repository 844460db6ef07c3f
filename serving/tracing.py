"""OpenTelemetry traces of the request path: one span per request, one child span per stage with its decision.

`StageTracer` is an `Observer` of the pipeline: once a request is answered it writes the spans
from what the stages recorded (each stage's start, latency, decision and figures), so tracing
adds nothing to the request's own path and a tracing failure cannot fail a request. It takes an
OpenTelemetry `TracerProvider` (injected: tests give one with an in-memory exporter);
`StageTracer.from_config` builds the OTLP/HTTP one that `tracing` configures. The OpenTelemetry
SDK and exporter are the optional extra `inference-optimizer[otel]`; they are imported only when
tracing is on.

Span names: `infopt.request` (attributes `infopt.route`, `infopt.tier`, `infopt.reason`,
`infopt.namespace`, `infopt.confidence`, `infopt.calibration`, `infopt.ttft_ms`, and per tier
`infopt.cost.<tier>.engine_s` / `.completion_tokens`), and `infopt.stage.<stage>` (attributes
`infopt.decision` and `infopt.detail.<key>` for each scalar figure the stage recorded).
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from serving.pipeline._stage import Observer

if TYPE_CHECKING:
    from serving.config.tracing import TracingConfig
    from serving.pipeline import RequestState

logger = logging.getLogger(__name__)
_SCALARS = (str, int, float, bool)


def _attributes(prefix: str, values: dict[str, Any]) -> dict[str, Any]:
    """The scalar entries of `values` as span attributes (OpenTelemetry takes scalars and lists of them)."""
    out: dict[str, Any] = {}
    for k, v in values.items():
        if isinstance(v, _SCALARS):
            out[f"{prefix}{k}"] = v
        elif isinstance(v, list | tuple) and v and all(isinstance(x, str) for x in v):
            out[f"{prefix}{k}"] = list(v)
    return out


class StageTracer(Observer):
    """Writes each answered request's spans to `provider`'s tracer (see the module docstring)."""

    def __init__(self, provider: Any) -> None:
        self.provider = provider
        self.tracer = provider.get_tracer("inference-optimizer")

    @classmethod
    def from_config(cls, config: TracingConfig) -> StageTracer:
        """The OTLP/HTTP exporter behind a batching processor (spans leave in the background)."""
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
            from opentelemetry.sdk.resources import Resource
            from opentelemetry.sdk.trace import TracerProvider
            from opentelemetry.sdk.trace.export import BatchSpanProcessor
            from opentelemetry.sdk.trace.sampling import TraceIdRatioBased
        except ImportError as exc:
            raise RuntimeError("tracing.enabled needs OpenTelemetry: pip install 'inference-optimizer[otel]'") \
                from exc
        provider = TracerProvider(resource=Resource.create({"service.name": config.service_name}),
                                  sampler=TraceIdRatioBased(config.sample_ratio))
        exporter = OTLPSpanExporter(endpoint=config.endpoint, headers=config.headers or None)
        provider.add_span_processor(BatchSpanProcessor(exporter))
        return cls(provider)

    def observe(self, state: RequestState) -> None:
        total_ms = state.total_ms or 0.0
        end_ns = time.time_ns()
        start_ns = end_ns - int(total_ms * 1e6)
        attributes: dict[str, Any] = {
            "infopt.route": str(state.route), "infopt.tier": str(state.tier or "none"),
            "infopt.reason": str(state.reason or ""), "infopt.calibration": state.calibration,
            "infopt.namespace": state.key.namespace if state.key is not None else "default",
            "infopt.total_ms": total_ms,
        }
        if state.confidence is not None:
            attributes["infopt.confidence"] = state.confidence
        if state.ttft_ms is not None:
            attributes["infopt.ttft_ms"] = state.ttft_ms
        for tier, cost in [*state.cost.tiers.items(), *((f"{t}_check", c) for t, c in state.cost.checks.items())]:
            attributes[f"infopt.cost.{tier}.engine_s"] = round(cost.engine_s, 6)
            attributes[f"infopt.cost.{tier}.completion_tokens"] = cost.completion_tokens
        root = self.tracer.start_span("infopt.request", start_time=start_ns, attributes=attributes)
        try:
            from opentelemetry import trace

            context = trace.set_span_in_context(root)
            for outcome in state.outcomes:
                begin = start_ns + int(outcome.offset_ms * 1e6)
                span = self.tracer.start_span(
                    f"infopt.stage.{outcome.stage}", context=context, start_time=begin,
                    attributes={"infopt.decision": str(outcome.decision),
                                **_attributes("infopt.detail.", outcome.detail)})
                span.end(end_time=begin + int(outcome.latency_ms * 1e6))
        finally:
            root.end(end_time=end_ns)

    def shutdown(self) -> None:
        """Flush what is buffered (at replica shutdown)."""
        self.provider.shutdown()
