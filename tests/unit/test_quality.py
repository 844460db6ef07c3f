"""The quality guarantee: risk control, calibration, the closed-loop audit and the cost ledger (fakes only)."""

from __future__ import annotations

import asyncio
import math
import random

import numpy as np
import pytest

from serving.config import AuditConfig, TieringConfig
from serving.engines.base import GenerationChunk, GenerationRequest, TokenLogprob, Usage
from serving.metrics import Metrics
from serving.pipeline import Route, Tier, build_pipeline
from serving.policy.escalation import EscalationPolicy
from serving.quality.audit import Auditor
from serving.quality.calibration import (
    FEATURES,
    Calibration,
    CalibrationMismatchError,
    EarlyStop,
    Logistic,
    ShortcutCalibration,
    fit_logistic,
    scout_features,
)
from serving.quality.judge import (
    EmbeddingJudge,
    FinalNumberJudge,
    IdenticalJudge,
    JudgePanel,
    ValidatorJudge,
    default_panel,
)
from serving.quality.ledger import CostLedger
from serving.quality.risk import clopper_pearson_upper, learn_then_test, min_certifiable
from tests.unit.fakes import FakeEmbedder, FakeEngine


def lps(tokens: list[str], p: float = 0.99) -> list[float]:
    """Token logprobs of a Scout that is this sure of every token."""
    return [math.log(p)] * len(tokens)


def run(coro):
    return asyncio.run(coro)


def req(question: str = "What is the capital of France?") -> GenerationRequest:
    return GenerationRequest(messages=[{"role": "user", "content": question}], temperature=0)


# -- risk control -------------------------------------------------------------------------------


def test_clopper_pearson_and_the_data_a_guarantee_needs():
    assert clopper_pearson_upper(0, 0, 0.05) == 1.0
    assert clopper_pearson_upper(0, 299, 0.05) < 0.01 < clopper_pearson_upper(0, 298, 0.05)
    assert min_certifiable(0.01, 0.05) == 299


def test_learn_then_test_keeps_the_risk_of_what_it_serves_under_epsilon():
    rng = np.random.default_rng(0)
    scores = rng.random(3000)
    agrees = rng.random(3000) < scores ** 0.2  # the higher the score, the likelier the agreement
    choice = learn_then_test(scores, agrees, epsilon=0.05, delta=0.05)
    assert choice.threshold is not None and 0 < choice.coverage < 1
    # On fresh data from the same distribution, the served answers' disagreement stays under epsilon.
    fresh = rng.random(20000)
    fresh_agrees = rng.random(20000) < fresh ** 0.2
    served = fresh >= choice.threshold
    assert (~fresh_agrees[served]).mean() <= 0.05


def test_too_little_data_certifies_nothing():
    choice = learn_then_test([0.99] * 100, [True] * 100, epsilon=0.01, delta=0.05)
    assert choice.threshold is None and choice.coverage == 0.0


# -- calibration --------------------------------------------------------------------------------


def _calibration(bound: float | None, scout="small", validator="large", served=400, disagreements=0) -> Calibration:
    # P(agree) rises with the q10 token probability only.
    model = Logistic(features=list(FEATURES), mean=[0.0] * 7, scale=[1.0] * 7,
                     coef=[20.0, 0, 0, 0, 0, 0, 0], intercept=-10.0)
    return Calibration(
        version="test-1", created="2026-12-02", profile="test", scout_model=scout, validator_model=validator,
        data={"n": served}, judge="identical", epsilon=0.01, delta=0.05,
        scout=ShortcutCalibration(model=model, bound=bound, coverage=0.5, served=served,
                                  disagreements=disagreements, upper=0.009))


def test_scout_features_read_the_answers_own_signals():
    tokens = [TokenLogprob("a", math.log(0.9), [("a", math.log(0.9)), ("b", math.log(0.1))]),
              TokenLogprob("b", math.log(0.5))]
    f = dict(zip(FEATURES, scout_features(tokens, "length", None, 0.3), strict=True))
    assert f["min_p"] == pytest.approx(0.5) and f["q10"] == pytest.approx(0.5)
    assert f["log_tokens"] == pytest.approx(math.log(3)) and f["truncated"] == 1.0 and f["complexity"] == 0.3
    assert f["top_entropy"] > 0


def test_a_calibration_for_other_models_is_refused(tmp_path):
    cal = _calibration(0.9)
    cal.save(tmp_path / "c.json")
    loaded = Calibration.load(tmp_path / "c.json")
    loaded.check("small", "large")
    with pytest.raises(CalibrationMismatchError, match="make calibrate"):
        loaded.check("small", "other-large")


def test_fit_logistic_learns_the_direction():
    rng = np.random.default_rng(1)
    x = rng.random((400, 2))
    y = rng.random(400) < x[:, 0]
    model = fit_logistic(x, y, ["good", "noise"])
    assert model.predict([0.95, 0.5]) > model.predict([0.05, 0.5])


def test_the_calibrated_decision_uses_the_probability_and_the_trace_shows_it():
    cal = _calibration(0.9)
    policy = EscalationPolicy(TieringConfig(threshold=0.0), calibration=cal)
    sure = build_pipeline(FakeEngine("small", ["Par", "is"], lps(["Par", "is"])), FakeEngine("large", ["Paris"]),
                          escalation=policy)
    out = run(sure.complete(req()))
    assert out.trace.tier == "scout" and out.trace.calibration == "test-1"
    assert out.trace.agreement == pytest.approx(1 / (1 + math.exp(-(20 * 0.99 - 10))), abs=1e-5)
    assert out.trace.threshold == 0.9
    unsure = build_pipeline(FakeEngine("small", ["Par", "is"], [math.log(0.4)] * 2), FakeEngine("large", ["Paris"]),
                            escalation=EscalationPolicy(TieringConfig(threshold=0.0), calibration=cal))
    assert run(unsure.complete(req())).trace.tier == "validator"  # raw threshold 0 would have kept it
    never = EscalationPolicy(TieringConfig(), calibration=_calibration(None))
    assert math.isinf(never.threshold(None))  # no safe bound: no Scout answer is kept
    plain = run(build_pipeline(FakeEngine("small", ["a"], lps(["a"])), FakeEngine("large", ["b"])).complete(req()))
    assert plain.trace.calibration == "uncalibrated" and plain.trace.agreement is None


def test_an_uncertified_calibration_skips_the_scout_unless_its_draft_would_be_verified():
    scout = FakeEngine("small", ["Par", "is"], lps(["Par", "is"]))
    pipeline = build_pipeline(scout, FakeEngine("large", ["Paris"]),
                              escalation=EscalationPolicy(TieringConfig(), calibration=_calibration(None)))
    out = run(pipeline.complete(req()))
    # No Scout answer could be kept: asking it would only delay the Validator.
    assert out.trace.tier == "validator" and scout.requests == []
    scout_stage = next(s for s in out.trace.stages if s.stage == "scout")
    assert (scout_stage.decision, scout_stage.detail.get("reason")) == ("skipped", "uncertified")
    # With verified escalation its answer is still the Validator's draft: it runs (the acceptance tracker decides).
    drafting = EscalationPolicy(TieringConfig(verified_escalation=True), can_verify_drafts=True,
                                calibration=_calibration(None))
    assert drafting.skip_scout(Route.AUTO, None, None, req()) is None
    # A certified bound, or no calibration: it runs.
    assert EscalationPolicy(TieringConfig(), calibration=_calibration(0.9)).skip_scout(Route.AUTO, None, None,
                                                                                       req()) is None


# -- the judge ----------------------------------------------------------------------------------


def test_judges_decide_what_they_can_and_the_panel_asks_in_order():
    assert run(IdenticalJudge().judge("q", "Paris.", " Paris. ")).agree
    assert run(IdenticalJudge().judge("q", "Paris.", "Rome.")) is None
    assert run(FinalNumberJudge().judge("q", "so 1,200 in all", "the answer is 1200", "math")).agree
    assert not run(FinalNumberJudge().judge("q", "it is 12", "it is 13", "gsm8k")).agree
    assert run(FinalNumberJudge().judge("q", "it is 12", "it is 13", "chat")) is None
    panel = default_panel(FakeEmbedder())
    verdict = run(panel.judge("q", "the capital is Paris", "Paris is the capital", "chat"))
    assert verdict.agree and verdict.method.startswith("embedding")
    assert not run(panel.judge("q", "the capital is Paris", "bananas grow on trees", "chat")).agree
    assert run(JudgePanel([]).judge("q", "a", "b")).method == "undecided"


def test_the_validator_judge_reads_yes_or_no_from_its_logprobs():
    class Says(FakeEngine):
        def __init__(self, p_yes: float) -> None:
            super().__init__("large", ["Yes"] if p_yes >= 0.5 else ["No"])
            self.p_yes = p_yes

        async def generate(self, request):
            gen = await super().generate(request)
            gen.tokens = [TokenLogprob(gen.text, math.log(max(self.p_yes, 1 - self.p_yes)),
                                       [("Yes", math.log(self.p_yes)), ("No", math.log(1 - self.p_yes))])]
            return gen

    engine = Says(0.8)
    verdict = run(ValidatorJudge(engine).judge("q", "a", "b"))
    assert verdict.agree and verdict.score == pytest.approx(0.8)
    assert engine.requests[0].max_tokens == 1 and engine.requests[0].logprobs
    assert not run(ValidatorJudge(Says(0.3)).judge("q", "a", "b")).agree


def test_the_validator_judge_reads_yes_the_way_the_cache_cross_checker_does():
    # One rule for both (serving.engines.base.yes_probability): spellings summed, neither word -> undecided.
    class Top(FakeEngine):
        def __init__(self, top: list[tuple[str, float]]) -> None:
            super().__init__("large", [top[0][0]])
            self.top = top

        async def generate(self, request):
            gen = await super().generate(request)
            gen.tokens = [TokenLogprob(self.top[0][0], self.top[0][1], list(self.top))]
            return gen

    split = [("No", math.log(0.4)), ("Yes", math.log(0.3)), (" yes", math.log(0.3))]
    verdict = run(ValidatorJudge(Top(split)).judge("q", "a", "b"))
    assert verdict.agree and verdict.score == pytest.approx(0.6)  # the max of the spellings said "no" (0.43)
    assert run(ValidatorJudge(Top([("Maybe", -0.1), ("Perhaps", -2.0)])).judge("q", "a", "b")) is None
    assert run(EmbeddingJudge(FakeEmbedder(), 0.99).judge("q", "one two", "one two three")).agree is False


# -- the audit ----------------------------------------------------------------------------------


def _audited(scout_tokens, cal: Calibration | None, share=1.0, tmp_path=None, cooldown=3):
    scout = FakeEngine("small", scout_tokens, lps(scout_tokens))
    validator = FakeEngine("large", ["Paris", "."])
    policy = EscalationPolicy(TieringConfig(threshold=0.5), calibration=cal)
    auditor = Auditor(AuditConfig(enabled=True, share=share, cooldown=cooldown, max_validator_share=1.0,
                                  max_in_flight=1000),
                      validator, JudgePanel([IdenticalJudge()]), policy, epsilon=0.01, delta=0.05,
                      state_path=(tmp_path / "audit.json") if tmp_path else None)
    pipeline = build_pipeline(scout, validator, TieringConfig(threshold=0.5), escalation=policy,
                              observers=[auditor])
    return pipeline, auditor, policy, scout, validator


def test_a_confidently_wrong_scout_is_closed_within_a_few_audits():
    """The Scout is sure (p 0.99 per token) and always wrong: the audit's bound crosses ε and the Scout's
    answers stop being kept within 10 audits, from a calibration that had certified it."""
    pipeline, auditor, policy, _scout, _ = _audited(["Rome", "."], _calibration(0.5))

    async def go():
        tiers = []
        for i in range(12):
            tiers.append((await pipeline.complete(req(f"question {i}"))).trace.tier)
            await auditor.drain()
        return tiers

    tiers = run(go())
    est = auditor.estimate("scout", "default")
    assert policy.closed and est.k >= 1
    closed_at = tiers.index("validator")
    assert closed_at <= 10 and set(tiers[closed_at:]) == {"validator"}


def test_a_calibrated_scout_that_agrees_keeps_its_coverage():
    pipeline, auditor, policy, _, validator = _audited(["Paris", "."], _calibration(0.5))

    async def go():
        outs = []
        for i in range(20):
            outs.append(await pipeline.complete(req(f"question {i}")))
            await auditor.drain()
        return outs

    outs = run(go())
    assert all(o.trace.tier == "scout" for o in outs)
    assert not policy.closed and policy.tightening == 0.0
    assert auditor.estimate("scout", "default").n == 400 + 20  # calibration's evidence plus every audit
    assert len(validator.requests) == 20  # the audits' calls, none on a request's path


def test_an_audit_never_delays_or_alters_the_response():
    pipeline, auditor, _, _, validator = _audited(["Rome", "."], _calibration(0.5))
    validator.delay_s = 0.5  # a slow Validator: the audit runs after the response

    async def go():
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        out = await pipeline.complete(req())
        took = loop.time() - t0
        pending = len(auditor.tasks)
        await auditor.drain()
        return out, took, pending

    out, took, pending = run(go())
    assert out.generation.text == "Rome." and out.trace.tier == "scout"
    assert took < 0.4 and pending == 1


def test_a_strategys_answers_are_audited_on_their_own_path_without_feedback():
    from serving.api import StrategySpec

    pipeline, auditor, policy, _, _ = _audited(["Rome", "."], None)

    async def go():
        for i in range(3):
            out = await pipeline.complete(req(f"question {i}"), strategy=StrategySpec(name="majority_vote", n=2))
            assert (out.trace.tier, out.trace.reason) == ("scout", "strategy")
            await auditor.drain()

    run(go())
    est = auditor.estimate("strategy", "default")
    assert (est.n, est.k) == (3, 3)  # "Rome." against the Validator's "Paris."
    assert not policy.closed and policy.tightening == 0.0  # the Scout's own bound is not the strategy's
    assert {"path": "strategy", "namespace": "default", "audits": 3, "disagreements": 3, "rate": 1.0,
            "upper": round(est.upper(0.05), 5)} in auditor.report()["estimates"]


def test_audit_state_survives_a_restart(tmp_path):
    pipeline, auditor, policy, _, _ = _audited(["Rome", "."], _calibration(0.5), tmp_path=tmp_path)

    async def go():
        for i in range(12):
            await pipeline.complete(req(f"q{i}"))
            await auditor.drain()

    run(go())
    assert policy.closed
    _, again, policy2, _, _ = _audited(["Rome", "."], _calibration(0.5), tmp_path=tmp_path)
    assert policy2.closed and again.estimate("scout", "default").k == auditor.estimate("scout", "default").k
    # ...and its Prometheus gauges show the kept estimate at once (a Metrics that records what it is told).
    exported = []

    class Recorder(Metrics):
        def audit(self, path, namespace, audits, disagreements, upper):
            exported.append((path, namespace, audits, disagreements))

    est = auditor.estimate("scout", "default")
    Auditor(AuditConfig(enabled=True), FakeEngine("large", ["x"]), JudgePanel([IdenticalJudge()]),
            EscalationPolicy(TieringConfig(threshold=0.5), calibration=_calibration(0.5)), epsilon=0.01, delta=0.05,
            metrics=Recorder(), state_path=tmp_path / "audit.json")
    assert exported == [("scout", "default", est.n, est.k)]
    # Another calibration's estimates are not carried over.
    other = _calibration(0.5)
    other.version = "test-2"
    _, fresh, policy3, _, _ = _audited(["Rome", "."], other, tmp_path=tmp_path)
    assert not policy3.closed and fresh.estimate("scout", "default").k == 0


def test_the_audit_samples_its_share():
    pipeline, auditor, _, _, validator = _audited(["Paris", "."], _calibration(0.5), share=0.25)
    auditor.draw = random.Random(0).random

    async def go():
        for i in range(200):
            await pipeline.complete(req(f"q{i}"))
            await auditor.drain()

    run(go())
    assert 30 <= len(validator.requests) <= 70  # about 50 of 200


# -- the cost ledger ----------------------------------------------------------------------------


def test_the_ledger_adds_up_on_scripted_requests():
    ledger = CostLedger(prior_s_per_token=0.01)
    sure = FakeEngine("small", ["Par", "is"], lps(["Par", "is"]))
    unsure = FakeEngine("small", ["Ro", "me"], [math.log(0.01)] * 2)
    validator = FakeEngine("large", ["Paris", " is", " it"])
    keep = build_pipeline(sure, validator, TieringConfig(threshold=0.5), observers=[ledger])
    escalate = build_pipeline(unsure, validator, TieringConfig(threshold=0.5), observers=[ledger])

    async def go():
        a = await keep.complete(req())
        b = await escalate.complete(req())
        return a, b

    _, b = run(go())
    totals = ledger.totals()["namespaces"]["default"]
    assert totals["scout"]["requests"] == 1 and totals["validator"]["requests"] == 1
    assert totals["validator"]["tokens"]["scout_completion"] == 2  # the escalated Scout answer is costed
    assert totals["validator"]["tokens"]["validator_completion"] == 3
    assert totals["scout"]["tokens"] == {"scout_prompt": 5, "scout_completion": 2}
    # The Validator answered b: its counterfactual is what it spent; a's is 2 tokens at the measured rate.
    v = b.trace.cost[Tier.VALIDATOR]["engine_s"]
    assert totals["validator"]["validator_only_s"] == pytest.approx(v, abs=1e-3)
    assert totals["scout"]["validator_only_s"] == pytest.approx(2 * 0.01, abs=1e-3)
    whole = ledger.totals()
    assert whole["validator_only_s"] == pytest.approx(totals["scout"]["validator_only_s"]
                                                      + totals["validator"]["validator_only_s"], abs=1e-3)


class StreamsLogprobs(FakeEngine):
    """Streams its tokens with their logprobs; counts how many it produced before being stopped."""

    def __init__(self, *a, **kw) -> None:
        super().__init__(*a, **kw)
        self.produced = 0

    async def stream(self, request):
        self.requests.append(request)
        for tok, lp in zip(self.tokens, self.logprobs, strict=True):
            await asyncio.sleep(0)
            self.produced += 1
            yield GenerationChunk(text=tok, tokens=[TokenLogprob(tok, lp)] if request.logprobs else None)
        yield GenerationChunk(finish_reason="stop", usage=Usage(5, len(self.tokens)))


def test_early_stop_escalates_a_hopeless_scout_answer_mid_generation():
    """A running answer whose q10 token probability can no longer reach the calibrated floor is stopped and
    escalated at once: the Scout generates a few tokens, not its whole answer."""
    cal = _calibration(0.5)
    cal.early_stop = EarlyStop(min_passing_q10=0.5, scout_tokens_saved=0.3, coverage_lost=0.0)
    tokens = [f"t{i}" for i in range(40)]
    scout = StreamsLogprobs("small", tokens, [math.log(0.2)] * 40)
    validator = FakeEngine("large", ["Paris", "."])
    pipeline = build_pipeline(scout, validator, TieringConfig(), escalation=EscalationPolicy(TieringConfig(),
                                                                                            calibration=cal))
    out = run(pipeline.complete(GenerationRequest(messages=[{"role": "user", "content": "q"}], temperature=0,
                                                  max_tokens=21)))
    scout_stage = out.trace.stages[0]
    # max_tokens 21: k_max = floor(0.1 * 20) = 2, so the third low token settles it.
    assert scout_stage.decision == "escalate" and scout_stage.detail["early_stop_at"] == 3
    assert scout.produced <= 4 and out.trace.tier == "validator" and out.generation.text == "Paris."
    assert out.trace.cost["scout"]["completion_tokens"] == 3
    # A forced Scout is never stopped early.
    forced = run(pipeline.complete(GenerationRequest(messages=[{"role": "user", "content": "q"}], temperature=0,
                                                     max_tokens=21), model="scout"))
    assert forced.trace.tier == "scout" and "early_stop_at" not in forced.trace.stages[0].detail


def test_a_semantic_hit_that_fails_its_audit_bounds_its_entry(tmp_path):
    """A wrong answer is cached; a paraphrase is served it; the audit (the Validator now says otherwise) raises the
    served entry's own bound to the similarity it was served at, so it serves only nearer questions from then on
    (tests/unit/test_cache_verifier.py checks the refusal itself)."""
    from serving.cache.edge import EdgeStore
    from serving.cache.semantic import SemanticCache
    from serving.config import CacheConfig
    from tests.unit.fakes import FakeClock

    config = CacheConfig(enabled=True, similarity_threshold=0.8)
    cache = SemanticCache(EdgeStore(tmp_path / "s", FakeEmbedder.dimension), FakeEmbedder(), config,
                          clock=FakeClock())
    scout = FakeEngine("small", ["Rome", "."], lps(["Rome", "."], 0.2))  # unsure: always escalates
    validator = FakeEngine("large", ["Rome", "."])  # wrong at first
    policy = EscalationPolicy(TieringConfig(threshold=0.5))
    auditor = Auditor(AuditConfig(enabled=True, share=1.0, cooldown=1000, max_validator_share=1.0,
                                  max_in_flight=1000), validator, JudgePanel([IdenticalJudge()]), policy,
                      epsilon=0.01, delta=0.05, cache=cache)
    pipeline = build_pipeline(scout, validator, TieringConfig(threshold=0.5), cache=cache, cache_config=config,
                              escalation=policy, observers=[auditor])

    async def go():
        await pipeline.complete(req())  # the Validator's "Rome." is admitted
        validator.tokens = ["Paris", "."]
        hit = await pipeline.complete(req("What is the capital of France these days, roughly?"))
        await auditor.drain()
        # As far from the entry as the paraphrase was (three other new words): not served from it any more.
        after = await pipeline.complete(req("What is the capital of France those weeks, approximately?"))
        return hit, after

    hit, after = run(go())
    cache_stage = hit.trace.stages[0]
    assert (hit.trace.tier, hit.trace.reason, hit.generation.text) == ("cache", "semantic", "Rome.")
    (entry,) = cache.store.get([cache_stage.detail["entry"]["entry_id"]])
    assert entry.min_similarity == pytest.approx(cache_stage.detail["similarity"] + 1e-4) and entry.min_score is None
    assert after.trace.stages[0].decision == "miss", after.trace.stages[0]
    assert {"reason": "audited", "similarity": cache_stage.detail["similarity"]} in \
        after.trace.stages[0].detail["guard_rejected"]
    assert (after.trace.tier, after.generation.text) == ("validator", "Paris.")
    assert auditor.estimate("semantic", "default").k == 1
    run(cache.close())
