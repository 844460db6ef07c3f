"""Near misses of the cache as drafts, and streamed verification, on the request path (fakes)."""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator

import pytest

from serving.cache.edge import EdgeStore
from serving.cache.keys import cache_key
from serving.cache.semantic import CachedAnswer, SemanticCache
from serving.config import CacheConfig, TieringConfig
from serving.engines.base import GenerationChunk, GenerationRequest, Usage
from serving.errors import ContextLengthExceededError
from serving.pipeline import build_pipeline
from serving.verify import DraftOutcome, Verified
from tests.unit.fakes import FakeEmbedder, FakeEngine

UNSURE = [math.log(0.99)] * 3 + [math.log(0.05)]
SURE = [math.log(0.99)] * 4
ASKED = "What is the capital of France?"
NEAR = "What is the capital city of France?"  # bag-of-words similarity ~0.9: a near miss, not a hit


class VerifyingEngine(FakeEngine):
    """A Validator fake that can verify: it records each draft and accepts its first word."""

    can_verify = True

    def __init__(self, *a, **kw) -> None:
        super().__init__(*a, **kw)
        self.drafts: list[str] = []

    def _outcome(self, draft: str) -> DraftOutcome:
        proposed = len(draft.split())
        accepted = min(1, proposed)
        return DraftOutcome(proposed, accepted, accepted + 1)

    async def verify(self, request, draft):
        self.drafts.append(draft)
        gen = await self.generate(request)
        o = self._outcome(draft)
        return Verified(gen, o.proposed, o.accepted, gen.usage.completion_tokens - o.accepted, o.saved)

    async def verify_stream(self, request, draft) -> AsyncIterator[GenerationChunk]:
        self.drafts.append(draft)
        o = self._outcome(draft)
        toks = self.tokens[: request.max_tokens]
        yield GenerationChunk(text="".join(toks[:o.accepted + 1]), draft=o)
        for t in toks[o.accepted + 1:]:
            yield GenerationChunk(text=t)
        yield GenerationChunk(finish_reason="stop", usage=Usage(5, len(toks)))


def run(coro):
    return asyncio.run(coro)


def req(question: str = ASKED, **kw) -> GenerationRequest:
    kw.setdefault("temperature", 0)
    return GenerationRequest(messages=[{"role": "user", "content": question}], **kw)


@pytest.fixture
def setup(tmp_path):
    made = []

    def _make(verified: bool = True, scout_lp=UNSURE, **cfg):
        cfg.setdefault("similarity_threshold", 0.95)
        cfg.setdefault("draft_threshold", 0.6)
        config = CacheConfig(enabled=True, **cfg)
        cache = SemanticCache(EdgeStore(tmp_path / f"s{len(made)}", FakeEmbedder.dimension), FakeEmbedder(), config)
        made.append(cache)
        scout = FakeEngine("small", ["Par", "is", ".", ""], scout_lp)
        validator = VerifyingEngine("large", ["Paris", " is", " the", " capital."])
        router = build_pipeline(scout, validator, TieringConfig(threshold=0.5, verified_escalation=verified),
                              cache=cache, cache_config=config)
        return router, scout, validator, cache

    yield _make
    for c in made:
        run(c.close())


def stages(trace) -> list[tuple[str, str]]:
    return [(s.stage, s.decision) for s in trace.stages]


def test_the_questions_are_a_near_miss_for_the_fake_embedder():
    a, b = FakeEmbedder.vector(ASKED), FakeEmbedder.vector(NEAR)
    assert 0.6 <= sum(x * y for x, y in zip(a, b, strict=True)) < 0.95


def test_a_near_miss_is_verified_by_the_validator_without_the_scout(setup):
    router, scout, validator, _ = setup()
    first = run(router.complete(req()))
    assert first.trace.stages[-1].decision == "admitted"
    asked = len(scout.requests)
    out = run(router.complete(req(NEAR)))
    assert stages(out.trace) == [("cache", "miss"), ("scout", "skipped"), ("validator", "verified"),
                                 ("admission", "admitted")]
    assert len(scout.requests) == asked  # the Scout was not asked
    assert out.trace.stages[1].detail == {"reason": "near_miss_draft"}
    near = out.trace.stages[0].detail["near_miss"]
    assert 0.6 <= near["similarity"] < 0.95 and near["entry"]
    v = out.trace.stages[2].detail
    assert v["draft_source"] == "cache" and v["draft_similarity"] == near["similarity"]
    assert v["accepted_tokens"] == 1 and v["saved_tokens"] == 2
    assert validator.drafts[-1] == first.generation.text  # the cached answer was the draft
    assert out.trace.tier == "validator" and out.trace.reason == "near_miss"


def test_a_near_miss_stream_sends_the_verified_prefix_first(setup):
    router, _, _validator, _ = setup()
    run(router.complete(req()))

    async def go():
        stream = await router.open_stream(req(NEAR))
        assert stream.trace.reason == "near_miss"  # decided before the first chunk (the header)
        chunks = [c async for c in stream.chunks]
        return stream, chunks

    stream, chunks = run(go())
    assert chunks[0].draft is not None and chunks[0].text == "Paris is"
    assert "".join(c.text for c in chunks) == "Paris is the capital."
    assert stages(stream.trace) == [("cache", "miss"), ("scout", "skipped"), ("validator", "verified"),
                                    ("admission", "admitted")]
    assert stream.trace.stages[2].detail["draft_source"] == "cache"


def test_without_verified_escalation_a_near_miss_is_just_a_miss(setup):
    router, _scout, validator, _ = setup(verified=False)
    run(router.complete(req()))
    out = run(router.complete(req(NEAR)))
    assert "near_miss" in out.trace.stages[0].detail  # reported, not used
    assert stages(out.trace)[1:3] == [("scout", "escalate"), ("validator", "answered")]
    assert validator.drafts == []


def test_a_forced_scout_ignores_a_near_miss(setup):
    router, _, validator, _ = setup(scout_lp=SURE)
    run(router.complete(req(), model="validator"))
    out = run(router.complete(req(NEAR), model="scout"))
    assert out.trace.tier == "scout" and validator.drafts == []


def test_a_forced_validator_verifies_a_near_miss(setup):
    router, _, validator, _ = setup()
    run(router.complete(req(), model="validator"))
    out = run(router.complete(req(NEAR), model="validator"))
    assert stages(out.trace)[:2] == [("cache", "miss"), ("validator", "verified")]
    assert out.trace.reason == "forced" and len(validator.drafts) == 1


def test_an_escalated_stream_verifies_the_scouts_draft(setup):
    router, _, validator, _ = setup()

    async def go():
        stream = await router.open_stream(req("Something never asked before"))
        return stream, [c async for c in stream.chunks]

    stream, chunks = run(go())
    assert validator.drafts == ["Paris."] and chunks[0].draft is not None
    assert stages(stream.trace)[1:3] == [("scout", "escalate"), ("validator", "verified")]
    assert stream.trace.stages[2].detail["draft_source"] == "scout" and stream.trace.reason == "escalated"


def test_a_guard_vetoed_candidate_becomes_a_draft(setup):
    router, _, _validator, _cache = setup(similarity_threshold=0.6, draft_threshold=0.6)
    run(router.complete(req("How do I turn on the kitchen lights?")))
    out = run(router.complete(req("How do I turn off the kitchen lights?")))
    cache_stage = out.trace.stages[0]
    assert cache_stage.decision == "miss" and cache_stage.detail["guard_rejected"][0]["reason"] == "opposite"
    assert "near_miss" in cache_stage.detail and out.trace.stages[-2].decision == "verified"


def test_the_cache_returns_no_draft_when_drafts_are_off(setup):
    _, _, _, cache = setup(draft_threshold=None)
    key = cache_key(req(), model="auto", namespace="default", fingerprint="f")
    answer = CachedAnswer("Paris.", "stop", 5, 2, "validator", "large")
    run(cache.admit(key, answer))
    found = run(cache.lookup(cache_key(req(NEAR), model="auto", namespace="default", fingerprint="f")))
    assert found.decision == "miss" and found.draft is None


# -- verification pauses when it does not pay ---------------------------------------------


def test_the_tracker_pauses_a_source_whose_drafts_are_rejected_and_explores_now_and_then():
    from serving.verify import AcceptanceTracker

    t = AcceptanceTracker(0.15, warmup=3, explore_every=4)
    for _ in range(3):
        assert t.should_verify("scout")
        t.record("scout", 40, 0)  # nothing accepted
    decisions = [t.should_verify("scout") for _ in range(8)]
    assert decisions == [False, False, False, True] * 2  # paused, but one in four still verified
    assert t.should_verify("cache")  # sources are judged apart
    for _ in range(10):
        t.record("scout", 40, 40)  # the drafts got good again: verification resumes
    assert t.should_verify("scout")
    assert AcceptanceTracker(0.0).should_verify("scout")  # 0: always


class RejectingEngine(VerifyingEngine):
    """Accepts nothing of any draft."""

    def _outcome(self, draft: str) -> DraftOutcome:
        return DraftOutcome(len(draft.split()) or 1, 0, 1)


def test_the_router_stops_verifying_drafts_that_are_always_rejected():
    scout = FakeEngine("small", ["Par", "is", ".", ""], UNSURE)
    validator = RejectingEngine("large", ["Paris", " is", " the", " capital."])
    router = build_pipeline(scout, validator, TieringConfig(threshold=0.5, verified_escalation=True,
                                                          verify_min_acceptance=0.15, verify_explore_every=5))
    decisions = []
    for i in range(20):
        out = run(router.complete(req(f"question {i}")))
        decisions.append(out.trace.stages[-1].decision)
        assert out.generation.text == "Paris is the capital."  # the answer never depends on it
    assert decisions[:10] == ["verified"] * 10  # warm-up
    assert decisions[10:] == ["answered"] * 4 + ["verified"] + ["answered"] * 4 + ["verified"]
    paused = out.trace.stages[-2]  # the last one was explored; the one before was paused
    out = run(router.complete(req("question 21")))
    assert out.trace.stages[-1].detail["verify_paused"] == "scout"
    assert out.trace.stages[-1].detail["recent_acceptance"] == 0.0
    assert paused.stage == "scout"

    async def go():
        stream = await router.open_stream(req("question 22"))
        return stream, [c async for c in stream.chunks]

    stream, chunks = run(go())
    assert chunks[0].draft is None and stream.trace.stages[-1].detail["verify_paused"] == "scout"


# -- a draft that cannot be scored never fails the request ---------------------------------


class OverflowingEngine(VerifyingEngine):
    """Prompt + draft do not fit its context window; the prompt alone does."""

    async def verify(self, request, draft):
        self.drafts.append(draft)
        raise ContextLengthExceededError("prompt + draft exceed the context window")

    async def verify_stream(self, request, draft) -> AsyncIterator[GenerationChunk]:
        self.drafts.append(draft)
        raise ContextLengthExceededError("prompt + draft exceed the context window")
        yield GenerationChunk()  # pragma: no cover - makes this an async generator


def test_a_draft_that_cannot_be_scored_falls_back_to_plain_generation():
    scout = FakeEngine("small", ["Par", "is", ".", ""], UNSURE)
    validator = OverflowingEngine("large", ["Paris", " is", " the", " capital."])
    router = build_pipeline(scout, validator, TieringConfig(threshold=0.5, verified_escalation=True))
    out = run(router.complete(req("a question")))
    assert validator.drafts == ["Paris."]  # it tried
    assert out.generation.text == "Paris is the capital." and out.trace.reason == "escalated"
    last = out.trace.stages[-1]
    assert (last.stage, last.decision) == ("validator", "answered")
    assert last.detail["verify_failed"] == "context_length_exceeded"

    async def go():
        stream = await router.open_stream(req("another question"))
        return stream, [c async for c in stream.chunks]

    stream, chunks = run(go())
    assert len(validator.drafts) == 2 and all(c.draft is None for c in chunks)
    assert "".join(c.text for c in chunks) == "Paris is the capital."
    last = stream.trace.stages[-1]
    assert (last.stage, last.decision) == ("validator", "answered")
    assert last.detail["verify_failed"] == "context_length_exceeded"


def test_verification_is_not_tried_on_penalised_requests():
    scout = FakeEngine("small", ["Par", "is", ".", ""], UNSURE)
    validator = VerifyingEngine("large", ["Paris", " is", " the", " capital."])
    router = build_pipeline(scout, validator, TieringConfig(threshold=0.5, verified_escalation=True))
    out = run(router.complete(req("a question", frequency_penalty=0.5)))
    assert validator.drafts == [] and out.trace.stages[-1].decision == "answered"


def test_verified_drafts_reach_the_metrics_with_their_token_counts(setup):
    from serving.metrics import Metrics

    class Drafts(Metrics):
        def __init__(self) -> None:
            self.drafts: list[tuple[int, int, str, int]] = []

        def draft(self, proposed: int, accepted: int, source: str = "scout", saved: int = 0) -> None:
            self.drafts.append((proposed, accepted, source, saved))

    metrics = Drafts()
    scout = FakeEngine("small", ["Par", "is", ".", ""], UNSURE)
    validator = VerifyingEngine("large", ["Paris", " is", " the", " capital."])
    router = build_pipeline(scout, validator, TieringConfig(threshold=0.5, verified_escalation=True), metrics=metrics)
    out = run(router.complete(req("one question")))
    detail = out.trace.stages[-1].detail
    # The fake proposes one token per word of "Paris." and accepts the first, plus its correction.
    assert metrics.drafts == [(1, 1, "scout", 2)]
    assert (detail["draft_tokens"], detail["accepted_tokens"], detail["saved_tokens"]) == (1, 1, 2)

    async def go():
        stream = await router.open_stream(req("another question"))
        return [c async for c in stream.chunks]

    run(go())
    assert metrics.drafts == [(1, 1, "scout", 2)] * 2  # a streamed verification counts the same
