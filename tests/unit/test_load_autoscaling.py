"""The Validator's cascade-aware autoscaling policy on synthetic metric histories."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import pytest

from serving.config import CascadeAutoscalingConfig, LoadConfig
from serving.load.autoscaling import (
    ARRIVALS,
    ESCALATION,
    HIT_RATE,
    SERVICE_S,
    CascadeApplicationPolicy,
    CascadeAutoscalingPolicy,
    CascadeSignals,
    CascadeStats,
    cascade_replicas,
    request_based_replicas,
)
from tests.unit.fakes import FakeClock

CFG = CascadeAutoscalingConfig(enabled=True, target_ongoing_requests=8, scale_down_hysteresis=0.2,
                               downscale_delay_s=60, headroom_sigmas=0.0)


def signals(rate: float, hit: float = 0.2, esc: float = 0.5, service: float = 4.0) -> CascadeSignals:
    return CascadeSignals(rate, hit, esc, service)


def test_replicas_follow_littles_law():
    # 10 req/s x 0.8 misses x 0.5 escalated x 4 s = 16 in flight -> 2 replicas at 8 each.
    assert signals(10).validator_concurrency() == pytest.approx(16)
    assert cascade_replicas(signals(10), CFG, current=1, min_replicas=1, max_replicas=10, now=0)[0] == 2
    assert cascade_replicas(signals(10.5), CFG, 1, 1, 10, 0)[0] == 3
    # Bounds.
    assert cascade_replicas(signals(1000), CFG, 1, 1, 4, 0)[0] == 4
    assert cascade_replicas(signals(0), CFG, 0, 0, 10, 0)[0] == 0


def test_headroom_covers_the_poisson_spread_of_the_load():
    # 16 in flight on average; with one standard deviation (4) of headroom: 20 -> 3 replicas of 8.
    z1 = CFG.model_copy(update={"headroom_sigmas": 1.0})
    assert cascade_replicas(signals(10), z1, 1, 1, 10, 0)[0] == 3
    assert cascade_replicas(signals(10), CFG, 1, 1, 10, 0)[0] == 2


def test_a_better_cache_or_a_more_confident_scout_needs_fewer_validators():
    base = cascade_replicas(signals(20, hit=0.0, esc=0.5), CFG, 1, 1, 20, 0)[0]
    cached = cascade_replicas(signals(20, hit=0.5, esc=0.5), CFG, 1, 1, 20, 0)[0]
    confident = cascade_replicas(signals(20, hit=0.0, esc=0.1), CFG, 1, 1, 20, 0)[0]
    assert (base, cached, confident) == (5, 3, 1)


def test_scale_down_waits_for_a_lasting_and_clear_drop():
    history = [(t, 10.0) for t in range(0, 60, 10)] + [(t, 4.0) for t in range(60, 200, 10)]
    current, state, decisions = 2, {}, []
    for now, rate in history:
        current, state = cascade_replicas(signals(rate), CFG, current, 1, 10, now, state)
        decisions.append((now, current))
    # 4 req/s = 6.4 in flight: one replica at 80% of its target, exactly at the hysteresis bound:
    # it scales down, but only after the 60 s delay (first low at t=60).
    assert dict(decisions)[110] == 2 and dict(decisions)[120] == 1


def test_no_flapping_around_a_boundary():
    # Load wobbles between 7.5 and 8.5 in flight (just above / below one replica's target).
    current, state, seen = 2, {}, set()
    for i in range(100):
        rate = 8.5 / 1.6 if i % 2 else 7.5 / 1.6
        current, state = cascade_replicas(signals(rate), CFG, current, 1, 10, i * 10.0, state)
        seen.add(current)
    assert seen == {2}  # 7.5 > 0.8 x 8: one replica would not be comfortable, so it never drops


def test_scale_up_is_immediate():
    state = {"low_since": 0.0}
    n, state = cascade_replicas(signals(40), CFG, 2, 1, 20, 5.0, state)
    assert n == 8 and "low_since" not in state


def test_request_based_rule():
    assert request_based_replicas(17, 8, 1, 10) == 3
    assert request_based_replicas(0, 8, 1, 10) == 1


def test_stats_measure_shares_times_and_forecast_arrivals():
    clock = FakeClock(0.0)
    stats = CascadeStats(LoadConfig(interval_s=1.0, level_alpha=0.5), clock=clock)
    for i in range(300):  # 10 req/s for 30 s; a fifth hit the cache; half of the misses escalate
        clock.now = i * 0.1
        stats.arrival("interactive")
        stats.cache(hit=i % 5 == 0)
        if i % 5:
            stats.routed(to_validator=i % 2 == 0)
            if i % 2 == 0:
                stats.validator_time(3.0)
    clock.now = 30.0
    out = stats.autoscaling_stats()
    assert out[ARRIVALS] == pytest.approx(10, rel=0.1)
    assert out[HIT_RATE] == pytest.approx(0.2, abs=0.05)
    assert out[ESCALATION] == pytest.approx(0.5, abs=0.1)
    assert out[SERVICE_S] == pytest.approx(3.0, rel=0.01)


def test_stats_export_the_forecasts_when_ray_asks():
    from serving.metrics import Metrics

    class Recording(Metrics):
        def __init__(self):
            self.rows = []

        def load_forecast(self, priority, horizon_s, rate):
            self.rows.append((priority, horizon_s))

    clock, metrics = FakeClock(0.0), Recording()
    stats = CascadeStats(LoadConfig(interval_s=1.0), clock=clock, metrics=metrics)
    for i in range(20):
        clock.now = i * 0.5
        stats.arrival("batch" if i % 2 else "interactive")
    stats.autoscaling_stats()
    assert sorted(metrics.rows) == [("batch", 0.0), ("batch", 10.0), ("batch", 60.0),
                                    ("interactive", 0.0), ("interactive", 10.0), ("interactive", 60.0)]


class RayConfig:
    """The part of Ray's AutoscalingConfig that Ray's default policy reads."""

    def get_target_ongoing_requests(self) -> float:
        return 8.0


@dataclass
class Ctx:
    """The fields of Ray Serve's AutoscalingContext the policies read."""

    current_num_replicas: int = 1
    total_num_requests: float = 0.0
    aggregated_metrics: dict[str, dict[Any, float]] | None = None
    capacity_adjusted_min_replicas: int = 1
    capacity_adjusted_max_replicas: int = 10
    policy_state: dict[str, Any] = field(default_factory=dict)
    current_time: float | None = 100.0
    target_num_replicas: int = 1
    config: Any = field(default_factory=RayConfig)


def _metrics(rate, hit=0.2, esc=0.5, service=4.0, replicas=2):
    per = {f"r{i}": rate / replicas for i in range(replicas)}
    return {ARRIVALS: per, HIT_RATE: dict.fromkeys(per, hit), ESCALATION: dict.fromkeys(per, esc),
            SERVICE_S: dict.fromkeys(per, service)}


def test_ray_adapter_uses_custom_metrics_and_falls_back_to_requests():
    policy = CascadeAutoscalingPolicy(target_ongoing_requests=8, downscale_delay_s=60, headroom_sigmas=0)
    n, state = policy(Ctx(aggregated_metrics=_metrics(20)))  # two ingress replicas, 10 req/s each
    assert n == 4 and state["source"] == "cascade"
    n, state = policy(Ctx(total_num_requests=30, aggregated_metrics={}))
    assert n == math.ceil(30 / 8) and state["source"] == "requests"


def test_ray_adapter_with_ray_context_class():
    """The policy accepts Ray's real AutoscalingContext (its constructor as in ray 2.60)."""
    ray_config = pytest.importorskip("ray.serve.config")
    ctx = ray_config.AutoscalingContext(
        deployment_id=None, deployment_name="Validator", app_name="default", current_num_replicas=1,
        target_num_replicas=1, running_replicas=[], total_num_requests=lambda: 0.0, total_queued_requests=0.0,
        aggregated_metrics=lambda: _metrics(10), raw_metrics=None, capacity_adjusted_min_replicas=1,
        capacity_adjusted_max_replicas=5, policy_state={}, last_scale_up_time=None, last_scale_down_time=None,
        current_time=100.0, config=None)
    n, state = CascadeAutoscalingPolicy(target_ongoing_requests=8, headroom_sigmas=0)(ctx)
    assert n == 2 and state["load"] == pytest.approx(16)
    # Ray's policy hook accepts the import path and the kwargs.
    policy = ray_config.AutoscalingPolicy(policy_function="serving.load.autoscaling:CascadeAutoscalingPolicy",
                                          policy_kwargs={"target_ongoing_requests": 8})
    assert policy.get_policy() is CascadeAutoscalingPolicy


def test_application_policy_scales_the_validator_from_the_ingress_metrics():
    pytest.importorskip("ray.serve.autoscaling_policy")

    @dataclass(frozen=True)
    class Dep:
        name: str

    ingress, scout, validator = Dep("Ingress"), Dep("Scout"), Dep("Validator")
    contexts = {
        ingress: Ctx(aggregated_metrics=_metrics(30, replicas=1)),
        scout: Ctx(total_num_requests=40, current_num_replicas=2, capacity_adjusted_max_replicas=10),
        validator: Ctx(total_num_requests=1, aggregated_metrics={}),
    }
    decisions, states = CascadeApplicationPolicy(target_ongoing_requests=8, headroom_sigmas=0)(contexts)
    assert decisions[validator] == 6 and states[validator]["source"] == "cascade"  # 30x0.8x0.5x4=48 -> 6
    assert decisions[ingress] == 0  # request-based: no requests (Ray's wrapper then applies min_replicas)
    assert decisions[scout] == pytest.approx(40 / 8)  # Ray's rule for everyone else


def test_stats_listen_to_the_routers_stage_events():
    """Fed by the real router through a MetricsTee: Scout answers kept, Validator calls and their time."""
    import asyncio
    import math as m

    from serving.metrics import Metrics, MetricsTee
    from serving.pipeline import CacheDecision, StageName
    from tests.unit.test_router import SURE, UNSURE, make, req

    stats = CascadeStats(LoadConfig())
    seen: list[tuple[str, str]] = []

    class Recording(Metrics):
        def stage(self, stage, decision, latency_ms):
            seen.append((stage, decision))

    tee = MetricsTee(Recording(), stats)
    sure, _, _ = make(SURE, metrics=tee)
    unsure, _, _ = make(UNSURE, metrics=tee, validator_delay=0.05)

    async def go():
        for _ in range(2):
            await sure.complete(req())  # the Scout's answer is kept
        for _ in range(2):
            await unsure.complete(req())  # escalated: the Validator answers
        await sure.complete(req(), model="validator")  # forced to the Validator

    asyncio.run(go())
    assert seen.count(("scout", "confident")) == 2 and seen.count(("validator", "answered")) == 3  # both sinks fed
    assert stats.escalation.value == pytest.approx(3 / 5)  # 3 of 5 model answers came from the Validator
    # The mean Validator time measured (two 50 ms escalations and an instant forced call), not the 5 s prior.
    assert stats.service == pytest.approx(0.1 / 3, abs=0.01)
    assert stats.hit.value == 0.0  # no cache stage: nothing was a hit
    for decision in ("exact_hit", "semantic_hit", "miss", "miss"):
        stats.stage(StageName.CACHE, CacheDecision(decision), 1.0)
    assert stats.hit.value == pytest.approx(0.5)
    assert not m.isnan(stats.signals().validator_concurrency())


def test_stats_export_refreshes_the_forecast_without_arrivals():
    """The ingress exports on a timer: after arrivals stop, the exported rate decays towards 0."""
    from serving.metrics import Metrics

    class Last(Metrics):
        def __init__(self):
            self.rate = {}

        def load_forecast(self, priority, horizon_s, rate):
            self.rate[(priority, horizon_s)] = rate

    clock, metrics = FakeClock(0.0), Last()
    stats = CascadeStats(LoadConfig(interval_s=1.0, level_alpha=0.5), clock=clock, metrics=metrics)
    for i in range(100):  # 10 req/s for 10 s
        clock.now = i * 0.1
        stats.arrival("interactive")
    clock.now = 10.0
    stats.export()
    busy = metrics.rate[("interactive", 0.0)]
    clock.now = 20.0  # ten quiet seconds
    stats.export()
    assert busy == pytest.approx(10, rel=0.15) and metrics.rate[("interactive", 0.0)] < 0.1 * busy
