"""Propose, then verify: the semantic cache with a pair verifier (a fake that subclasses `PairVerifier`) over a
real qdrant-edge shard and the fake lexical embedder. The real cross-encoder is tested in tests/serve."""

from __future__ import annotations

import asyncio
import math
import threading

import pytest

from serving.cache.edge import EdgeStore
from serving.cache.semantic import SemanticCache
from serving.cache.verifier import PairVerifier, ThreadedVerifier
from serving.config import CacheConfig
from serving.engines.base import Generation, GenerationRequest, TokenLogprob, Usage
from serving.policy import cache as policy
from tests.unit.fakes import BindRecorder, FakeClock, FakeEmbedder, FakeEngine
from tests.unit.test_semantic_cache import ANSWER, chat, key, run


class ScriptedVerifier(PairVerifier):
    """Scores a pair by a table of (cached, new) questions; 0.0 for any other pair; can hang or fail."""

    name = "scripted"

    def __init__(self, table: dict[tuple[str, str], float] | None = None, *, delay_s: float = 0.0,
                 fail: bool = False) -> None:
        self.table = table or {}
        self.delay_s = delay_s
        self.fail = fail
        self.calls: list[list[tuple[str, str]]] = []

    async def score(self, pairs: list[tuple[str, str]]) -> list[float]:
        self.calls.append(pairs)
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if self.fail:
            raise RuntimeError("verifier broke")
        return [self.table.get(p, 0.0) for p in pairs]


CACHED = "What is the capital of France?"
PARAPHRASE = "which city is france's capital"  # lexically far: below the similarity threshold of 0.95


@pytest.fixture
def make(tmp_path):
    caches = []

    def _make(verifier: PairVerifier | None, **kw) -> SemanticCache:
        config = CacheConfig(enabled=True, similarity_threshold=0.95,
                             verifier={"model": "scripted", "propose_threshold": 0.0, "timeout_s": 0.2,
                                       **kw.pop("verifier", {})}, **kw)
        cache = SemanticCache(EdgeStore(tmp_path / f"s{len(caches)}", FakeEmbedder.dimension), FakeEmbedder(), config,
                              clock=FakeClock(), verifier=verifier)
        caches.append(cache)
        return cache

    yield _make
    for c in caches:
        run(c.close())


def test_a_paraphrase_the_threshold_misses_is_served_when_the_verifier_accepts_it(make):
    for verifier, decision, rule in ((None, "miss", "threshold"),
                                     (ScriptedVerifier({(CACHED, PARAPHRASE): 0.9}), "semantic_hit", "verifier")):
        cache = make(verifier)
        run(cache.admit(key(chat(CACHED)), ANSWER))
        found = run(cache.lookup(key(chat(PARAPHRASE))))
        assert (found.decision, found.rule) == (decision, rule)
        if verifier is not None:
            assert found.score == 0.9 and found.entry.answer == "Paris."
            assert verifier.calls == [[(CACHED, PARAPHRASE)]]


def test_a_candidate_the_verifier_rejects_is_a_miss_even_above_the_similarity_threshold(make):
    verifier = ScriptedVerifier({(CACHED, "What is the capital of France ?"): 0.1})
    cache = make(verifier)
    run(cache.admit(key(chat(CACHED)), ANSWER))
    found = run(cache.lookup(key(chat("What is the capital of France ?"))))
    assert found.decision == "miss" and found.rule == "verifier" and found.score == 0.1
    assert found.draft is not None  # still a near miss for verified escalation


def test_the_guards_veto_before_the_verifier_is_asked(make):
    verifier = ScriptedVerifier({("What is 15% of 80?", "What is 20% of 80?"): 0.99})
    cache = make(verifier)
    run(cache.admit(key(chat("What is 15% of 80?")), ANSWER))
    found = run(cache.lookup(key(chat("What is 20% of 80?"))))
    assert found.decision == "miss" and found.rejected[0]["reason"] == "numbers"
    assert verifier.calls == []  # a vetoed candidate costs no verification


def test_the_best_scored_candidate_is_served(make):
    verifier = ScriptedVerifier({(CACHED, PARAPHRASE): 0.7, ("Which city is the capital of France?", PARAPHRASE): 0.95})
    cache = make(verifier)
    for q, answer in ((CACHED, ANSWER), ("Which city is the capital of France?", ANSWER)):
        run(cache.admit(key(chat(q)), answer))
    found = run(cache.lookup(key(chat(PARAPHRASE))))
    assert found.decision == "semantic_hit" and found.entry.question == "Which city is the capital of France?"
    assert len(verifier.calls[0]) == 2  # both scored in one call


@pytest.mark.parametrize(("verifier", "rule"), [(ScriptedVerifier({(CACHED, PARAPHRASE): 0.9}, delay_s=1.0),
                                                 "verifier_timeout"),
                                                (ScriptedVerifier({(CACHED, PARAPHRASE): 0.9}, fail=True),
                                                 "verifier_error")])
def test_a_verifier_that_times_out_or_fails_makes_a_miss_never_an_error(make, verifier, rule):
    cache = make(verifier)
    run(cache.admit(key(chat(CACHED)), ANSWER))
    found = run(cache.lookup(key(chat(PARAPHRASE))))
    assert found.decision == "miss" and found.rule == rule
    assert cache.counters[rule] == 1


class BlockingVerifier(ThreadedVerifier):
    """A blocking scorer (as a model's forward pass is) that waits until it is released."""

    name = "blocking"

    def __init__(self) -> None:
        self.release, self.started = threading.Event(), 0

    def score_sync(self, pairs: list[tuple[str, str]]) -> list[float]:
        self.started += 1
        self.release.wait(10)
        return [0.9] * len(pairs)


def test_timed_out_verifications_are_bounded_then_the_verifier_comes_back(make):
    """A timeout cannot stop a blocking forward pass, but nothing piles up behind it: a call that timed out
    while queued never runs, and past `max_pending` a lookup is a miss at once ('verifier_busy'); once the work
    ends the verifier serves again."""
    verifier = BlockingVerifier()
    cache = make(verifier)
    cache.config.verifier.timeout_s = 0.05

    async def go() -> tuple[list[str], int, str, list[str]]:
        await cache.admit(key(chat(CACHED)), ANSWER)
        blocked = [(await cache.lookup(key(chat(PARAPHRASE)))).rule for _ in range(4)]
        started_while_blocked = verifier.started
        verifier.release.set()
        await asyncio.sleep(0.2)
        after = (await cache.lookup(key(chat(PARAPHRASE)))).rule
        # One call at a time allowed: while one runs, the next is refused at once, without waiting its timeout.
        verifier.release.clear()
        verifier.max_pending = 1
        busy = [(await cache.lookup(key(chat(PARAPHRASE)))).rule for _ in range(2)]
        verifier.release.set()
        return blocked, started_while_blocked, after, busy

    blocked, started_while_blocked, after, busy = run(go())
    assert blocked == ["verifier_timeout"] * 4
    assert started_while_blocked == 1  # the three queued behind the stuck one were dropped, never run
    assert after == "verifier"
    assert busy == ["verifier_timeout", "verifier_busy"]
    assert cache.counters["verifier_busy"] == 1


def test_exact_hits_need_no_verifier(make):
    verifier = ScriptedVerifier()
    cache = make(verifier)
    run(cache.admit(key(chat(CACHED)), ANSWER))
    found = run(cache.lookup(key(chat(CACHED))))
    assert found.decision == "exact_hit" and found.rule == "exact" and verifier.calls == []


def test_the_verified_verdicts():
    config = CacheConfig(verifier={"model": "m", "threshold": 0.6}, draft_threshold=0.8)
    assert policy.judge_verified(config, 0.5, 0.6, None) == (policy.Candidate.SERVE, None)
    assert policy.judge_verified(config, 0.99, 0.59, None) == (policy.Candidate.NEAR_MISS, None)
    assert policy.judge_verified(config, 0.99, 0.99, "negation") == (policy.Candidate.NEAR_MISS, "negation")
    assert policy.judge_verified(config, 0.5, None, None) == (policy.Candidate.REJECTED, None)
    # an entry's audited bound refuses a score the threshold passes, and says so
    assert policy.judge_verified(config, 0.5, 0.7, None, floor=0.7) == (policy.Candidate.REJECTED, policy.AUDITED)
    assert policy.judge_verified(config, 0.5, 0.71, None, floor=0.7) == (policy.Candidate.SERVE, None)
    assert policy.search_floor(CacheConfig(verifier={"propose_threshold": 0.7}), verifying=True) == 0.7
    assert policy.search_floor(CacheConfig(verifier={"propose_threshold": 0.7})) == 0.8  # the draft threshold


def test_a_verifier_that_is_not_prepared_or_cannot_load_leaves_the_threshold_rule(tmp_path):
    from serving.cache.verifier import TRAINED_VERIFIER, open_verifier
    from serving.config import VerifierConfig

    assert open_verifier(VerifierConfig(), tmp_path) == (None, "off")
    verifier, why = open_verifier(VerifierConfig(model=TRAINED_VERIFIER), tmp_path)
    assert verifier is None and "infopt models prepare --verifier" in why
    broken = tmp_path / "broken"
    broken.mkdir()
    verifier, why = open_verifier(VerifierConfig(model=str(broken)), tmp_path)
    assert verifier is None and "could not be loaded" in why


def test_training_the_verifier_needs_the_shared_data(tmp_path):
    from infopt.prepare import prepare_verifier
    from serving.models import ModelPrepareError

    with pytest.raises(ModelPrepareError, match="shared data"):
        prepare_verifier(tmp_path / "cache", tmp_path / "no-data", log=lambda _: None)


class YesNoEngine(FakeEngine):
    """A cascade model asked 'same question?': its first token's alternatives, by whether the pair is in `same`."""

    def __init__(self, same: set[tuple[str, str]]) -> None:
        super().__init__("validator-model", ["Yes"])
        self.same = same

    async def generate(self, request: GenerationRequest) -> Generation:
        self.requests.append(request)
        text = request.messages[-1]["content"]
        hit = any(f"Question 1: {a}\nQuestion 2: {b}\n" in text for a, b in self.same)
        top = [("Yes", -0.05), ("No", -3.0)] if hit else [("No", -0.1), ("Yes", -2.4)]
        return Generation(text=top[0][0], finish_reason="length", model=self.model_id,
                          tokens=[TokenLogprob(top[0][0], top[0][1], top=top)], usage=Usage(70, 1))


def test_yes_probability_folds_spellings_and_counts_the_chosen_token_once():
    from serving.cache.verifier import cross_check_score
    from serving.engines.base import yes_probability

    assert yes_probability([(" Yes", math.log(0.6)), ("No", math.log(0.2)), (" Yes", math.log(0.6))]) == \
        pytest.approx(0.75)
    assert yes_probability({"yes": math.log(0.3), "YES": math.log(0.3), "no": math.log(0.2)}) == pytest.approx(0.75)
    assert yes_probability({"No": -0.01}) == 0.0 and yes_probability({"Yes": -3.0}) == 1.0
    assert yes_probability({"Maybe": -0.1, "no": float("-inf")}) is None
    assert cross_check_score({"Maybe": -0.1}) == 0.5  # said neither: refused at any threshold > .5
    assert cross_check_score({"yes": math.log(0.3), "no": math.log(0.1)}) == pytest.approx(0.75)


def test_a_cascade_model_as_the_verifier_serves_the_paraphrase_it_accepts(make):
    from serving.cache.verifier import CROSS_CHECK_TOP_LOGPROBS, EngineVerifier

    engine = YesNoEngine({(CACHED, PARAPHRASE)})
    cache = make(EngineVerifier(engine, name="validator:validator-model", tier="validator"))
    run(cache.admit(key(chat(CACHED)), ANSWER))
    found = run(cache.lookup(key(chat(PARAPHRASE))))
    assert (found.decision, found.rule) == ("semantic_hit", "verifier") and found.score > 0.9
    # The engine's work on the cross-check comes back with the lookup, for the request's cost.
    assert found.check is not None and found.check.tier == "validator" and found.check.seconds > 0
    assert (found.check.usage.prompt_tokens, found.check.usage.completion_tokens) == (70, 1)
    asked = engine.requests[-1]
    # One greedy token with its alternatives: a prefill, no decoding.
    assert (asked.max_tokens, asked.temperature, asked.logprobs, asked.top_logprobs) == \
        (1, 0.0, True, CROSS_CHECK_TOP_LOGPROBS)
    # A pair the model says "No" to (the guards let it through, so the model is asked): a miss, with its score.
    other = run(cache.lookup(key(chat("what is the population of france"))))
    assert (other.decision, other.rule) == ("miss", "verifier") and other.score < 0.5


def test_a_cascade_model_verifier_that_is_down_makes_a_miss(make):
    from serving.cache.verifier import EngineVerifier

    cache = make(EngineVerifier(FakeEngine("v", ["Yes"], fail=True), name="validator:v"))
    run(cache.admit(key(chat(CACHED)), ANSWER))
    found = run(cache.lookup(key(chat(PARAPHRASE))))
    assert (found.decision, found.rule) == ("miss", "verifier_error")


def test_open_verifier_takes_the_named_cascade_engine(tmp_path):
    from serving.cache.verifier import EngineVerifier, open_verifier
    from serving.config import VerifierConfig

    engine = FakeEngine("qwen-1.5b", ["Yes"])
    verifier, state = open_verifier(VerifierConfig(model="validator"), tmp_path, {"validator": engine})
    assert isinstance(verifier, EngineVerifier) and verifier.engine is engine and state == "ready"
    assert verifier.name == "validator:qwen-1.5b" and verifier.tier == "validator"
    verifier, why = open_verifier(VerifierConfig(model="scout"), tmp_path, {"validator": engine})
    assert verifier is None and "cascade engine" in why


def test_the_app_binds_the_named_engine_to_the_cache_only_when_asked(monkeypatch, tmp_path):
    from deployments import app as app_module
    from serving.config import AppConfig

    deployment = BindRecorder()
    monkeypatch.setattr(app_module, "SemanticCacheDeployment", deployment)
    engines = {"scout": "scout-engine", "validator": "validator-engine"}
    for model, expected in ((None, None), ("validator", {"validator": "validator-engine"}),
                            ("scout", {"scout": "scout-engine"})):
        config = AppConfig(profile="t", cache_dir=tmp_path, scout={"model": "small"}, validator={"model": "large"},
                           cache={"enabled": True, "verifier": {"model": model}})
        assert app_module.build_cache(config, object(), engines) == "bound-app"
        (_, _, bound), _ = deployment.binds[-1]
        assert bound == expected


# -- per-entry bounds learned from audits -------------------------------------------------------------------------


def test_an_entry_caught_wrong_serves_only_above_the_similarity_it_failed_at(tmp_path):
    """The threshold rule: after `raise_bound` at the similarity of a wrong hit, the same question (and any as
    far) is a miss with the entry as its near-miss draft; a question nearer than that is still served."""
    config = CacheConfig(enabled=True, similarity_threshold=0.5, draft_threshold=0.3)
    cache = SemanticCache(EdgeStore(tmp_path / "s", FakeEmbedder.dimension), FakeEmbedder(), config,
                          clock=FakeClock())
    entry_id = run(cache.admit(key(chat(CACHED)), ANSWER))
    far, near = "What is the capital of France these days, roughly?", "What is the capital of France, exactly?"
    hit = run(cache.lookup(key(chat(far))))
    assert hit.decision == "semantic_hit" and hit.entry.id == entry_id
    nearer = run(cache.lookup(key(chat(near))))
    assert nearer.similarity > hit.similarity  # the FakeEmbedder's bag of words: fewer new words
    assert run(cache.raise_bound(entry_id, similarity=hit.similarity)) is True
    again = run(cache.lookup(key(chat(far))))
    assert again.decision == "miss" and again.draft.id == entry_id
    assert {"reason": "audited", "similarity": round(hit.similarity, 4)} in again.rejected
    assert run(cache.lookup(key(chat(near)))).decision == "semantic_hit"
    # Bounds only rise: a lower failure leaves it where it is.
    run(cache.raise_bound(entry_id, similarity=0.1))
    assert run(cache.lookup(key(chat(far)))).decision == "miss"
    assert run(cache.raise_bound("00000000-0000-4000-8000-000000000000", similarity=0.9)) is False  # gone
    assert cache.counters["bound_raised"] == 2
    run(cache.close())


def test_under_a_verifier_the_bound_is_on_the_verifiers_score(make):
    verifier = ScriptedVerifier({(CACHED, PARAPHRASE): 0.8, (CACHED, "which city is the capital of france"): 0.95})
    cache = make(verifier)
    entry_id = run(cache.admit(key(chat(CACHED)), ANSWER))
    first = run(cache.lookup(key(chat(PARAPHRASE))))
    assert first.decision == "semantic_hit" and first.score == 0.8
    run(cache.raise_bound(entry_id, score=first.score))
    refused = run(cache.lookup(key(chat(PARAPHRASE))))
    assert refused.decision == "miss" and refused.rule == "verifier"
    assert any(r["reason"] == "audited" for r in refused.rejected)
    surer = run(cache.lookup(key(chat("which city is the capital of france"))))
    assert surer.decision == "semantic_hit" and surer.score == 0.95  # above what it failed at


def test_an_entrys_bound_survives_a_restart(tmp_path):
    from serving.cache.edge import EdgeStore as Store

    config = CacheConfig(enabled=True, similarity_threshold=0.5)
    cache = SemanticCache(Store(tmp_path / "s", FakeEmbedder.dimension), FakeEmbedder(), config, clock=FakeClock())
    entry_id = run(cache.admit(key(chat(CACHED)), ANSWER))
    run(cache.raise_bound(entry_id, similarity=0.77, score=0.6))
    run(cache.close())
    reopened = SemanticCache(Store(tmp_path / "s", FakeEmbedder.dimension), FakeEmbedder(), config,
                             clock=FakeClock())
    (entry,) = reopened.store.get([entry_id])
    assert (entry.min_similarity, entry.min_score, entry.answer) == (0.77, 0.6, "Paris.")
    run(reopened.close())


def test_a_verifier_timeout_at_or_above_the_lookups_is_refused():
    with pytest.raises(ValueError, match=r"must be below cache\.timeout_s"):
        CacheConfig(timeout_s=2.0, verifier={"model": "validator", "timeout_s": 2.0})
    assert CacheConfig(timeout_s=2.0, verifier={"model": None, "timeout_s": 5.0})  # no verifier: no matter
