"""The analyzer's plan on the request path: validator_direct, priority, coalescing and our priority queue (fakes)."""

from __future__ import annotations

import asyncio
import math

from serving.analyzer import Analyzer, RoutePlan, profile_request
from serving.analyzer.plan import Strategy
from serving.config import AnalyzerConfig, PriorityConfig, TieringConfig
from serving.engines.base import GenerationRequest
from serving.pipeline import build_pipeline
from serving.priority import Priority, PriorityGate, resolve_priority
from tests.unit.fakes import FakeEngine

SURE = [math.log(0.99)] * 4
UNSURE = [math.log(0.99)] * 3 + [math.log(0.05)]


class FakeAnalyzer(Analyzer):
    """Plans by a fixed complexity per question (the real analyzer's model is tested in test_analyzer.py)."""

    def __init__(self, hard: set[str] = frozenset(), fail: bool = False, delay_s: float = 0.0) -> None:
        self.config = AnalyzerConfig(enabled=True, direct_threshold=0.5)
        self.priority = PriorityConfig()
        self.hard, self.fail, self.delay_s = hard, fail, delay_s
        self.calls: list[tuple[str, str | None]] = []

    async def analyze(self, request, *, model="auto", priority=None) -> RoutePlan:
        self.calls.append((model, priority))
        await asyncio.sleep(self.delay_s)
        if self.fail:
            raise ConnectionError("embedder is down")
        cfg = self.config
        question = request.messages[-1]["content"]
        complexity = 0.9 if question in self.hard else 0.1
        strategy: Strategy = "forced" if model != "auto" else (
            "validator_direct" if complexity >= cfg.direct_threshold else "scout_first")
        name = priority or self.priority.default_priority
        profile = profile_request(request, None, cfg.expected_output_tokens)
        return RoutePlan(profile=profile, complexity=complexity, threshold=cfg.direct_threshold, strategy=strategy,
                         priority=name, vllm_priority=self.priority.classes[name], max_tokens=request.max_tokens,
                         model_version="test")


def run(coro):
    return asyncio.run(coro)


def req(question: str = "What is the capital of France?", **kw) -> GenerationRequest:
    kw.setdefault("temperature", 0)
    return GenerationRequest(messages=[{"role": "user", "content": question}], **kw)


def make(analyzer=None, scout_lp=SURE, delay_s: float = 0.0, coalesce: bool = False, gate: PriorityGate | None = None):
    scout = FakeEngine("small", ["Par", "is", ".", ""], scout_lp, delay_s=delay_s)
    validator = FakeEngine("large", ["Paris", " is", " the", " capital."], delay_s=delay_s)
    router = build_pipeline(scout, validator, TieringConfig(threshold=0.5), analyzer=analyzer,
                          coalesce=coalesce, gate=gate)
    return router, scout, validator


def stages(trace) -> list[tuple[str, str]]:
    return [(s.stage, s.decision) for s in trace.stages]


def test_the_plan_is_recorded_and_an_easy_request_asks_the_scout_first():
    router, _scout, _ = make(FakeAnalyzer())
    out = run(router.complete(req()))
    assert stages(out.trace)[:2] == [("analyzer", "scout_first"), ("scout", "confident")]
    detail = out.trace.stages[0].detail
    assert detail["complexity"] == 0.1 and detail["priority"] == "interactive" and "predicted_max_tokens" in detail


def test_a_predicted_hard_request_skips_the_scout():
    hard = "Prove that there are infinitely many primes."
    router, scout, validator = make(FakeAnalyzer(hard={hard}))
    out = run(router.complete(req(hard)))
    assert stages(out.trace) == [("analyzer", "validator_direct"), ("scout", "skipped"), ("validator", "answered")]
    assert out.trace.stages[1].detail == {"reason": "predicted_hard", "complexity": 0.9}
    assert out.trace.tier == "validator" and out.trace.reason == "validator_direct"
    assert scout.requests == [] and len(validator.requests) == 1


def test_a_forced_tier_is_planned_but_not_redirected():
    hard = "Prove that there are infinitely many primes."
    router, _scout, _ = make(FakeAnalyzer(hard={hard}))
    out = run(router.complete(req(hard), model="scout"))
    assert stages(out.trace)[:2] == [("analyzer", "forced"), ("scout", "forced")]


def test_a_failing_or_slow_analyzer_leaves_the_default_path():
    for analyzer in (FakeAnalyzer(fail=True), FakeAnalyzer(delay_s=5)):
        router, _, _ = make(analyzer)
        router.analyzer_timeout_s = 0.05
        out = run(router.complete(req()))
        assert stages(out.trace)[:2] == [("analyzer", "failed"), ("scout", "confident")]
        assert out.trace.stages[0].detail["error"]


def test_the_priority_class_reaches_the_engines():
    analyzer = FakeAnalyzer()
    router, scout, validator = make(analyzer, scout_lp=UNSURE)
    batch = resolve_priority(analyzer.priority, header="batch")
    run(router.complete(req(), priority=batch))
    assert analyzer.calls == [("auto", "batch")]
    assert scout.requests[-1].priority == 10 and validator.requests[-1].priority == 10
    # Without an analyzer the resolved class still travels.
    router, scout, _ = make()
    run(router.complete(req(), priority=Priority("batch", 10, "header")))
    assert scout.requests[-1].priority == 10


def test_identical_requests_in_flight_share_one_generation():
    router, scout, validator = make(scout_lp=UNSURE, delay_s=0.05, coalesce=True)

    async def go():
        return await asyncio.gather(*(router.complete(req()) for _ in range(5)))

    outs = run(go())
    assert len(scout.requests) == 1 and len(validator.requests) == 1  # one generation for five requests
    assert {o.generation.text for o in outs} == {"Paris is the capital."}
    reasons = sorted(o.trace.reason for o in outs)
    assert reasons == ["coalesced"] * 4 + ["escalated"]
    follower = next(o for o in outs if o.trace.reason == "coalesced")
    assert follower.trace.tier == "validator" and stages(follower.trace)[-1] == ("coalesced", "joined")


def test_different_or_sampled_requests_are_not_coalesced():
    router, scout, _ = make(delay_s=0.05, coalesce=True)

    async def go():
        await asyncio.gather(router.complete(req("a?")), router.complete(req("b?")),
                             router.complete(req("a?", temperature=0.7)), router.complete(req("a?", temperature=0.7)))

    run(go())
    assert len(scout.requests) == 4


def test_a_stream_joins_a_computation_in_flight():
    router, scout, _ = make(delay_s=0.05, coalesce=True)

    async def go():
        leader = asyncio.ensure_future(router.complete(req()))
        await asyncio.sleep(0.01)
        stream = await router.open_stream(req())
        text = "".join([c.text async for c in stream.chunks])
        return await leader, stream, text

    leader, stream, text = run(go())
    assert len(scout.requests) == 1 and text == leader.generation.text
    assert stream.trace.reason == "coalesced" and stages(stream.trace)[-1] == ("coalesced", "joined")


def test_interactive_requests_go_ahead_of_batch_ones_in_our_queue():
    router, _scout, _ = make(delay_s=0.05, gate=PriorityGate(1))
    order: list[str] = []

    async def one(question: str, priority: Priority, after: float):
        await asyncio.sleep(after)
        await router.complete(req(question), priority=priority)
        order.append(question)

    batch, interactive = Priority("batch", 10, "header"), Priority("interactive", 0, "default")

    async def go():
        # The first batch request holds the only slot; two more batch requests, then an interactive one, queue.
        await asyncio.gather(one("b1", batch, 0), one("b2", batch, 0.01), one("b3", batch, 0.02),
                             one("i1", interactive, 0.03))

    run(go())
    assert order == ["b1", "i1", "b2", "b3"]


def test_a_streamed_validator_answer_holds_its_place_in_our_queue_until_it_ends():
    """A stream counts against `api.max_in_flight` while the engine generates it (one slot, as a
    non-streamed request), and a client that leaves frees it."""
    gate = PriorityGate(1)
    router, _scout, validator = make(delay_s=0.05, gate=gate)

    async def go():
        routed = await router.open_stream(req("stream me"), model="validator")
        first = await anext(routed.chunks)  # reading started: the stream holds the only slot
        held = gate.active
        waiting = asyncio.create_task(router.complete(req("wait for it"), model="validator"))
        await asyncio.sleep(0.05)  # the stream's engine is still generating (4 tokens, 50 ms each)
        queued = (gate.waiting, len(validator.requests))
        rest = [c.text async for c in routed.chunks]
        done = await waiting
        # A client that leaves mid-stream gives its slot back at once.
        left = await router.open_stream(req("leave early"), model="validator")
        await anext(left.chunks)
        await left.chunks.aclose()
        return first.text + "".join(rest), held, queued, done, gate.active

    text, held, queued, done, after = run(go())
    assert text == "Paris is the capital." and held == 1
    assert queued == (1, 1)  # the second request waited, the Validator saw only the stream
    assert done.generation.text == "Paris is the capital." and after == 0
