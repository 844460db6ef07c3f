"""The request analyzer: profiles, plans, priority classes, and the shipped complexity artifact."""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest

from serving.analyzer import (
    DEFAULT_ARTIFACT,
    AnalysisInput,
    ComplexityModel,
    RequestAnalyzer,
    RoutePlan,
    TokenCounter,
    feature_names,
    profile_request,
)
from serving.analyzer.complexity import PROFILE_FEATURES
from serving.api import RouteTrace, StageRecord
from serving.config import AnalyzerConfig, AppConfig, PriorityConfig
from serving.config.analyzer import DEFAULT_OUTPUT_TOKENS
from serving.engines.base import GenerationRequest
from serving.errors import InvalidRequestError
from serving.priority import resolve_priority
from tests.unit.fakes import FakeEmbedder


class WordCounter(TokenCounter):
    """Counts words of every message (the real counter is the Validator's tokenizer)."""

    def count(self, request: GenerationRequest) -> int:
        if request.kind == "completion":
            return len((request.prompt or "").split())
        return sum(len(str(m.get("content") or "").split()) for m in request.messages or [])


def chat(*turns: str) -> GenerationRequest:
    roles = ["user", "assistant"]
    return GenerationRequest(messages=[{"role": roles[i % 2], "content": t} for i, t in enumerate(turns)],
                             max_tokens=1024)


EASY = chat("What is the capital of France?")
HARD_MATH = chat("A train travels 120 km in 1.5 hours, then 200 km at 80 km/h. Calculate its average speed "
                 "for the whole trip, step by step.")
CODE = chat("Write a Python function that parses a CSV file and returns the sum of the second column.\n"
            "```python\ndef parse(path):\n    ...\n```")
MULTI_TURN = chat("Tell me about Hawaii.", "Hawaii is a US state made of islands.",
                  "Now compare its climate with Iceland's and explain why they differ.")


def _profile(req: GenerationRequest):
    return profile_request(req, WordCounter(), DEFAULT_OUTPUT_TOKENS)


def test_profiles_of_easy_math_code_and_multi_turn_prompts():
    easy, maths, code, multi = map(_profile, (EASY, HARD_MATH, CODE, MULTI_TURN))
    assert (easy.task, easy.turns, easy.code, easy.math, easy.reasoning) == ("chat", 1, False, False, False)
    assert maths.math and maths.reasoning and maths.task == "math" and maths.numbers == 4
    assert code.code and code.task == "code" and code.expected_output_tokens == DEFAULT_OUTPUT_TOKENS["code"]
    assert multi.turns == 2 and multi.reasoning and multi.task == "reasoning"
    # The last user turn is what is scanned and embedded, not the whole conversation.
    assert multi.words == len(MULTI_TURN.messages[-1]["content"].split())
    assert multi.prompt_tokens == WordCounter().count(MULTI_TURN)


def test_multiple_choice_is_a_short_answer():
    mc = _profile(chat("Which planet is largest?\nA. Mars\nB. Jupiter\nC. Venus\nD. Earth\nAnswer:"))
    assert mc.short_answer and mc.task == "short_answer" and mc.expected_output_tokens == 16


def test_text_completion_profile():
    p = profile_request(GenerationRequest(prompt="def fib(n):"), WordCounter(), DEFAULT_OUTPUT_TOKENS)
    assert p.turns == 1 and p.code and p.prompt_tokens == 2


def _toy_model(dim: int = FakeEmbedder.dimension) -> ComplexityModel:
    """Hard = maths or reasoning signals (weights on profile features only)."""
    names = feature_names(dim)
    coef = np.zeros(len(names))
    coef[PROFILE_FEATURES.index("math")] = 3.0
    coef[PROFILE_FEATURES.index("reasoning")] = 3.0
    return ComplexityModel(version="toy", names=names, coef=coef, intercept=-2.0, embedding_dim=dim)


def _analyzer(**cfg) -> RequestAnalyzer:
    return RequestAnalyzer(AnalyzerConfig(**cfg), FakeEmbedder(), WordCounter(), _toy_model())


def test_plans_for_easy_hard_code_and_multi_turn():
    analyzer = _analyzer(direct_threshold=0.6)
    items = [AnalysisInput(r) for r in (EASY, HARD_MATH, CODE, MULTI_TURN)]
    easy, hard, code, multi = asyncio.run(analyzer.analyze_many(items))
    assert easy.strategy == "scout_first" and easy.complexity == pytest.approx(1 / (1 + np.exp(2)))
    # The toy model: maths and reasoning add 3 each to the logit, from -2.
    assert hard.strategy == "validator_direct" and hard.complexity == pytest.approx(1 / (1 + np.exp(-4)))
    assert code.strategy == "scout_first" and code.max_tokens == 512
    assert multi.strategy == "validator_direct" and multi.profile.turns == 2
    assert easy.max_tokens == 256 and easy.priority == "interactive" and easy.vllm_priority == 0
    # One embedder call for the whole batch.
    assert analyzer.embedder.calls == 1


def test_forced_tier_and_threshold_one_never_go_direct():
    forced = asyncio.run(_analyzer().analyze(HARD_MATH, model="scout"))
    assert forced.strategy == "forced"
    never = asyncio.run(_analyzer(direct_threshold=1.0).analyze(HARD_MATH))
    # As hard as before (same score), but a threshold of 1 is above any probability the model gives.
    assert never.strategy == "scout_first" and never.complexity == pytest.approx(1 / (1 + np.exp(-4)))


def test_predicted_max_tokens_never_exceeds_the_request():
    req = chat("Write a Python class for a linked list.")
    req.max_tokens = 100
    assert asyncio.run(_analyzer().analyze(req)).max_tokens == 100


def test_embedder_failure_or_timeout_keeps_the_default_path():
    down = RequestAnalyzer(AnalyzerConfig(), FakeEmbedder(fail=True), WordCounter(), _toy_model())
    plan = asyncio.run(down.analyze(HARD_MATH))
    assert plan.complexity is None and plan.strategy == "scout_first" and "ConnectionError" in plan.error
    slow = RequestAnalyzer(AnalyzerConfig(timeout_s=0.01), FakeEmbedder(delay_s=0.5), WordCounter(), _toy_model())
    plan = asyncio.run(slow.analyze(HARD_MATH))
    assert plan.complexity is None and "longer than" in plan.error and plan.profile.math


def test_embedding_size_must_match_the_model():
    with pytest.raises(ValueError, match="384"):
        RequestAnalyzer(AnalyzerConfig(), FakeEmbedder(), WordCounter(), ComplexityModel.load())


def test_plan_is_json_and_fits_the_route_trace():
    plan = asyncio.run(_analyzer().analyze(HARD_MATH, priority="batch"))
    assert RoutePlan.model_validate_json(plan.model_dump_json()) == plan
    trace = RouteTrace(stages=[StageRecord(stage="analyzer", decision=plan.strategy, latency_ms=0.0,
                                           detail=plan.trace_detail())])
    detail = json.loads(trace.model_dump_json())["stages"][0]["detail"]
    assert detail["priority"] == "batch" and detail["signals"] == ["math", "reasoning"]
    assert plan.vllm_priority == 10


def test_priority_from_tenant_header_or_default():
    cfg = PriorityConfig()
    assert resolve_priority(cfg).name == "interactive"
    assert resolve_priority(cfg, header=" Batch ").name == "batch"
    # The tenant's class is a ceiling: a batch tenant cannot promote itself with the header.
    p = resolve_priority(cfg, header="interactive", ceiling="batch")
    assert (p.name, p.value, p.source) == ("batch", 10, "tenant")
    # ... and its default; an interactive tenant may still send batch work.
    assert resolve_priority(cfg, ceiling="batch").source == "tenant"
    assert resolve_priority(cfg, header="batch", ceiling="interactive").name == "batch"
    with pytest.raises(InvalidRequestError, match="x-infopt-priority") as e:
        resolve_priority(cfg, header="urgent")
    assert e.value.param == "x-infopt-priority"


def test_config_rejects_unknown_classes():
    with pytest.raises(ValueError, match="default_priority"):
        PriorityConfig(default_priority="vip")
    with pytest.raises(ValueError, match="unknown priority classes"):
        AppConfig(scout={"model": "a"}, validator={"model": "b"},
                  auth={"tenants": {"t": {"keys": [{"sha256": "ab" * 32}], "priority": "vip"}}})
    # Priority is a section of its own: the analyzer config no longer takes it.
    with pytest.raises(ValueError, match=r"analyzer\.priorities moved to priority\.classes"):
        AnalyzerConfig(priorities={"interactive": 0})


def test_the_plan_carries_the_configured_vllm_priority():
    """The analyzer reads the classes' vLLM priorities from the `priority` section."""
    priority = PriorityConfig(classes={"interactive": 1, "batch": 10, "bulk": 30}, default_priority="interactive")
    analyzer = RequestAnalyzer(AnalyzerConfig(), FakeEmbedder(), WordCounter(), _toy_model(), priority=priority)
    bulk, default = asyncio.run(analyzer.analyze_many([AnalysisInput(HARD_MATH, priority="bulk"),
                                                      AnalysisInput(HARD_MATH)]))
    assert (bulk.priority, bulk.vllm_priority) == ("bulk", 30)
    assert (default.priority, default.vllm_priority) == ("interactive", 1)


def test_shipped_artifact_is_complete_and_scores_with_numpy():
    model = ComplexityModel.load()
    assert model.embedding_dim == 384 and model.names == feature_names(384)
    meta = model.meta
    for key in ("training_data_sha256", "seed", "held_out_auc", "n_train", "n_held_out", "C"):
        assert key in meta, key
    assert 0.5 < meta["held_out_auc"] <= 1.0
    # Serialisation is stable: loading and writing gives the same bytes.
    assert model.to_json() == DEFAULT_ARTIFACT.read_text()
    x = np.zeros((2, len(model.names)))
    x[1, : len(PROFILE_FEATURES)] = 1.0
    s = model.score_features(x)
    # The logistic model by hand: a zero row scores sigmoid(intercept); the other adds the profile weights.
    expected = [1 / (1 + np.exp(-model.intercept)),
                1 / (1 + np.exp(-(model.intercept + model.coef[: len(PROFILE_FEATURES)].sum())))]
    assert s.shape == (2,) and s == pytest.approx(expected)


def test_artifact_names_the_data_it_was_trained_on(shared_data):
    from infopt.training import data_digest

    assert ComplexityModel.load().meta["training_data_sha256"] == data_digest(shared_data / "routellm")


def test_a_request_is_embedded_once_the_cache_reuses_the_analyzers_vector(tmp_path):
    """Analyzer and cache share the Embedder: the cache's semantic lookup (and admission) reuse the
    analyzer's embedding of the same normalised question instead of embedding it again."""
    from serving.cache.edge import EdgeStore
    from serving.cache.semantic import SemanticCache
    from serving.config import CacheConfig, TieringConfig
    from serving.pipeline import build_pipeline
    from tests.unit.fakes import FakeEngine

    embedder = FakeEmbedder()
    config = CacheConfig(enabled=True, similarity_threshold=0.95)
    cache = SemanticCache(EdgeStore(tmp_path / "s", FakeEmbedder.dimension), embedder, config)
    analyzer = RequestAnalyzer(AnalyzerConfig(), embedder, WordCounter(), _toy_model())
    router = build_pipeline(FakeEngine("small", ["Paris."]), FakeEngine("large", ["Paris."]), TieringConfig(),
                          cache=cache, cache_config=config, analyzer=analyzer)

    def ask(question: str):
        request = GenerationRequest(messages=[{"role": "user", "content": question}], temperature=0)
        return asyncio.run(router.complete(request))

    try:
        first = ask("What is  the capital of France?")  # the cache normalises the double space
        analyzed, looked_up = first.trace.stages[0], first.trace.stages[1]
        assert analyzed.detail["model_version"] == "toy"
        assert (looked_up.decision, looked_up.detail["embedding"]) == ("miss", "analyzer")
        assert first.trace.stages[-1].decision == "admitted"
        assert embedder.calls == 1  # analyzer; the lookup and the admission reused its vector
        second = ask("what is the capital of france?")  # same words: a semantic hit, found with the reused vector
        assert second.trace.stages[1].decision == "semantic_hit" and second.trace.tier == "cache"
        assert embedder.calls == 2
    finally:
        asyncio.run(cache.close())
