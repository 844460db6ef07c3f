"""The cache stage of the request path: hits, misses, admission policy, streaming, and failures as bypasses."""

from __future__ import annotations

import asyncio
import math

import pytest

from serving.api import CacheControl
from serving.cache.edge import EdgeStore
from serving.cache.semantic import CacheLookup, ResponseCache, SemanticCache
from serving.config import CacheConfig, TieringConfig
from serving.engines.base import GenerationRequest
from serving.errors import InvalidRequestError
from serving.pipeline import build_pipeline
from tests.unit.fakes import FakeEmbedder, FakeEngine

SURE = [math.log(0.99)] * 4
BORDERLINE = [math.log(0.6)] * 4  # above the 0.5 tiering threshold, below the 0.7 admission threshold
UNSURE = [math.log(0.99)] * 3 + [math.log(0.05)]


class BrokenCache(ResponseCache):
    """A cache whose every call fails, or hangs."""

    def __init__(self, hang: bool = False) -> None:
        self.hang = hang
        self.calls = 0

    async def _fail(self):
        self.calls += 1
        if self.hang:
            await asyncio.sleep(3600)
        raise ConnectionError("qdrant is down")

    async def lookup(self, key, *, vector=None) -> CacheLookup:
        return await self._fail()

    async def admit(self, key, answer, *, vector=None, ttl_s=None, tags=None) -> str:
        return await self._fail()

    async def invalidate(self, selector) -> int:
        return await self._fail()

    async def stats(self):
        return await self._fail()

    async def raise_bound(self, entry_id, *, similarity=None, score=None) -> bool:
        return await self._fail()


def run(coro):
    return asyncio.run(coro)


@pytest.fixture
def make(tmp_path):
    made = []

    def _make(scout_lp=SURE, cache: ResponseCache | None = None, **cfg):
        scout = FakeEngine("small", ["Par", "is", ".", ""], scout_lp)
        validator = FakeEngine("large", ["Paris", " is", " the", " capital."])
        config = CacheConfig(enabled=True, similarity_threshold=0.8, **cfg)
        if cache is None:
            cache = SemanticCache(EdgeStore(tmp_path / f"s{len(made)}", FakeEmbedder.dimension), FakeEmbedder(),
                                  config)
            made.append(cache)
        router = build_pipeline(scout, validator, TieringConfig(threshold=0.5), cache=cache, cache_config=config)
        return router, scout, validator

    yield _make
    for c in made:
        run(c.close())


def req(question="What is the capital of France?", **kw) -> GenerationRequest:
    kw.setdefault("temperature", 0)
    return GenerationRequest(messages=[{"role": "user", "content": question}], **kw)


def stages(out) -> list[tuple[str, str]]:
    return [(s.stage, s.decision) for s in out.trace.stages]


def test_miss_then_admitted_then_exact_hit_without_engines(make):
    router, scout, validator = make(UNSURE)
    first = run(router.complete(req()))
    assert stages(first) == [("cache", "miss"), ("scout", "escalate"), ("validator", "answered"),
                             ("admission", "admitted")]
    second = run(router.complete(req()))
    assert second.trace.tier == "cache" and second.trace.reason == "exact"
    assert stages(second) == [("cache", "exact_hit")]
    assert second.generation.text == "Paris is the capital." and second.generation.model == "large"
    assert second.trace.stages[0].detail["entry"]["tier"] == "validator"
    assert len(scout.requests) == len(validator.requests) == 1


def test_semantic_hit_on_a_paraphrase(make):
    router, _, validator = make(UNSURE)
    run(router.complete(req()))
    out = run(router.complete(req("what is the capital city of france")))
    assert out.trace.tier == "cache" and out.trace.reason == "semantic"
    assert out.trace.stages[0].detail["similarity"] >= 0.8
    assert len(validator.requests) == 1


def test_confident_scout_answers_are_admitted_borderline_ones_are_not(make):
    router, _, _ = make(SURE)
    assert stages(run(router.complete(req())))[-1] == ("admission", "admitted")
    router, _, _ = make(BORDERLINE)
    out = run(router.complete(req()))
    assert out.trace.tier == "scout"
    assert stages(out)[-1] == ("admission", "rejected") and out.trace.stages[-1].detail["reason"] == "low_confidence"
    assert stages(run(router.complete(req())))[0] == ("cache", "miss")


def test_truncated_answers_are_not_admitted_unless_configured(make):
    router, _, _ = make(UNSURE)
    out = run(router.complete(req(max_tokens=2)))
    assert out.trace.stages[-1].detail["reason"] == "truncated"
    router, _, _ = make(UNSURE, admit_truncated=True)
    assert stages(run(router.complete(req(max_tokens=2))))[-1] == ("admission", "admitted")


def test_sampled_requests_skip_the_cache_unless_they_opt_in(make):
    router, _, _ = make(UNSURE)
    out = run(router.complete(req(temperature=0.8)))
    assert stages(out)[0] == ("cache", "skipped") and out.trace.stages[0].detail["reason"] == "sampled"
    assert "admission" not in [s for s, _ in stages(out)]
    opt_in = CacheControl(allow_sampled=True)
    run(router.complete(req(temperature=0.8), cache=opt_in))
    assert run(router.complete(req(temperature=0.8), cache=opt_in)).trace.tier == "cache"
    seeded = req(temperature=0.8, seed=7)
    run(router.complete(seeded))
    assert run(router.complete(seeded)).trace.tier == "cache"


def test_logprob_requests_skip_the_cache(make):
    router, _, _ = make(UNSURE)
    out = run(router.complete(req(logprobs=True)))
    assert out.trace.stages[0].detail["reason"] == "logprobs"


def test_bypass_and_refresh_modes(make):
    router, _, validator = make(UNSURE)
    run(router.complete(req()))
    out = run(router.complete(req(), cache=CacheControl(mode="bypass")))
    assert out.trace.tier == "validator" and stages(out)[0] == ("cache", "skipped")
    out = run(router.complete(req(), cache=CacheControl(mode="refresh")))
    assert out.trace.tier == "validator" and stages(out)[-1] == ("admission", "admitted")
    assert len(validator.requests) == 3


def test_forced_tiers_have_their_own_entries(make):
    router, _, _ = make(UNSURE)
    run(router.complete(req(), "validator"))
    assert run(router.complete(req(), "auto")).trace.tier == "validator"
    assert run(router.complete(req(), "validator")).trace.tier == "cache"


def test_namespaces_and_ttl_from_the_request(make):
    router, _, _ = make(UNSURE)
    run(router.complete(req(), cache=CacheControl(namespace="a", ttl_s=60, tags=["t"])))
    assert run(router.complete(req(), cache=CacheControl(namespace="b"))).trace.tier == "validator"
    hit = run(router.complete(req(), cache=CacheControl(namespace="a")))
    assert hit.trace.tier == "cache"


def test_ttl_above_the_limit_is_a_request_error(make):
    router, _, _ = make(UNSURE, max_ttl_s=100, default_ttl_s=50)
    with pytest.raises(InvalidRequestError, match="ttl_s"):
        run(router.complete(req(), cache=CacheControl(ttl_s=1000)))


def test_a_failing_cache_is_bypassed_and_the_request_served(make):
    broken = BrokenCache()
    router, _, _ = make(UNSURE, cache=broken)
    out = run(router.complete(req()))
    assert out.trace.tier == "validator" and out.generation.text == "Paris is the capital."
    assert stages(out) == [("cache", "bypass"), ("scout", "escalate"), ("validator", "answered")]
    assert "qdrant is down" in out.trace.stages[0].detail["error"]
    assert broken.calls == 1  # no admission attempt into a cache that just failed


def test_a_hanging_cache_times_out_into_a_bypass(make):
    router, _, _ = make(SURE, cache=BrokenCache(hang=True), timeout_s=0.2)
    out = run(router.complete(req()))
    assert out.trace.tier == "scout" and stages(out)[0] == ("cache", "bypass")
    assert out.trace.stages[0].latency_ms < 2000


def test_a_failing_admission_is_recorded_not_raised(make):
    class AdmitFails(BrokenCache):
        async def lookup(self, key, *, vector=None):
            return CacheLookup("miss")

    router, _, _ = make(UNSURE, cache=AdmitFails())
    out = run(router.complete(req()))
    assert out.trace.tier == "validator" and stages(out)[-1] == ("admission", "failed")


async def _collect(router, request, **kw):
    stream = await router.open_stream(request, **kw)
    return stream, [c async for c in stream.chunks]


def test_streamed_miss_is_admitted_and_a_streamed_hit_replays_in_chunks(make):
    router, _, validator = make(UNSURE)
    stream, chunks = run(_collect(router, req()))
    assert stream.trace.tier == "validator"
    assert [s.stage for s in stream.trace.stages][-1] == "admission"
    assert stream.trace.stages[-1].decision == "admitted"
    stream, chunks = run(_collect(router, req()))
    assert stream.trace.tier == "cache" and stream.model == "large"
    texts = [c.text for c in chunks if c.text]
    assert len(texts) > 1 and "".join(texts) == "Paris is the capital."
    assert chunks[-1].finish_reason == "stop"
    assert len(validator.requests) == 1


def test_streamed_scout_answer_is_admitted(make):
    router, _, _ = make(SURE)
    stream, _ = run(_collect(router, req()))
    assert stream.trace.tier == "scout" and stream.trace.stages[-1].decision == "admitted"
    stream, chunks = run(_collect(router, req()))
    assert stream.trace.tier == "cache" and "".join(c.text for c in chunks) == "Paris."


def test_a_stream_abandoned_midway_is_not_admitted(make):
    router, _, _ = make(UNSURE)

    async def abandon():
        stream = await router.open_stream(req())
        async for _ in stream.chunks:
            break
        await stream.chunks.aclose()
        return stream

    stream = run(abandon())
    assert "admission" not in [s.stage for s in stream.trace.stages]
    assert stages(run(router.complete(req())))[0] == ("cache", "miss")


def test_without_a_cache_there_is_no_cache_stage():
    router = build_pipeline(FakeEngine("small", ["a"], [math.log(0.99)]), FakeEngine("large", ["b"]),
                          TieringConfig())
    assert stages(run(router.complete(req()))) == [("scout", "confident")]


def test_cached_answer_is_not_confused_with_answers_of_other_engines(make, tmp_path):
    config = CacheConfig(enabled=True, similarity_threshold=0.8)
    cache = SemanticCache(EdgeStore(tmp_path / "shared", FakeEmbedder.dimension), FakeEmbedder(), config)
    try:
        unsure = [math.log(0.05)]
        old = build_pipeline(FakeEngine("small", ["a"], unsure), FakeEngine("large-v1", ["old"]), TieringConfig(),
                           cache=cache, cache_config=config)
        new = build_pipeline(FakeEngine("small", ["a"], unsure), FakeEngine("large-v2", ["new"]), TieringConfig(),
                           cache=cache, cache_config=config)
        run(old.complete(req()))
        assert run(new.complete(req())).generation.text == "new"  # upgraded model: no stale answer
    finally:
        run(cache.close())
