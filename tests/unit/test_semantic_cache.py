"""SemanticCache over a real qdrant-edge shard with a fake (lexical) embedder and a hand-moved clock."""

from __future__ import annotations

import asyncio

import pytest

from serving.cache.edge import EdgeStore
from serving.cache.keys import cache_key
from serving.cache.semantic import CachedAnswer, SemanticCache
from serving.cache.store import Selector
from serving.config import CacheConfig
from serving.engines.base import GenerationRequest
from tests.unit.fakes import FakeClock, FakeEmbedder


def run(coro):
    return asyncio.run(coro)


def chat(question: str, system: str | None = None, history: list[tuple[str, str]] = (), **kw) -> GenerationRequest:
    msgs = [{"role": "system", "content": system}] if system else []
    msgs += [{"role": r, "content": c} for r, c in history] + [{"role": "user", "content": question}]
    return GenerationRequest(messages=msgs, temperature=0, **kw)


def key(request: GenerationRequest, namespace: str = "default", model: str = "auto"):
    return cache_key(request, model=model, namespace=namespace, fingerprint="fp")


ANSWER = CachedAnswer("Paris.", "stop", 9, 2, "validator", "large")


@pytest.fixture
def make(tmp_path):
    caches = []

    def _make(**kw) -> tuple[SemanticCache, FakeClock, FakeEmbedder]:
        clock, embedder = FakeClock(), FakeEmbedder(fail=kw.pop("embed_fail", False))
        config = CacheConfig(enabled=True, similarity_threshold=kw.pop("threshold", 0.8), **kw)
        cache = SemanticCache(EdgeStore(tmp_path / f"s{len(caches)}", FakeEmbedder.dimension), embedder, config,
                              clock=clock)
        caches.append(cache)
        return cache, clock, embedder

    yield _make
    for c in caches:
        run(c.close())


def test_exact_hit_needs_no_embedding(make):
    cache, _, embedder = make()
    k = key(chat("What is the capital of France?"))
    assert run(cache.lookup(k)).decision == "miss"
    run(cache.admit(k, ANSWER))
    calls = embedder.calls
    found = run(cache.lookup(key(chat("What is the  capital of France?"))))  # same after normalisation
    assert found.decision == "exact_hit" and found.entry.answer == "Paris."
    assert embedder.calls == calls
    assert found.entry.hits == 1


def test_semantic_hit_on_a_paraphrase(make):
    cache, _, _ = make()
    cached, asked = key(chat("What is the capital of France?")), key(chat("what is the capital city of france"))
    run(cache.admit(cached, ANSWER))
    found = run(cache.lookup(asked))
    assert found.decision == "semantic_hit"
    # The store's score is the cosine of the two questions' (unit) vectors: their dot product.
    expected = sum(a * b for a, b in zip(FakeEmbedder.vector(cached.question), FakeEmbedder.vector(asked.question),
                                         strict=True))
    assert found.similarity == pytest.approx(expected, rel=1e-5) and 0.8 <= expected < 1.0
    assert found.entry.question == "What is the capital of France?"


def test_lookup_keeps_the_embedding_of_a_miss_for_admission(make):
    cache, _, embedder = make()
    k = key(chat("How tall is the Eiffel tower?"))
    found = run(cache.lookup(k))
    assert found.decision == "miss" and len(found.vector) == FakeEmbedder.dimension
    calls = embedder.calls
    run(cache.admit(k, ANSWER, vector=found.vector))
    assert embedder.calls == calls


@pytest.mark.parametrize(("cached", "asked", "reason"), [
    ("How do I turn on the kitchen lights?", "How do I turn off the kitchen lights?", "opposite"),
    ("What is 15% of 80?", "What is 20% of 80?", "numbers"),
    ("Is it safe to eat raw eggs?", "Is it not safe to eat raw eggs?", "negation"),
    ("What is the population of Paris in France?", "What is the population of Lyon in France?", "entities"),
])
def test_guards_turn_similar_but_different_questions_into_misses(make, cached, asked, reason):
    cache, _, _ = make(threshold=0.6)
    run(cache.admit(key(chat(cached)), ANSWER))
    found = run(cache.lookup(key(chat(asked))))
    assert found.decision == "miss"
    assert [r["reason"] for r in found.rejected] == [reason]
    assert cache.counters[f"guard_rejected:{reason}"] == 1


def test_guards_can_be_turned_off(make):
    cache, _, _ = make(threshold=0.6, guards=False)
    run(cache.admit(key(chat("How do I turn on the kitchen lights?")), ANSWER))
    assert run(cache.lookup(key(chat("How do I turn off the kitchen lights?")))).decision == "semantic_hit"


def test_same_question_after_a_different_system_prompt_or_history_is_a_miss(make):
    cache, _, _ = make()
    q = "What is the capital of France?"
    run(cache.admit(key(chat(q, system="Answer in French.")), ANSWER))
    assert run(cache.lookup(key(chat(q, system="Answer in French.")))).decision == "exact_hit"
    assert run(cache.lookup(key(chat(q)))).decision == "miss"
    assert run(cache.lookup(key(chat(q, system="Answer in German.")))).decision == "miss"
    assert run(cache.lookup(key(chat(q, system="Answer in French.", history=[("user", "Hi"), ("assistant", "Hello")])))
               ).decision == "miss"
    # ...and the paraphrase under the same system prompt still hits.
    assert run(cache.lookup(key(chat("what is the capital city of france", system="Answer in French.")))
               ).decision == "semantic_hit"


def test_different_parameters_or_model_are_misses(make):
    cache, _, _ = make()
    q = "What is the capital of France?"
    run(cache.admit(key(chat(q)), ANSWER))
    assert run(cache.lookup(key(chat(q, max_tokens=7)))).decision == "miss"
    assert run(cache.lookup(key(chat(q), model="validator"))).decision == "miss"


def test_namespaces_are_isolated(make):
    cache, _, _ = make()
    q = "What is the capital of France?"
    run(cache.admit(key(chat(q), namespace="tenant-a"), ANSWER))
    assert run(cache.lookup(key(chat(q), namespace="tenant-b"))).decision == "miss"
    assert run(cache.lookup(key(chat("what is the capital city of france"), namespace="tenant-b"))).decision == "miss"
    assert run(cache.lookup(key(chat(q), namespace="tenant-a"))).decision == "exact_hit"


def test_ttl_expiry_default_and_per_entry_then_sweep(make):
    cache, clock, _ = make(default_ttl_s=100)
    a, b = key(chat("What is the capital of France?")), key(chat("Who wrote Hamlet?"))
    run(cache.admit(a, ANSWER))
    run(cache.admit(b, ANSWER, ttl_s=1000))
    clock.now += 101
    assert run(cache.lookup(a)).decision == "miss"  # expired: never served, exact or semantic
    assert run(cache.lookup(key(chat("what is the capital city of france")))).decision == "miss"
    assert run(cache.lookup(b)).decision == "exact_hit"
    assert run(cache.sweep()) == 1
    assert run(cache.stats())["entries"] == 1


def test_eviction_removes_the_least_recently_hit_entries_of_the_namespace(make):
    cache, clock, _ = make(max_entries_per_namespace=3)
    keys = [key(chat(f"Question number {w}?")) for w in ("one", "two", "three")]
    for k in keys:
        clock.now += 1
        run(cache.admit(k, ANSWER))
    clock.now += 1
    assert run(cache.lookup(keys[0])).decision == "exact_hit"  # the oldest is now the most recently hit
    other = key(chat("Question elsewhere?"), namespace="other")
    run(cache.admit(other, ANSWER))  # another namespace has its own cap
    clock.now += 1
    run(cache.admit(key(chat("Question number four?")), ANSWER))
    assert run(cache.lookup(keys[1])).decision == "miss"  # least recently hit: evicted
    assert [run(cache.lookup(k)).decision for k in (keys[0], keys[2], other)] == ["exact_hit"] * 3
    assert cache.counters["evicted"] == 1
    assert run(cache.stats())["namespaces"] == {"default": 3, "other": 1}


def test_invalidation_by_namespace_model_tag_age_and_all(make):
    cache, clock, _ = make()
    run(cache.admit(key(chat("q1"), namespace="a"), ANSWER, tags=["faq"]))
    run(cache.admit(key(chat("q2"), namespace="a"), CachedAnswer("x", "stop", 1, 1, "scout", "small", 0.99)))
    clock.now += 100
    run(cache.admit(key(chat("q3"), namespace="b"), ANSWER))
    run(cache.admit(key(chat("q4"), namespace="b"), ANSWER))
    assert run(cache.invalidate(Selector(tag="faq"))) == 1
    assert run(cache.invalidate(Selector(model="small"))) == 1
    assert run(cache.invalidate(Selector(namespace="b", older_than=clock.now - 50))) == 0
    assert run(cache.invalidate(Selector(namespace="b"))) == 2
    run(cache.admit(key(chat("q5")), ANSWER))
    assert run(cache.invalidate(Selector())) == 1
    assert run(cache.stats())["entries"] == 0


def test_parallel_writers_neither_corrupt_nor_lose_entries(make):
    cache, _, _ = make()

    async def writers():
        distinct = [cache.admit(key(chat(f"Distinct question {i}?"), namespace=f"ns{i % 4}"), ANSWER)
                    for i in range(200)]
        same = [cache.admit(key(chat("The same question?")), CachedAnswer(f"v{i}", "stop", 1, 1, "validator", "l"))
                for i in range(20)]
        return await asyncio.gather(*distinct, *same)

    ids = run(writers())
    assert len(set(ids)) == 201
    stats = run(cache.stats())
    assert stats["entries"] == 201 and stats["namespaces"] == {"ns0": 50, "ns1": 50, "ns2": 50, "ns3": 50, "default": 1}
    for i in (0, 77, 199):
        found = run(cache.lookup(key(chat(f"Distinct question {i}?"), namespace=f"ns{i % 4}")))
        assert found.decision == "exact_hit" and found.entry.answer == "Paris."
    assert run(cache.lookup(key(chat("The same question?")))).entry.answer.startswith("v")


def test_entries_survive_a_restart(tmp_path):
    config = CacheConfig(enabled=True, similarity_threshold=0.8)
    k = key(chat("What is the capital of France?"))
    cache = SemanticCache(EdgeStore(tmp_path / "s", FakeEmbedder.dimension), FakeEmbedder(), config)
    run(cache.admit(k, ANSWER, tags=["geo"]))
    run(cache.close())
    reopened = SemanticCache(EdgeStore(tmp_path / "s", FakeEmbedder.dimension), FakeEmbedder(), config)
    found = run(reopened.lookup(k))
    assert found.decision == "exact_hit" and found.entry.tags == ["geo"] and found.entry.tier == "validator"
    run(reopened.close())


def test_a_failing_embedder_fails_the_lookup_for_the_router_to_bypass(make):
    cache, _, _ = make(embed_fail=True)
    with pytest.raises(ConnectionError):
        run(cache.lookup(key(chat("anything at all"))))


def test_dimension_mismatch_is_refused(tmp_path):
    with pytest.raises(ValueError, match="8-d"):
        SemanticCache(EdgeStore(tmp_path / "s", 8), FakeEmbedder(), CacheConfig())
