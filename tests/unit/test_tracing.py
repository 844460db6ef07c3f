"""OpenTelemetry spans of the request path (`serving.tracing.StageTracer`), with the real SDK and its in-memory
exporter."""

from __future__ import annotations

import asyncio
import math

import pytest

pytest.importorskip("opentelemetry.sdk", reason="the optional extra inference-optimizer[otel] is not installed")

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from serving.config import AppConfig, TieringConfig, TracingConfig
from serving.engines.base import GenerationRequest
from serving.pipeline import build_pipeline
from serving.tracing import StageTracer
from tests.unit.fakes import FakeEngine


def traced(scout_p: float) -> list:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    scout = FakeEngine("small", ["Ro", "me"], [math.log(scout_p)] * 2)
    pipeline = build_pipeline(scout, FakeEngine("large", ["Paris", "."]), TieringConfig(threshold=0.5),
                              observers=[StageTracer(provider)])
    asyncio.run(pipeline.complete(GenerationRequest(messages=[{"role": "user", "content": "Capital of France?"}],
                                                    temperature=0)))
    return list(exporter.get_finished_spans())


def test_an_escalated_request_is_one_span_with_a_child_span_per_stage_and_its_decision():
    spans = traced(0.01)
    root = next(s for s in spans if s.name == "infopt.request")
    stages = [s for s in spans if s.name.startswith("infopt.stage.")]
    assert [s.name for s in stages] == ["infopt.stage.scout", "infopt.stage.validator"]
    assert all(s.parent is not None and s.parent.span_id == root.context.span_id for s in stages)
    assert all(s.context.trace_id == root.context.trace_id for s in stages)
    assert stages[0].attributes["infopt.decision"] == "escalate"
    assert root.attributes["infopt.tier"] == "validator" and root.attributes["infopt.reason"] == "escalated"
    assert root.attributes["infopt.cost.scout.completion_tokens"] == 2  # the Scout answer thrown away, costed
    assert root.attributes["infopt.calibration"] == "uncalibrated"
    # The stages lie inside the request, in order.
    assert root.start_time <= stages[0].start_time <= stages[0].end_time <= stages[1].start_time
    assert stages[1].end_time <= root.end_time


def test_a_kept_scout_answer_is_traced_too():
    spans = traced(0.99)
    root = next(s for s in spans if s.name == "infopt.request")
    assert root.attributes["infopt.tier"] == "scout" and root.attributes["infopt.confidence"] > 0.5
    assert [s.attributes["infopt.decision"] for s in spans if s.name == "infopt.stage.scout"] == ["confident"]


def test_tracing_is_off_by_default_and_builds_an_otlp_exporter_when_on():
    assert AppConfig.model_fields["tracing"].default_factory().enabled is False
    tracer = StageTracer.from_config(TracingConfig(enabled=True, endpoint="http://127.0.0.1:9/v1/traces",
                                                   sample_ratio=0.5, service_name="infopt-test"))
    try:
        assert tracer.provider.resource.attributes["service.name"] == "infopt-test"
        assert "0.5" in tracer.provider.sampler.get_description()
    finally:
        tracer.shutdown()
