import asyncio
import math

import pytest

from serving.config import TieringConfig
from serving.engines.base import GenerationRequest
from serving.errors import EngineTimeoutError, EngineUnavailableError
from serving.metrics import Metrics
from serving.pipeline import Pipeline, build_pipeline
from tests.unit.fakes import FakeEngine

SURE = [math.log(0.99)] * 4
UNSURE = [math.log(0.99)] * 3 + [math.log(0.05)]


def make(scout_lp=SURE, **kw) -> tuple[Pipeline, FakeEngine, FakeEngine]:
    scout = FakeEngine("small", ["Par", "is", ".", ""], scout_lp, fail=kw.pop("scout_fail", False),
                       delay_s=kw.pop("scout_delay", 0.0))
    validator = FakeEngine("large", ["Paris", " is", " the", " capital"], fail=kw.pop("validator_fail", False),
                           delay_s=kw.pop("validator_delay", 0.0))
    tiering = TieringConfig(threshold=kw.pop("threshold", 0.5), enabled=kw.pop("enabled", True))
    return build_pipeline(scout, validator, tiering, **kw), scout, validator


def req(**kw) -> GenerationRequest:
    return GenerationRequest(messages=[{"role": "user", "content": "capital of France?"}], temperature=0, **kw)


def run(coro):
    return asyncio.run(coro)


def test_confident_scout_answers_and_validator_is_not_called():
    router, _scout, validator = make(SURE)
    out = run(router.complete(req()))
    assert out.trace.tier == "scout" and out.trace.reason == "confident"
    assert out.generation.model == "small"
    assert validator.requests == []
    assert [s.stage for s in out.trace.stages] == ["scout"]
    assert out.trace.confidence == pytest.approx(0.99)


def test_unsure_scout_escalates_to_validator():
    router, _scout, validator = make(UNSURE)
    out = run(router.complete(req()))
    assert out.trace.tier == "validator" and out.trace.reason == "escalated"
    assert [(s.stage, s.decision) for s in out.trace.stages] == [("scout", "escalate"), ("validator", "answered")]
    assert out.generation.text == "Paris is the capital"
    assert len(validator.requests) == 1


def test_scout_always_gets_logprobs_but_user_sees_them_only_when_asked():
    router, scout, _ = make(SURE)
    out = run(router.complete(req(logprobs=False)))
    assert scout.requests[0].logprobs is True
    assert out.generation.tokens is None
    out = run(router.complete(req(logprobs=True)))
    assert out.generation.tokens is not None


def test_per_request_threshold_overrides_config():
    router, _, _ = make(SURE, threshold=0.5)
    assert run(router.complete(req(), threshold=0.999)).trace.tier == "validator"
    router, _, _ = make(UNSURE, threshold=0.5)
    assert run(router.complete(req(), threshold=0.01)).trace.tier == "scout"


def test_forcing_tiers():
    router, scout, validator = make(UNSURE)
    out = run(router.complete(req(), model="scout"))
    assert out.trace.tier == "scout" and out.trace.reason == "forced"
    assert validator.requests == []
    router, scout, validator = make(SURE)
    out = run(router.complete(req(), model="validator"))
    assert out.trace.tier == "validator" and out.trace.reason == "forced"
    assert scout.requests == []


def test_tiering_disabled_goes_straight_to_validator():
    router, scout, _ = make(SURE, enabled=False)
    out = run(router.complete(req()))
    assert out.trace.reason == "tiering_disabled" and scout.requests == []


def test_failed_scout_escalates_in_auto_but_fails_when_forced():
    router, _, _ = make(SURE, scout_fail=True)
    out = run(router.complete(req()))
    assert out.trace.tier == "validator" and out.trace.reason == "scout_failed"
    assert out.trace.stages[0].decision == "failed"
    with pytest.raises(EngineUnavailableError) as info:
        run(router.complete(req(), model="scout"))
    assert info.value.route.stages[0].decision == "failed"


def test_validator_failure_carries_the_route_trace():
    router, _, _ = make(UNSURE, validator_fail=True)
    with pytest.raises(EngineUnavailableError) as info:
        run(router.complete(req()))
    assert [(s.stage, s.decision) for s in info.value.route.stages] == [("scout", "escalate"), ("validator", "failed")]


def test_validator_timeout_is_a_504_error_with_trace():
    router, _, _ = make(UNSURE, validator_delay=1.0, validator_timeout_s=0.05)
    with pytest.raises(EngineTimeoutError) as info:
        run(router.complete(req()))
    assert info.value.status_code == 504
    assert info.value.route.total_ms is not None


def test_stream_scout_replays_tokens_and_trace_is_known_first():
    router, _, validator = make(SURE)

    async def go():
        s = await router.open_stream(req())
        assert s.trace.tier == "scout"
        return [c async for c in s.chunks]

    chunks = run(go())
    assert "".join(c.text for c in chunks) == "Paris."
    assert chunks[-1].finish_reason == "stop"
    assert validator.requests == []


def test_stream_validator_decided_before_first_chunk_and_stages_complete_after():
    router, _, _ = make(UNSURE)

    async def go():
        s = await router.open_stream(req())
        assert s.trace.tier == "validator" and s.trace.reason == "escalated"
        chunks = [c async for c in s.chunks]
        return s.trace, chunks

    trace, chunks = run(go())
    assert "".join(c.text for c in chunks) == "Paris is the capital"
    assert [s.stage for s in trace.stages] == ["scout", "validator"]


def test_stream_validator_timeout_raises_with_trace():
    router, _, _ = make(UNSURE, validator_delay=0.2, validator_timeout_s=0.3)

    async def go():
        s = await router.open_stream(req())
        return [c async for c in s.chunks]

    with pytest.raises(EngineTimeoutError) as info:
        run(go())
    assert info.value.route.stages[-1].decision == "failed"


class RecordingMetrics(Metrics):
    def __init__(self) -> None:
        self.stages: list[tuple[str, str]] = []

    def stage(self, stage: str, decision: str, latency_ms: float) -> None:
        self.stages.append((stage, decision))


def test_every_recorded_stage_reaches_the_metrics_even_when_a_stream_fails():
    metrics = RecordingMetrics()
    router, _, _ = make(UNSURE, validator_fail=True, metrics=metrics)

    async def go():
        s = await router.open_stream(req())
        return [c async for c in s.chunks]

    with pytest.raises(EngineUnavailableError) as info:
        run(go())
    assert metrics.stages == [(s.stage, s.decision) for s in info.value.route.stages]
    assert metrics.stages == [("scout", "escalate"), ("validator", "failed")]
