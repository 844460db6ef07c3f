"""Inference strategies and OpenAI's `n`: answers extracted, votes and ranks over scripted candidates (ties as
documented), budgets that degrade instead of failing, the frontier's choice, the step search, and `n` end to
end through the pipeline and the service (streamed and not, usage adding up)."""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import AsyncIterator
from dataclasses import replace

import pytest

from serving.api import ChatCompletionRequest, StrategySpec
from serving.cache.edge import EdgeStore
from serving.cache.semantic import SemanticCache
from serving.config import ApiConfig, AuthConfig, CacheConfig, StrategiesConfig, TenantConfig, TieringConfig
from serving.engines.base import Generation, GenerationChunk, GenerationRequest, LLMEngine, Scored, TokenLogprob, Usage
from serving.pipeline import build_pipeline, replay
from serving.quality.ledger import CostLedger
from serving.service import OpenAIService
from serving.strategies import (
    Candidate,
    CostModel,
    Entry,
    Frontier,
    StrategyName,
    StrategyPolicy,
    StrategyRunner,
    best_of,
    extract_answer,
    majority_vote,
    weighted_vote,
)
from serving.strategies._policy import Bucket
from serving.strategies._runner import _balance
from serving.tenancy import Tenancy
from tests.unit.fakes import FakeEmbedder, FakeEngine


def run(coro):
    return asyncio.run(coro)


def req(question: str = "Tom has 3 apples and buys 4. How many?", **kw) -> GenerationRequest:
    kw.setdefault("temperature", 0)
    kw.setdefault("max_tokens", 64)
    return GenerationRequest(messages=[{"role": "user", "content": question}], **kw)


class ScriptedEngine(LLMEngine):
    """Samples the scripted answers in turn (one engine request gives `n` of them); scores texts from a table;
    in a step search, continues a prefix with the scripted next steps."""

    can_verify = True

    def __init__(self, model_id: str, answers: list[str] | None = None, scores: dict[str, float] | None = None,
                 steps: dict[str, list[tuple[str, bool]]] | None = None, fail: bool = False) -> None:
        self.model_id = model_id
        self.answers = answers or ["#### 7"]
        self.scores = scores or {}
        self.steps = steps or {}
        self.fail = fail
        self.i = 0
        self.requests: list[GenerationRequest] = []
        self.scored: list[list[str]] = []

    def _one(self, text: str, stop_reason: str | None = None) -> Generation:
        words = text.split() or [""]
        return Generation(text=text, finish_reason="stop", stop_reason=stop_reason, model=self.model_id,
                          tokens=[TokenLogprob(w, -0.1) for w in words])

    async def generate(self, request: GenerationRequest) -> Generation:
        self.requests.append(request)
        if self.fail:
            from serving.errors import EngineUnavailableError

            raise EngineUnavailableError(f"{self.model_id} is down")
        if request.stop and request.stop[0] in ("\n",):  # one step of a search
            options = self.steps[request.prefix]
            gens = []
            for k in range(request.n):
                text, last = options[(self.i + k) % len(options)]
                gens.append(self._one(text, None if last else "\n"))
        elif request.prefix:  # completing the best partial solution
            gens = [self._one(self.steps.get(request.prefix, [("#### 0", True)])[0][0])]
        else:
            gens = [self._one(self.answers[(self.i + k) % len(self.answers)]) for k in range(request.n)]
        self.i += request.n
        gens[0].usage = Usage(10, sum(len(g.tokens or []) for g in gens))
        gens[0].alternatives = gens[1:]
        return gens[0]

    async def stream(self, request: GenerationRequest) -> AsyncIterator[GenerationChunk]:
        async for chunk in replay(await self.generate(request), request.logprobs):
            yield chunk

    async def score(self, request: GenerationRequest, continuations: list[str]) -> list[Scored]:
        self.scored.append(list(continuations))
        return [Scored(c, [self.scores.get(c, -2.0)] * 2, prompt_tokens=10) for c in continuations]


# -- answers and votes ---------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "answer"), [
    ("She pays 3 * 4 = 12 dollars.\n#### 1,200", "1200"),
    ("So the answer is 42.", "42"),
    ("3 + 4 = 7 apples", "7"),
    ("First 2, then 5, so 10.50 in all", "10.5"),
    ("So she has $18 left.\n\nThe answer is \\(\\boxed{18}\\) dollars, after 2 days.", "18"),
    ("Total: 3 + 4 = 7, \\boxed{1,200} in 2024", "1200"),
    ("Paris.", "paris"),
    ("  The   CAPITAL is Paris!", "the capital is paris"),
])
def test_final_answers_are_extracted(text, answer):
    assert extract_answer(text) == answer


def cand(answer: str, own: float = -0.5, score: float | None = None) -> Candidate:
    return Candidate(text=f"... #### {answer}", answer=answer, own_logprob=own, score=score)


def test_majority_vote_picks_the_most_common_answer():
    choice = majority_vote([cand("7"), cand("9"), cand("7"), cand("12"), cand("7")])
    assert choice.tally == {"7": 3.0, "9": 1.0, "12": 1.0}
    assert choice.index in (0, 2, 4)


def test_majority_ties_go_to_the_larger_weight_then_the_earliest():
    # 2 votes each: "9"'s candidates are surer (the sampler's own log-probabilities).
    choice = majority_vote([cand("7", -2.0), cand("9", -0.1), cand("7", -2.0), cand("9", -0.2)])
    assert choice.index == 1  # "9", and its surest candidate
    # Equal weights too: the answer whose first candidate came first.
    assert majority_vote([cand("9"), cand("7"), cand("7"), cand("9")]).index == 0


def test_an_empty_answer_never_wins_while_another_exists():
    assert majority_vote([cand(""), cand(""), cand("5")]).index == 2
    assert majority_vote([cand(""), cand("")]).index == 0


def test_weighted_vote_follows_the_validators_scores():
    cands = [cand("7", score=-3.0), cand("7", score=-3.0), cand("9", score=-0.05)]
    assert majority_vote(cands).index in (0, 1)
    choice = weighted_vote(cands)
    assert choice.index == 2  # exp(-0.05) > 2 exp(-3)
    assert choice.tally["9"] == pytest.approx(math.exp(-0.05), abs=1e-6)


def test_best_of_n_takes_the_highest_score_and_the_earliest_on_a_tie():
    assert best_of([cand("1", score=-1.0), cand("2", score=-0.2), cand("3", score=-0.9)]).index == 1
    assert best_of([cand("1", score=-0.5), cand("2", score=-0.5)]).index == 0
    assert best_of([cand("1", own=-2.0), cand("2", own=-0.3)]).index == 1  # unscored: the sampler's own


def test_rebase_allocation_follows_the_softmax_of_scores():
    assert _balance([0.0, 0.0], 4, 1.0) == [2, 2]
    assert sum(_balance([-0.1, -0.5, -3.0], 5, 0.2)) == 5
    share = _balance([-0.1, -0.5, -3.0], 5, 0.2)
    assert share[0] > share[1] >= share[2] == 0


# -- the runner ----------------------------------------------------------------------------------


def test_majority_vote_samples_n_in_one_engine_request_and_returns_the_winner():
    scout = ScriptedEngine("small", ["3 + 4 = 7\n#### 7", "3 * 4 = 12\n#### 12", "#### 7", "#### 9"])
    result = run(StrategyRunner(scout, None).run(req(), StrategyName.MAJORITY_VOTE, 4))
    assert len(scout.requests) == 1 and scout.requests[0].n == 4
    assert scout.requests[0].temperature == StrategiesConfig().temperature  # a greedy request samples
    assert result.choice.tally == {"7": 2.0, "12": 1.0, "9": 1.0}
    assert extract_answer(result.answer.text) == "7"
    assert result.answer.usage.completion_tokens == sum(c.tokens for c in result.candidates)


def test_best_of_n_and_weighted_vote_are_scored_by_the_validator_in_one_pass():
    answers = ["#### 7", "#### 12", "#### 12"]
    validator = ScriptedEngine("large", scores={"#### 7": -0.1, "#### 12": -2.5})
    best = run(StrategyRunner(ScriptedEngine("small", answers), validator).run(req(), StrategyName.BEST_OF_N, 3))
    assert validator.scored == [["#### 7", "#### 12"]]  # distinct texts, one request
    assert best.answer.text == "#### 7" and best.scorer.seconds >= 0
    weighted = run(StrategyRunner(ScriptedEngine("small", answers), validator)
                   .run(req(), StrategyName.WEIGHTED_VOTE, 3))
    assert weighted.answer.text == "#### 7"  # exp(-0.1) > 2 exp(-2.5)
    plain = run(StrategyRunner(ScriptedEngine("small", answers), validator).run(req(), StrategyName.MAJORITY_VOTE, 3))
    assert plain.answer.text == "#### 12"


def test_step_search_expands_the_partial_solutions_the_validator_prefers():
    steps = {
        "": [("Add 3 and 4.", False), ("Multiply 3 by 4.", False)],
        "Add 3 and 4.\n": [("#### 7", True)],
        "Multiply 3 by 4.\n": [("#### 12", True)],
    }
    scores = {"Add 3 and 4.\n": -0.1, "Multiply 3 by 4.\n": -3.0,
              "Add 3 and 4.\n#### 7": -0.1, "Multiply 3 by 4.\n#### 12": -3.0}
    scout, validator = ScriptedEngine("small", steps=steps), ScriptedEngine("large", scores=scores)
    config = StrategiesConfig(search_width=2)
    result = run(StrategyRunner(scout, validator, config).run(req(), StrategyName.SEARCH, 4))
    assert result.answer.text == "Add 3 and 4.\n#### 7"
    assert result.steps == 2
    # Step 2's two expansions went to the partial solution the Validator scored higher (REBASE's balance).
    step2 = [(r.prefix, r.n) for r in scout.requests[1:]]
    assert step2 == [("Add 3 and 4.\n", 2)]
    assert all(r.stop == ["\n"] and r.max_tokens == config.step_tokens for r in scout.requests)


# -- the policy: budgets and the frontier ----------------------------------------------------------------


def test_a_request_over_its_budget_gets_the_best_strategy_that_fits_not_an_error():
    policy = StrategyPolicy(CostModel(prior_candidate_s=1.0))
    assert policy.plan(StrategyName.BEST_OF_N, 8, None, None).n == 8
    fit = policy.plan(StrategyName.BEST_OF_N, 8, 4.5, None)
    assert (fit.name, fit.n, fit.why) == (StrategyName.BEST_OF_N, 4, "over_budget")
    policy.costs.record(StrategyName.BEST_OF_N, 4, 20.0)  # measured: 5 s a candidate (scoring is slow)
    policy.costs.record(StrategyName.MAJORITY_VOTE, 4, 2.0)
    fit = policy.plan(StrategyName.BEST_OF_N, 8, 4.5, None)
    # best_of_n now costs 5 s a candidate (10 s at n=2): an unscored vote of 8 (0.5 s each) fits.
    assert (fit.name, fit.n) == (StrategyName.MAJORITY_VOTE, 8)
    assert policy.plan(StrategyName.BEST_OF_N, 8, 0.1, None).name is StrategyName.GREEDY


def frontier() -> Frontier:
    easy = [Entry("validator", 1, 0.50, 4.0), Entry("scout", 1, 0.30, 1.0), Entry("majority_vote", 4, 0.52, 3.0),
            Entry("best_of_n", 8, 0.60, 9.0)]
    hard = [Entry("validator", 1, 0.40, 6.0), Entry("majority_vote", 4, 0.10, 3.0), Entry("best_of_n", 8, 0.2, 9.0)]
    return Frontier("test", [Bucket(0.5, easy), Bucket(None, hard)])


def test_auto_picks_the_cheapest_strategy_reaching_the_validators_accuracy_for_the_difficulty():
    f = frontier()
    policy = StrategyPolicy(CostModel(frontier=f), f)
    easy = policy.plan(StrategyName.AUTO, 1, None, 0.2)
    assert (easy.name, easy.n, easy.why) == (StrategyName.MAJORITY_VOTE, 4, "frontier")
    hard = policy.plan(StrategyName.AUTO, 1, None, 0.9)
    assert hard.name is StrategyName.GREEDY  # nothing of the Scout's reaches it: the cascade
    # A budget below the reaching point: the most accurate that fits.
    # A budget nothing fits (the cheapest point costs 3 s): the cascade, which always runs.
    assert policy.plan(StrategyName.AUTO, 1, 2.0, 0.2).name is StrategyName.GREEDY
    tight = StrategyPolicy(CostModel(frontier=f), f, target=0.55).plan(StrategyName.AUTO, 1, 5.0, 0.2)
    assert tight.name is StrategyName.MAJORITY_VOTE  # best_of_n 8 reaches 0.55 but costs 9 s
    # A bucket where the Validator solved nothing is no evidence for any strategy: the cascade.
    zero = Frontier("z", [Bucket(None, [Entry("validator", 1, 0.0, 4.0), Entry("majority_vote", 2, 0.0, 1.0)])])
    assert StrategyPolicy(CostModel(frontier=zero), zero).plan(StrategyName.AUTO, 1, None, 0.2).name \
        is StrategyName.GREEDY
    # Without a frontier 'auto' is the cascade.
    assert StrategyPolicy(CostModel()).plan(StrategyName.AUTO, 1, None, 0.2).name is StrategyName.GREEDY


def test_the_frontier_file_round_trips(tmp_path):
    path = tmp_path / "frontier.json"
    path.write_text(json.dumps({"version": "v1", "profile": "tiny", "buckets": [
        {"max_complexity": None, "entries": [{"strategy": "validator", "n": 1, "accuracy": 0.4, "cost_s": 2.0},
                                             {"strategy": "majority_vote", "n": 4, "accuracy": 0.3, "cost_s": 2.0}]}]}))
    f = Frontier.load(path)
    assert f.version == "v1" and f.meta["profile"] == "tiny"
    assert CostModel(frontier=f).predict(StrategyName.MAJORITY_VOTE, 8) == pytest.approx(4.0)


# -- through the pipeline and the service --------------------------------------------------------------


def test_a_strategy_answers_through_the_pipeline_traced_costed_and_never_cached(tmp_path):
    config = CacheConfig(enabled=True)
    cache = SemanticCache(EdgeStore(tmp_path / "s", FakeEmbedder.dimension), FakeEmbedder(), config)
    scout = ScriptedEngine("small", ["#### 7", "#### 9", "#### 7", "#### 7"])
    validator = ScriptedEngine("large", scores={"#### 7": -0.2, "#### 9": -1.0})
    ledger = CostLedger()
    pipeline = build_pipeline(scout, validator, TieringConfig(), cache=cache, cache_config=config, observers=[ledger])
    try:
        routed = run(pipeline.complete(req(), strategy=StrategySpec(name="weighted_vote", n=4)))
    finally:
        run(cache.close())
    trace = routed.trace
    assert (trace.tier, trace.reason) == ("scout", "strategy")
    stages = {s.stage: s for s in trace.stages}
    assert stages["cache"].decision == "skipped" and stages["cache"].detail["reason"] == "strategy"
    assert "admission" not in stages  # nothing looked up, nothing offered
    s = stages["strategy"]
    assert s.decision == "ran" and s.detail["strategy"] == "weighted_vote" and s.detail["n"] == 4
    assert [c["answer"] for c in s.detail["candidates"]] == ["7", "9", "7", "7"]
    assert set(s.detail["tally"]) == {"7", "9"} and s.detail["cost_s"] >= 0
    assert "scout" not in stages and "validator" not in stages
    assert routed.generation.text == "#### 7"
    assert set(trace.cost) == {"scout", "validator"}  # sampling and scoring, booked per tier
    account = ledger.totals()["namespaces"]["default"]["scout"]
    # The counterfactual is the Validator writing the chosen answer (2 tokens at its prior 0.05 s a token), not
    # all the candidates the usage counts.
    assert account["requests"] == 1 and account["validator_only_s"] == pytest.approx(0.1)
    assert routed.generation.usage.completion_tokens == 8


def test_a_streamed_strategy_streams_the_chosen_answer_with_the_same_trace():
    async def go():
        pipeline = build_pipeline(ScriptedEngine("small", ["#### 7", "#### 9", "#### 7"]), ScriptedEngine("large"),
                                  TieringConfig())
        stream = await pipeline.open_stream(req(), strategy=StrategySpec(name="majority_vote", n=3))
        text = "".join([c.text async for c in stream.chunks])
        return text, stream.trace

    text, trace = run(go())
    assert text == "#### 7" and (trace.tier, trace.reason) == ("scout", "strategy")
    assert trace.stages[0].detail["tally"] == {"7": 2.0, "9": 1.0}


def test_auto_by_default_looks_the_cache_up_first_and_never_admits_a_strategys_answer(tmp_path):
    config = CacheConfig(enabled=True)
    cache = SemanticCache(EdgeStore(tmp_path / "s", FakeEmbedder.dimension), FakeEmbedder(), config)
    f = Frontier("t", [Bucket(None, [Entry("validator", 1, 0.5, 4.0), Entry("majority_vote", 2, 0.6, 2.0)])])
    scout = ScriptedEngine("small", ["#### 7", "#### 7"])
    pipeline = build_pipeline(scout, ScriptedEngine("large"), TieringConfig(), cache=cache, cache_config=config,
                              strategies=StrategiesConfig(default="auto"),
                              strategy_policy=StrategyPolicy(CostModel(frontier=f), f))
    try:
        routed = run(pipeline.complete(req()))
    finally:
        run(cache.close())
    stages = {s.stage: s for s in routed.trace.stages}
    assert stages["cache"].decision == "miss"
    assert stages["strategy"].decision == "ran" and stages["strategy"].detail["why"] == "frontier"
    assert stages["admission"].decision == "rejected" and stages["admission"].detail["reason"] == "strategy"


def test_over_budget_degrades_and_a_failed_strategy_falls_back_to_the_cascade():
    scout = ScriptedEngine("small", ["#### 7", "#### 9"])
    validator = ScriptedEngine("large", ["#### 7"])
    policy = StrategyPolicy(CostModel(prior_candidate_s=1.0))
    pipeline = build_pipeline(scout, validator, TieringConfig(), strategy_policy=policy)
    routed = run(pipeline.complete(req(), strategy=StrategySpec(name="best_of_n", n=8, budget=2.5)))
    s = next(st for st in routed.trace.stages if st.stage == "strategy")
    assert s.decision == "degraded" and s.detail["n"] == 2 and s.detail["requested"] == "best_of_n"
    # What it really spent is learnt: these engines answer at once, so now all 8 candidates fit.
    assert policy.costs.predict(StrategyName.BEST_OF_N, 8) < 2.5
    # Below any strategy's cost: the cascade answers, and the trace says why.
    fresh = build_pipeline(scout, validator, TieringConfig(), strategy_policy=StrategyPolicy(CostModel(1.0)))
    routed = run(fresh.complete(req(), strategy=StrategySpec(name="best_of_n", n=8, budget=0.01)))
    assert [(s.stage, s.decision) for s in routed.trace.stages][:1] == [("strategy", "cascade")]
    assert routed.trace.reason != "strategy"
    broken = build_pipeline(ScriptedEngine("small", fail=True), validator, TieringConfig())
    routed = run(broken.complete(req(), strategy=StrategySpec(name="majority_vote", n=2)))
    assert routed.trace.stages[0].decision == "failed" and routed.trace.tier == "validator"


def test_n_choices_skip_the_scout_and_the_cache_and_come_back_whole(tmp_path):
    config = CacheConfig(enabled=True)
    cache = SemanticCache(EdgeStore(tmp_path / "s", FakeEmbedder.dimension), FakeEmbedder(), config)
    scout, validator = FakeEngine("small", ["Par", "is"]), FakeEngine("large", ["Paris", "."])
    pipeline = build_pipeline(scout, validator, TieringConfig(), cache=cache, cache_config=config)
    try:
        routed = run(pipeline.complete(req("Capital of France?", n=3)))
    finally:
        run(cache.close())
    assert [g.text for g in routed.generation.choices] == ["Paris.", "Paris. (1)", "Paris. (2)"]
    assert routed.generation.usage.completion_tokens == 6
    stages = {s.stage: s for s in routed.trace.stages}
    assert stages["cache"].detail["reason"] == "n"
    assert stages["scout"].decision == "skipped" and stages["scout"].detail["reason"] == "multiple_choices"
    assert validator.requests[0].n == 3 and not scout.requests


def service(**api) -> tuple[OpenAIService, FakeEngine]:
    scout, validator = FakeEngine("small", ["Par", "is"]), FakeEngine("large", ["Paris", "."])
    svc = OpenAIService(build_pipeline(scout, validator, TieringConfig()), ApiConfig(**api), scout, validator)
    return svc, validator


def test_n_end_to_end_non_streamed_and_streamed_usage_adds_up():
    svc, _ = service()
    body, _ = run(svc.chat(ChatCompletionRequest.model_validate(
        {"messages": [{"role": "user", "content": "Capital of France?"}], "n": 2, "temperature": 0.7})))
    assert [c["index"] for c in body["choices"]] == [0, 1]
    assert [c["message"]["content"] for c in body["choices"]] == ["Paris.", "Paris. (1)"]
    assert body["usage"]["completion_tokens"] == 4

    async def events() -> list[dict]:
        sse, _ = await svc.chat_stream(ChatCompletionRequest.model_validate(
            {"messages": [{"role": "user", "content": "Capital of France?"}], "n": 2, "stream": True,
             "stream_options": {"include_usage": True}}))
        return [json.loads(e[6:]) for e in [x async for x in sse] if e.strip() != "data: [DONE]"]

    out = run(events())
    texts: dict[int, str] = {}
    roles, finishes = set(), []
    for e in out:
        for c in e["choices"]:
            texts[c["index"]] = texts.get(c["index"], "") + (c["delta"].get("content") or "")
            if c["delta"].get("role"):
                roles.add(c["index"])
            if c.get("finish_reason"):
                finishes.append(c["index"])
    assert texts == {0: "Paris.", 1: "Paris. (1)"}
    assert roles == {0, 1} and sorted(finishes) == [0, 1]
    assert "route" in out[-2] and out[-1]["usage"]["completion_tokens"] == 4


def test_n_and_strategy_n_are_bounded_by_the_service():
    from serving.errors import InvalidRequestError

    svc, _ = service(max_choices=4)
    with pytest.raises(InvalidRequestError) as info:
        run(svc.chat(ChatCompletionRequest.model_validate({"messages": [{"role": "user", "content": "x"}], "n": 5})))
    assert info.value.param == "n"
    with pytest.raises(InvalidRequestError) as info:
        run(svc.chat(ChatCompletionRequest.model_validate(
            {"messages": [{"role": "user", "content": "x"}], "strategy": {"name": "best_of_n", "n": 8}})))
    assert info.value.param == "strategy.n"


def test_a_tenants_strategy_budget_caps_the_requests():
    auth = AuthConfig(tenants={"acme": TenantConfig(keys=[{"sha256": "ab" * 32}], strategy_budget_s=2.0)})
    svc = OpenAIService(build_pipeline(FakeEngine("s", ["a"]), FakeEngine("l", ["b"])), ApiConfig(),
                        FakeEngine("s", ["a"]), FakeEngine("l", ["b"]), Tenancy(auth))
    from serving.tenancy import Caller

    spec = svc._strategy(ChatCompletionRequest.model_validate(
        {"messages": [{"role": "user", "content": "x"}], "strategy": {"name": "best_of_n", "budget": 10}}),
        Caller("acme"))
    assert spec.budget == 2.0
    spec = svc._strategy(ChatCompletionRequest.model_validate(
        {"messages": [{"role": "user", "content": "x"}], "strategy": {"name": "best_of_n", "budget": 1}}),
        Caller("acme"))
    assert spec.budget == 1


def test_greedy_choices_are_one_answer_repeated_streamed_or_not():
    from serving.handles.engine import ServeLLMEngine

    class Handle:
        """Stands in for the LLMServer's handle: answers one choice, as vLLM does for a greedy request."""

        def __init__(self, stream: bool) -> None:
            self.stream = stream

        def __getattr__(self, name):
            return self

        def options(self, **kw):
            return self

        def remote(self, vreq):
            assert vreq.n == 1

            async def items():
                if not self.stream:
                    yield {"choices": [{"index": 0, "message": {"content": "Paris"}, "finish_reason": "stop"}],
                           "usage": {"prompt_tokens": 5, "completion_tokens": 2}}
                    return
                yield ['data: {"choices": [{"index": 0, "delta": {"content": "Paris"}}]}\n\n',
                       'data: {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}\n\n',
                       'data: {"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 2}}\n\n']
            return items()

    gen = run(ServeLLMEngine(Handle(False), "m").generate(replace(req(), n=3)))
    assert [g.text for g in gen.choices] == ["Paris"] * 3 and gen.usage.completion_tokens == 6

    async def chunks():
        return [c async for c in ServeLLMEngine(Handle(True), "m").stream(replace(req(), n=2))]

    out = run(chunks())
    assert [(c.index, c.text) for c in out if c.text] == [(0, "Paris"), (1, "Paris")]
    assert [c.usage.completion_tokens for c in out if c.usage] == [4]


def test_the_engine_sends_n_and_a_prefix_to_vllm():
    from serving.handles.engine import ServeLLMEngine

    engine = ServeLLMEngine(handle=None, model_id="m")
    chat = engine._to_vllm(replace(req(), n=3, temperature=0.7, prefix="Step 1."), stream=False)
    assert chat.n == 3 and chat.continue_final_message and not chat.add_generation_prompt
    # vLLM refuses n > 1 without sampling: a greedy request asks for its one answer, repeated into n choices.
    assert engine._to_vllm(replace(req(), n=3), stream=False).n == 1
    assert chat.messages[-1] == {"role": "assistant", "content": "Step 1."}
    text = engine._to_vllm(GenerationRequest(prompt="Q: ", prefix="A: 4", max_tokens=4), stream=False)
    assert text.prompt == "Q: A: 4" and text.n == 1
