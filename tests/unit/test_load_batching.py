"""Adaptive batching: batch size and wait follow the arrival rate."""

from __future__ import annotations

import pytest

from serving.config import AdaptiveBatchingConfig
from serving.load.batching import AdaptiveBatching, ArrivalRate, BatchController, BatchParams, batch_params
from tests.unit.fakes import FakeClock


def test_rate_estimate_tracks_the_gaps_and_decays_in_a_lull():
    r = ArrivalRate(halflife_s=1.0)
    for i in range(50):
        r.observe(i * 0.01)  # 100/s
    assert r.rate(0.49) == pytest.approx(100, rel=0.05)
    assert r.rate(10.0) < 0.11  # nothing for ~10 s: at most one per 10 s


def test_control_rule():
    # Low load: nobody else comes within the longest wait -> no waiting, batches still allowed.
    assert batch_params(10, 32, 0.01) == BatchParams(32, 0.0)
    # Medium load: wait for the expected followers only.
    assert batch_params(300, 32, 0.01) == BatchParams(4, 0.01)  # 3 expected in 10 ms: batches of 4, wait 3/300 s
    assert batch_params(150, 32, 0.01) == BatchParams(2, 0.0075)  # 1/150 s, rounded up to the 1.25 ms grid
    # High load: full batches, and the wait never exceeds the ceiling.
    assert batch_params(100_000, 32, 0.01) == BatchParams(32, 0.00125)  # 31/100000 s, rounded up
    assert batch_params(100_000, 32, 0.01, min_wait_s=0.002) == BatchParams(32, 0.002)


class FakeBatchMethod:
    """Stands in for a `@serve.batch` method's runtime setters."""

    def __init__(self):
        self.calls = []

    def set_max_batch_size(self, n):
        self.calls.append(("size", n))

    def set_batch_wait_timeout_s(self, s):
        self.calls.append(("wait", s))


def _drive(batching: AdaptiveBatching, clock: FakeClock, rate: float, seconds: float) -> BatchParams:
    params = batching.controller.params
    for _ in range(int(rate * seconds)):
        clock.now += 1 / rate
        params = batching.on_request()
    return params


def test_batch_parameters_change_when_the_arrival_rate_changes():
    clock = FakeClock(0.0)
    method = FakeBatchMethod()
    changes = []
    batching = AdaptiveBatching(method, 32, 0.01, AdaptiveBatchingConfig(halflife_s=0.5, update_interval_s=0.1),
                                clock=clock, on_change=changes.append)
    assert method.calls == [("size", 32), ("wait", 0.01)]  # the ceilings until a rate is known
    low = _drive(batching, clock, 5, 10)
    assert low == BatchParams(32, 0.0)
    ramp = [_drive(batching, clock, r, 3) for r in (200, 800, 5000)]
    assert [p.max_batch_size for p in ramp] == [2, 8, 32]
    assert all(0 < p.batch_wait_timeout_s <= 0.01 for p in ramp)
    back = _drive(batching, clock, 5, 10)
    assert back == BatchParams(32, 0.0)
    # Every change went through Ray's setters, and only changes did.
    assert method.calls[-2:] == [("size", 32), ("wait", 0.0)]
    # ~18,000 requests, a handful of changes per rate change: the controller does not churn.
    assert len(method.calls) == 2 * len(changes) and 5 <= len(changes) <= 30


def test_disabled_controller_keeps_the_configured_values():
    clock = FakeClock(0.0)
    c = BatchController(16, 0.005, AdaptiveBatchingConfig(enabled=False), clock=clock)
    for _ in range(1000):
        clock.now += 0.0001
        assert c.observe() is None
    assert c.params == BatchParams(16, 0.005)


def test_rate_is_not_biased_low_by_bursts():
    # 64 requests at once every 0.64 s (a replica behind a queue): 100/s on average.
    r = ArrivalRate(halflife_s=2.0)
    t = 0.0
    for _ in range(30):
        for _ in range(64):
            r.observe(t)
        t += 0.64
    assert r.rate(t - 0.32) == pytest.approx(100, rel=0.25)
