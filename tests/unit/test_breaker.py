"""Circuit breakers: an outage costs its timeout once, not on every request."""

from __future__ import annotations

import asyncio

from serving.breaker import CircuitBreaker
from serving.config import TieringConfig
from serving.engines.base import GenerationRequest
from serving.pipeline import build_pipeline
from tests.unit.fakes import FakeClock, FakeEngine
from tests.unit.test_stages import ScriptedCache


def test_opens_after_consecutive_failures_and_probes_once_after_reset():
    clock = FakeClock(0.0)
    b = CircuitBreaker("cache", failures=3, reset_s=10, clock=clock)
    for _ in range(2):
        assert b.allow()
        b.failure()
    b.success()  # a success in between resets the count
    for _ in range(3):
        b.failure()
    assert b.state == "open" and not b.allow()
    clock.now = 10.0
    assert b.state == "half_open" and b.allow() and not b.allow()  # one probe at a time
    b.failure()  # the probe failed: open for another reset_s
    assert not b.allow()
    clock.now = 20.0
    assert b.allow()
    b.success()
    assert b.state == "closed" and b.allow()


def test_a_slow_cache_costs_its_timeout_once_then_is_skipped():
    class Slow(ScriptedCache):
        async def lookup(self, key, *, vector=None):
            self.lookups.append((key, vector))
            await asyncio.sleep(1.0)

    cache = Slow()
    from serving.config import CacheConfig

    pipeline = build_pipeline(FakeEngine("small", ["Par", "is"]), FakeEngine("large", ["Paris"]), TieringConfig(),
                              cache=cache, cache_config=CacheConfig(enabled=True, timeout_s=0.05),
                              breakers=(2, 60.0))

    async def go():
        outs = []
        for i in range(5):
            req = GenerationRequest(messages=[{"role": "user", "content": f"q{i}"}], temperature=0)
            outs.append(await pipeline.complete(req))
        return outs

    outs = asyncio.run(go())
    assert len(cache.lookups) == 2  # two timeouts open the circuit; the next three skip the cache at once
    cache_stages = [o.trace.stages[0] for o in outs]
    assert [s.decision for s in cache_stages] == ["bypass"] * 5
    assert all("circuit open" in s.detail["error"] for s in cache_stages[2:])
    assert all(o.trace.tier == "scout" for o in outs)  # answers never failed


def test_a_failing_scout_is_skipped_straight_to_the_validator():
    scout = FakeEngine("small", ["x"], fail=True)
    pipeline = build_pipeline(scout, FakeEngine("large", ["Paris"]), TieringConfig(), breakers=(1, 60.0))

    async def go():
        return [await pipeline.complete(GenerationRequest(messages=[{"role": "user", "content": f"q{i}"}],
                                                          temperature=0)) for i in range(3)]

    outs = asyncio.run(go())
    assert len(scout.requests) == 1
    assert [(o.trace.tier, o.trace.reason) for o in outs] == [("validator", "scout_failed")] * 3
    assert "circuit open" in outs[2].trace.stages[0].detail["error"]


def test_a_forced_scout_behind_an_open_circuit_is_a_503_with_its_trace():
    import pytest

    from serving.errors import EngineUnavailableError

    pipeline = build_pipeline(FakeEngine("small", ["x"], fail=True), FakeEngine("large", ["Paris"]), TieringConfig(),
                              breakers=(1, 60.0))
    req = GenerationRequest(messages=[{"role": "user", "content": "q"}], temperature=0)
    with pytest.raises(EngineUnavailableError):
        asyncio.run(pipeline.complete(req, model="scout"))  # a real failure opens the circuit
    with pytest.raises(EngineUnavailableError, match="circuit open") as info:
        asyncio.run(pipeline.complete(req, model="scout"))
    assert [(s.stage, s.decision) for s in info.value.route.stages] == [("scout", "failed")]
