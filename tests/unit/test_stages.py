"""Each stage of the pipeline through its own interface (`Stage.run(state)`), with fakes that subclass the
interfaces the stages depend on; and the executor's shared path for streamed and non-streamed requests."""

from __future__ import annotations

import asyncio
import math

import pytest

from serving.analyzer import Analyzer, RoutePlan, profile_request
from serving.api import CacheControl
from serving.cache.keys import CacheKey
from serving.cache.semantic import CachedAnswer, CacheLookup, ResponseCache
from serving.cache.store import CacheEntry, Selector
from serving.config import AnalyzerConfig, CacheConfig, TieringConfig
from serving.engines.base import GenerationRequest
from serving.errors import (
    ContextLengthExceededError,
    EngineTimeoutError,
    EngineUnavailableError,
    InvalidRequestError,
    OverloadedError,
    to_openai_error,
)
from serving.pipeline import (
    AdmissionDecision,
    AdmissionStage,
    AnalyzerDecision,
    AnalyzerStage,
    CacheStage,
    Reason,
    RequestState,
    Route,
    ScoutDecision,
    ScoutStage,
    StageName,
    Tier,
    ValidatorStage,
    assemble,
    build_pipeline,
)
from serving.policy.escalation import EscalationPolicy
from serving.verify import Draft, Verified
from tests.unit.fakes import FakeEngine

SURE = [math.log(0.99)] * 4
UNSURE = [math.log(0.99)] * 3 + [math.log(0.05)]


def run(coro):
    return asyncio.run(coro)


def state(question: str = "capital of France?", route: Route = Route.AUTO, stream: bool = False, **kw) -> RequestState:
    kw.setdefault("temperature", 0)
    return RequestState(request=GenerationRequest(messages=[{"role": "user", "content": question}], **kw),
                        route=route, threshold=0.5, confidence_method="min", cache_control=CacheControl(),
                        stream=stream)


async def drain(s: RequestState) -> str:
    assert s.answer is not None
    chunks = [c async for c in s.answer]
    s.result = assemble(chunks, s.model)
    return s.result.text


def decisions(s: RequestState) -> list[tuple[str, str]]:
    return [(o.stage, o.decision) for o in s.outcomes]


# -- analyzer ---------------------------------------------------------------------------------


class PlanByWord(Analyzer):
    """Plans 'hard' questions validator_direct; can fail or be slow."""

    def __init__(self, fail: bool = False, delay_s: float = 0.0) -> None:
        self.fail, self.delay_s = fail, delay_s

    async def analyze(self, request, *, model="auto", priority=None) -> RoutePlan:
        await asyncio.sleep(self.delay_s)
        if self.fail:
            raise ConnectionError("embedder is down")
        hard = "hard" in request.messages[-1]["content"]
        strategy = "forced" if model != "auto" else "validator_direct" if hard else "scout_first"
        return RoutePlan(profile=profile_request(request, None, AnalyzerConfig().expected_output_tokens),
                         complexity=0.9 if hard else 0.1, threshold=0.5, strategy=strategy,
                         priority=priority or "interactive", vllm_priority=7, max_tokens=16, model_version="t",
                         embedding=[1.0, 0.0])


def test_analyzer_stage_writes_the_plan_and_the_vllm_priority():
    s = state("a hard one")
    run(AnalyzerStage(PlanByWord()).run(s))
    assert s.plan is not None and s.plan.strategy == "validator_direct"
    assert s.request.priority == 7
    assert decisions(s) == [(StageName.ANALYZER, AnalyzerDecision.VALIDATOR_DIRECT)]
    assert s.outcomes[0].detail["complexity"] == 0.9


@pytest.mark.parametrize(("analyzer", "error"), [(PlanByWord(fail=True), "ConnectionError: embedder is down"),
                                                 (PlanByWord(delay_s=1.0), "timeout")])
def test_analyzer_stage_failure_is_recorded_and_leaves_the_default_path(analyzer, error):
    s = state()
    run(AnalyzerStage(analyzer, timeout_s=0.05).run(s))
    assert s.plan is None and s.request.priority == 0
    assert decisions(s) == [("analyzer", "failed")] and s.outcomes[0].detail["error"] == error


# -- cache ------------------------------------------------------------------------------------


class ScriptedCache(ResponseCache):
    """Answers lookups with a scripted outcome; records admissions; can fail."""

    def __init__(self, found: CacheLookup | None = None, fail: bool = False) -> None:
        self.found = found or CacheLookup("miss", vector=[0.5, 0.5])
        self.fail = fail
        self.lookups: list[tuple[CacheKey, list[float] | None]] = []
        self.admitted: list[tuple[CacheKey, CachedAnswer, list[float] | None]] = []

    async def lookup(self, key, *, vector=None):
        self.lookups.append((key, vector))
        if self.fail:
            raise ConnectionError("cache is down")
        return self.found

    async def admit(self, key, answer, *, vector=None, ttl_s=None, tags=None):
        if self.fail:
            raise ConnectionError("cache is down")
        self.admitted.append((key, answer, vector))
        return "entry-1"

    async def invalidate(self, selector: Selector) -> int:
        return 0

    async def stats(self):
        return {}

    async def raise_bound(self, entry_id, *, similarity=None, score=None):
        self.bounds = [*getattr(self, "bounds", []), (entry_id, similarity, score)]
        return True


def entry(answer: str = "Paris.") -> CacheEntry:
    return CacheEntry(namespace="default", model="auto", fingerprint="f", exact="ab" * 32, context="c", params="p",
                      question="capital of france?", answer=answer, finish_reason="stop", prompt_tokens=3,
                      completion_tokens=2, tier="validator", engine_model="large", confidence=None,
                      created_at=0.0, expires_at=1e12, last_hit_at=0.0, hits=0, tags=[])


def test_cache_stage_serves_a_hit_as_chunks():
    cache = ScriptedCache(CacheLookup("semantic_hit", entry(), similarity=0.97))
    s = state()
    run(CacheStage(cache, CacheConfig(), "fp").run(s))
    assert (s.tier, s.reason, s.model) == (Tier.CACHE, Reason.SEMANTIC, "large")
    assert run(drain(s)) == "Paris." and s.result.usage.completion_tokens == 2
    assert decisions(s) == [("cache", "semantic_hit")] and s.outcomes[0].detail["similarity"] == 0.97


def test_cache_stage_books_a_cascade_engines_cross_check_to_its_tier_and_the_ledger_keeps_it_apart():
    from serving.cache.semantic import CheckCost
    from serving.engines.base import Usage
    from serving.quality.ledger import CostLedger

    check = CheckCost("validator", Usage(140, 2), 0.6)
    s = state()
    run(CacheStage(ScriptedCache(CacheLookup("semantic_hit", entry(), similarity=0.9, rule="verifier", score=0.93,
                                             check=check)), CacheConfig(), "fp").run(s))
    assert s.tier is Tier.CACHE and s.cost.tiers == {}  # no answer was generated ...
    assert s.cost.checks[Tier.VALIDATOR].engine_s == 0.6  # ... but the Validator worked on this request
    assert s.cost.engine_s(Tier.VALIDATOR) == 0.6 and s.cost.as_dict()["validator_check"]["prompt_tokens"] == 140
    ledger = CostLedger(prior_s_per_token=0.01)
    counterfactual = ledger.book("default", "cache", s.cost, 2)
    account = ledger.totals()["namespaces"]["default"]["cache"]
    # Spent: the check. Counterfactual: the answer's 2 tokens at the running rate, not the check's time.
    assert account["engine_s"]["validator"] == 0.6 and counterfactual == pytest.approx(0.02)
    assert account["validator_s_saved"] == pytest.approx(0.02 - 0.6) and ledger.s_per_token == 0.01


def test_cache_stage_miss_leaves_admission_and_a_near_miss_draft_and_reuses_the_plans_vector():
    near = entry("Paris is the capital.")
    cache = ScriptedCache(CacheLookup("miss", vector=[0.6, 0.8], draft=near, draft_similarity=0.88))
    s = state()
    s.plan = run(PlanByWord().analyze(s.request))
    run(CacheStage(cache, CacheConfig(), "fp").run(s))
    assert s.answer is None and cache.lookups[0][1] == [1.0, 0.0]  # the analyzer's vector, not a new one
    assert s.admission is not None and s.admission.vector == [0.6, 0.8]
    assert s.draft == Draft("Paris is the capital.", "cache", similarity=0.88)
    assert decisions(s) == [("cache", "miss")] and s.outcomes[0].detail["embedding"] == "analyzer"


def test_cache_stage_skips_sampled_requests_and_bypasses_a_failing_cache():
    s = state(temperature=0.7)
    run(CacheStage(ScriptedCache(), CacheConfig(), "fp").run(s))
    assert decisions(s) == [("cache", "skipped")] and s.outcomes[0].detail["reason"] == "sampled"
    s = state()
    run(CacheStage(ScriptedCache(fail=True), CacheConfig(), "fp").run(s))
    assert decisions(s) == [("cache", "bypass")] and s.admission is None and s.answer is None


def test_cache_stage_refresh_admits_without_looking_up_and_ttl_above_the_limit_is_a_400():
    cache = ScriptedCache()
    s = state()
    s.cache_control = CacheControl(mode="refresh")
    run(CacheStage(cache, CacheConfig(), "fp").run(s))
    assert cache.lookups == [] and s.admission is not None and decisions(s) == [("cache", "skipped")]
    s = state()
    s.cache_control = CacheControl(ttl_s=1e9)
    with pytest.raises(InvalidRequestError, match="above the limit"):
        run(CacheStage(cache, CacheConfig(), "fp").run(s))


def test_admission_stage_admits_final_answers_and_rejects_by_policy():
    cache = ScriptedCache()
    s = state()
    run(CacheStage(cache, CacheConfig(), "fp").run(s))
    s.tier, s.model = Tier.VALIDATOR, "large"
    s.result = assemble([], "large")  # empty: the policy refuses it
    run(AdmissionStage(cache, CacheConfig()).run(s))
    assert s.outcomes[-1].decision is AdmissionDecision.REJECTED and s.outcomes[-1].detail["reason"] == "empty"
    s.answered(Tier.VALIDATOR, Reason.FORCED, "large", FakeEngine("large", ["Paris", "."]).stream(s.request))
    run(drain(s))
    run(AdmissionStage(cache, CacheConfig()).run(s))
    assert s.outcomes[-1].decision is AdmissionDecision.ADMITTED
    _key, answer, vector = cache.admitted[0]
    assert (answer.text, answer.tier, vector) == ("Paris.", "validator", [0.5, 0.5])


def test_admission_failure_never_fails_the_request():
    s = state()
    cache = ScriptedCache()
    run(CacheStage(cache, CacheConfig(), "fp").run(s))
    s.answered(Tier.VALIDATOR, Reason.FORCED, "large", FakeEngine("large", ["Paris", "."]).stream(s.request))
    run(drain(s))
    cache.fail = True
    run(AdmissionStage(cache, CacheConfig()).run(s))
    assert s.outcomes[-1].decision is AdmissionDecision.FAILED and "cache is down" in s.outcomes[-1].detail["error"]


# -- scout ------------------------------------------------------------------------------------


def scout_stage(lp=SURE, **kw) -> tuple[ScoutStage, FakeEngine]:
    engine = FakeEngine("small", ["Par", "is", ".", ""], lp, fail=kw.pop("fail", False),
                        delay_s=kw.pop("delay_s", 0.0))
    policy = EscalationPolicy(TieringConfig(threshold=0.5, **kw))
    return ScoutStage(engine, policy, TieringConfig().confidence, timeout_s=0.2), engine


def test_scout_stage_keeps_a_confident_answer_and_costs_it():
    stage, engine = scout_stage(SURE)
    s = state()
    run(stage.run(s))
    assert (s.scout, s.tier, s.reason) == (ScoutDecision.CONFIDENT, Tier.SCOUT, Reason.CONFIDENT)
    assert run(drain(s)) == "Paris." and s.result.tokens is None  # logprobs only when asked
    assert engine.requests[0].logprobs is True
    assert s.cost.tiers[Tier.SCOUT].completion_tokens == 4


def test_scout_stage_escalates_with_its_answer_as_the_draft():
    stage, _ = scout_stage(UNSURE)
    s = state()
    s.draft = Draft("an older near miss", "cache")
    run(stage.run(s))
    assert s.answer is None and s.scout is ScoutDecision.ESCALATE
    assert s.draft == Draft("Paris.", "scout") and s.confidence == pytest.approx(0.05)


def test_scout_stage_failure_escalates_unless_forced():
    stage, _ = scout_stage(fail=True)
    s = state()
    run(stage.run(s))
    assert s.scout is ScoutDecision.FAILED and s.answer is None
    with pytest.raises(EngineUnavailableError):
        run(stage.run(state(route=Route.SCOUT)))
    slow, _ = scout_stage(delay_s=1.0)
    with pytest.raises(EngineTimeoutError):
        run(slow.run(state(route=Route.SCOUT)))


class BusyEngine(FakeEngine):
    """A Scout whose queue is full (what the handle makes of Ray's BackPressureError)."""

    async def generate(self, request):
        self.requests.append(request)
        raise OverloadedError("small is at its queue limit", retry_after_s=2.0)


@pytest.mark.parametrize("policy", ["reject", "validator"])
def test_an_overloaded_scout_does_not_silently_pour_onto_the_validator(policy):
    from serving.breaker import CircuitBreaker

    breaker = CircuitBreaker("scout", failures=1, reset_s=60)
    stage = ScoutStage(BusyEngine("small", ["x"]), EscalationPolicy(TieringConfig(on_scout_overload=policy)),
                       TieringConfig().confidence, timeout_s=1, breaker=breaker)
    s = state()
    if policy == "reject":
        with pytest.raises(OverloadedError) as e:
            run(stage.run(s))
        assert to_openai_error(e.value)[0] == 429 and e.value.retry_after_s == 2.0
    else:
        run(stage.run(s))
        assert s.answer is None
        assert stage.policy.validator_reason(s.route, s.scout, s.draft) is Reason.SCOUT_OVERLOADED
    # The trace says what happened and what followed; busy is not broken, so the breaker stays closed.
    assert s.scout is ScoutDecision.OVERLOADED
    assert s.outcomes[-1].detail["then"] == ("rejected" if policy == "reject" else "validator")
    assert breaker.allow()


def test_scout_stage_is_skipped_for_a_validator_direct_plan_and_unused_by_forced_validator():
    stage, engine = scout_stage()
    s = state("a hard one")
    s.plan = run(PlanByWord().analyze(s.request))
    run(stage.run(s))
    assert s.scout is ScoutDecision.SKIPPED and s.outcomes[0].detail == {"reason": "predicted_hard", "complexity": 0.9}
    s = state(route=Route.VALIDATOR)
    run(stage.run(s))
    assert s.outcomes == [] and engine.requests == []


# -- validator --------------------------------------------------------------------------------


class Verifier(FakeEngine):
    """A Validator that verifies drafts: accepts the draft's first token; or cannot score it."""

    can_verify = True

    def __init__(self, *a, unscorable: bool = False, **kw) -> None:
        super().__init__(*a, **kw)
        self.unscorable = unscorable
        self.verified: list[str] = []

    async def verify(self, request, draft):
        self.verified.append(draft)
        if self.unscorable:
            raise ContextLengthExceededError("prompt + draft too long")
        return Verified(await self.generate(request), proposed=2, accepted=1, generated=3, saved=2)


@pytest.mark.parametrize("stream", [False, True])
def test_validator_stage_answers_the_same_streamed_or_not(stream):
    engine = FakeEngine("large", ["Paris", " is", " the", " capital"])
    s = state(stream=stream)
    s.scout = ScoutDecision.ESCALATE
    run(ValidatorStage(engine, EscalationPolicy(TieringConfig())).run(s))
    assert (s.tier, s.reason) == (Tier.VALIDATOR, Reason.ESCALATED)
    assert run(drain(s)) == "Paris is the capital" and s.result.usage.completion_tokens == 4
    assert decisions(s) == [("validator", "answered")] and s.cost.tiers[Tier.VALIDATOR].completion_tokens == 4


def test_validator_stage_verifies_an_approved_draft_and_falls_back_when_it_cannot_be_scored():
    policy = EscalationPolicy(TieringConfig(verified_escalation=True), can_verify_drafts=True)
    engine = Verifier("large", ["Paris", "."])
    s = state()
    s.draft = Draft("Paris is", "scout")
    run(ValidatorStage(engine, policy).run(s))
    run(drain(s))
    assert decisions(s) == [("validator", "verified")] and s.outcomes[0].detail["accepted_tokens"] == 1
    assert policy.acceptance.seen == {"scout": 1}
    unscorable = Verifier("large", ["Paris", "."], unscorable=True)
    s = state()
    s.draft = Draft("Paris is", "scout")
    run(ValidatorStage(unscorable, policy).run(s))
    assert run(drain(s)) == "Paris."
    assert decisions(s) == [("validator", "answered")] and s.outcomes[0].detail["verify_failed"] is not None


def test_validator_stage_timeout_is_recorded_then_raised():
    s = state(stream=True)
    run(ValidatorStage(FakeEngine("large", ["a", "b"], delay_s=0.2), EscalationPolicy(TieringConfig()),
                       timeout_s=0.05).run(s))
    with pytest.raises(EngineTimeoutError):
        run(drain(s))
    assert decisions(s) == [("validator", "failed")]


# -- the escalation policy --------------------------------------------------------------------


def test_validator_reason_follows_the_decisions_before_it():
    policy = EscalationPolicy(TieringConfig())
    cache_draft = Draft("x", "cache", approved=True)
    assert policy.validator_reason(Route.VALIDATOR, None, None) is Reason.FORCED
    assert policy.validator_reason(Route.AUTO, ScoutDecision.SKIPPED, cache_draft) is Reason.NEAR_MISS
    assert policy.validator_reason(Route.AUTO, ScoutDecision.SKIPPED, None) is Reason.VALIDATOR_DIRECT
    assert policy.validator_reason(Route.AUTO, None, None) is Reason.TIERING_DISABLED
    assert policy.validator_reason(Route.AUTO, ScoutDecision.FAILED, None) is Reason.SCOUT_FAILED
    assert policy.validator_reason(Route.AUTO, ScoutDecision.ESCALATE, Draft("y", "scout")) is Reason.ESCALATED


def test_threshold_override_and_judgement():
    policy = EscalationPolicy(TieringConfig(threshold=0.5))
    assert policy.threshold(None) == 0.5 and policy.threshold(0.9) == 0.9
    assert policy.judge(Route.AUTO, 0.5, 0.5) is ScoutDecision.CONFIDENT
    assert policy.judge(Route.AUTO, 0.49, 0.5) is ScoutDecision.ESCALATE
    assert policy.judge(Route.SCOUT, 0.0, 0.5) is ScoutDecision.FORCED


# -- the executor: one path for streamed and non-streamed requests ------------------------------


def req(question: str = "What is the capital of France?") -> GenerationRequest:
    return GenerationRequest(messages=[{"role": "user", "content": question}], temperature=0)


def test_a_streamed_request_leads_a_flight_that_an_identical_non_streamed_request_joins():
    scout = FakeEngine("small", ["Par", "is", ".", ""], UNSURE, delay_s=0.02)
    validator = FakeEngine("large", ["Paris", " is", " the", " capital."], delay_s=0.02)
    pipeline = build_pipeline(scout, validator, TieringConfig(threshold=0.5), coalesce=True)

    async def go():
        stream = await pipeline.open_stream(req())  # the leader: decided, streaming
        follower = asyncio.create_task(pipeline.complete(req()))
        streamed = "".join([c.text async for c in stream.chunks])
        return stream.trace, streamed, await follower

    leader, streamed, follower = run(go())
    assert len(scout.requests) == 1 and len(validator.requests) == 1  # one computation
    assert streamed == follower.generation.text == "Paris is the capital."
    assert (leader.tier, leader.reason) == ("validator", "escalated")
    assert (follower.trace.tier, follower.trace.reason) == ("validator", "coalesced")
    assert [(s.stage, s.decision) for s in follower.trace.stages] == [("coalesced", "joined")]
    assert follower.trace.stages[0].detail == {"tier": "validator", "leader_reason": "escalated"}


def test_a_leaders_disconnect_does_not_cancel_its_followers():
    validator = FakeEngine("large", ["Paris", " is", " the", " capital."], delay_s=0.03)
    pipeline = build_pipeline(FakeEngine("small", ["x"]), validator, TieringConfig(), coalesce=True)

    async def go():
        leader = await pipeline.open_stream(req(), model="validator")
        followers = [asyncio.create_task(pipeline.complete(req(), model="validator")) for _ in range(2)]
        streamed_follower = await pipeline.open_stream(req(), model="validator")
        await leader.chunks.aclose()  # the leader's client goes away after the first chunk
        text = "".join([c.text async for c in streamed_follower.chunks])
        return text, await asyncio.gather(*followers)

    text, outs = run(go())
    assert len(validator.requests) == 1
    assert text == "Paris is the capital." and [o.generation.text for o in outs] == [text, text]


def test_streamed_and_non_streamed_answers_and_traces_agree():
    def make():
        return build_pipeline(FakeEngine("small", ["Par", "is", ".", ""], UNSURE),
                              FakeEngine("large", ["Paris", " is", " the", " capital."]), TieringConfig(threshold=0.5))

    async def streamed():
        s = await make().open_stream(req())
        chunks = [c async for c in s.chunks]
        return assemble(chunks, s.model), s.trace

    whole = run(make().complete(req()))
    gen, trace = run(streamed())
    assert gen.text == whole.generation.text and gen.usage == whole.generation.usage
    assert gen.finish_reason == whole.generation.finish_reason
    assert [(s.stage, s.decision) for s in trace.stages] == [(s.stage, s.decision) for s in whole.trace.stages]
    tokens = {t: (c["prompt_tokens"], c["completion_tokens"]) for t, c in whole.trace.cost.items()}
    assert tokens == {t: (c["prompt_tokens"], c["completion_tokens"]) for t, c in trace.cost.items()}
    assert set(whole.trace.cost) == {"scout", "validator"}  # the escalated Scout answer is costed too


def test_a_prompt_too_long_for_the_scout_goes_to_the_validator():
    class Small(FakeEngine):
        async def generate(self, request):
            self.requests.append(request)
            raise ContextLengthExceededError("prompt is longer than the maximum context length (2048)")

    pipeline = build_pipeline(Small("small", ["x"]), FakeEngine("large", ["Paris", "."]), TieringConfig())
    out = run(pipeline.complete(req()))
    assert (out.trace.tier, out.trace.reason) == ("validator", "scout_failed")
    assert out.trace.stages[0].detail["reason"] == "context_length" and out.generation.text == "Paris."
    with pytest.raises(ContextLengthExceededError):  # a forced Scout answers or fails, as asked
        run(pipeline.complete(req(), model="scout"))


def test_overload_is_a_clean_429_before_any_engine_work_streamed_or_not():
    from serving.errors import OverloadedError
    from serving.priority import PriorityGate

    validator = FakeEngine("large", ["Paris", "."], delay_s=0.2)
    gate = PriorityGate(1, max_waiting=0)
    pipeline = build_pipeline(FakeEngine("small", ["x"]), validator, TieringConfig(), gate=gate)

    async def go():
        busy = asyncio.create_task(pipeline.complete(req("first"), model="validator"))
        await asyncio.sleep(0.01)
        errors = []
        for stream in (False, True):
            try:
                if stream:
                    await pipeline.open_stream(req("second"), model="validator")
                else:
                    await pipeline.complete(req("second"), model="validator")
            except OverloadedError as exc:
                errors.append(exc)
        return errors, await busy

    errors, first = run(go())
    assert len(errors) == 2 and all(e.status_code == 429 and e.route is not None for e in errors)
    assert first.generation.text == "Paris." and len(validator.requests) == 1
