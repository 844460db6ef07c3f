"""Arrival-rate forecasts per priority class (damped Holt) and their export as metrics."""

from __future__ import annotations

import math

import pytest

from serving.config import LoadConfig
from serving.load.forecast import ArrivalForecaster, Holt, mape
from serving.metrics import Metrics


def test_holt_follows_a_level_and_a_ramp():
    flat = Holt(0.3, 0.1)
    for _ in range(50):
        flat.update(10.0)
    assert flat.forecast(12) == pytest.approx(10.0, abs=1e-6)
    ramp = Holt(0.5, 0.3)
    for t in range(60):
        ramp.update(2.0 * t)
    # A linear ramp is extrapolated linearly (phi = 1)...
    assert ramp.forecast(5) == pytest.approx(2.0 * 64, rel=0.02)
    # ...and a damped trend flattens the far future.
    damped = Holt(0.5, 0.3, phi=0.8)
    for t in range(60):
        damped.update(2.0 * t)
    assert 118 < damped.forecast(5) < ramp.forecast(5)
    assert damped.forecast(1000) < damped.level + 2.0 * 0.8 / 0.2 + 1


def test_forecast_never_goes_negative():
    h = Holt(0.5, 0.5)
    for y in (100, 50, 10, 0, 0):
        h.update(y)
    assert h.forecast(10) == 0.0


def _feed(f: ArrivalForecaster, cls: str, rate: float, start: float, seconds: float) -> None:
    n = int(rate * seconds)
    for i in range(n):
        f.record(cls, start + i / rate)


def _feed_together(f: ArrivalForecaster, rates: dict[str, float], seconds: float) -> None:
    events = sorted((i / r, c) for c, r in rates.items() for i in range(int(r * seconds)))
    for t, c in events:
        f.record(c, t)


def test_per_class_rates_and_a_quiet_class_decays():
    f = ArrivalForecaster(LoadConfig(interval_s=1.0, level_alpha=0.5, trend_beta=0.1, damping=0.9))
    _feed_together(f, {"interactive": 20, "batch": 5}, 30)
    f.advance(30.0)
    assert f.level("interactive") == pytest.approx(20, rel=0.05)
    assert f.level("batch") == pytest.approx(5, rel=0.05)
    assert f.forecast(10) == pytest.approx(25, rel=0.05)
    assert f.classes() == ["batch", "interactive"]
    f.advance(60.0)  # 30 s with no arrivals
    assert f.level("interactive") < 0.5


def test_forecast_anticipates_a_ramp():
    f = ArrivalForecaster(LoadConfig(interval_s=1.0, level_alpha=0.5, trend_beta=0.3, damping=1.0))
    t = 0.0
    for second in range(40):  # the rate grows by 1/s every second
        _feed(f, "interactive", second + 1, t, 1.0)
        t += 1.0
    f.advance(t)
    now = f.level("interactive")
    ahead = f.forecast(10, "interactive")
    assert now == pytest.approx(40, rel=0.1) and ahead == pytest.approx(50, rel=0.1)


class RecordingMetrics(Metrics):
    def __init__(self):
        self.rows = []

    def load_forecast(self, priority, horizon_s, rate):
        self.rows.append((priority, horizon_s, round(rate, 3)))


def test_export_writes_level_and_horizons_per_class():
    f = ArrivalForecaster(LoadConfig(interval_s=1.0))
    _feed(f, "batch", 2, 0.0, 10)
    f.advance(10.0)
    m = RecordingMetrics()
    f.export(m, horizons_s=(10.0, 60.0))
    assert [(c, h) for c, h, _ in m.rows] == [("batch", 0.0), ("batch", 10.0), ("batch", 60.0)]
    assert all(r > 0 for _, _, r in m.rows)


def test_mape():
    assert mape([10, 20, 0], [11, 18, 5]) == pytest.approx(0.1)
    assert math.isnan(mape([0, 0], [1, 2]))
