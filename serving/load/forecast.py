"""Arrival-rate forecast per priority class: Holt's linear trend method, damped.

Arrivals are counted in fixed steps of `interval_s`; at the end of each step the rate
``y = count / interval_s`` updates, per class,

    level_t = α·y + (1-α)·(level_{t-1} + φ·trend_{t-1})
    trend_t = β·(level_t - level_{t-1}) + (1-β)·φ·trend_{t-1}

and the forecast h steps ahead is ``level + (φ + φ² + ... + φ^h)·trend``, floored at 0.
The damping φ < 1 keeps a ramp from being extrapolated forever (Gardner & McKenzie's
damped trend, the usual best default for short-horizon demand). Steps with no arrivals
count as zeros, so a quiet class decays towards 0. Seasonality (Holt-Winters) is left
out: the horizons that matter here (a replica's start-up, tens of seconds) are far
shorter than daily cycles.

`ArrivalForecaster` is pure (time is passed in); `export` writes the figures to
`Metrics.load_forecast` (Prometheus gauges in `ServeMetrics`). Configured by the `load`
section (`LoadConfig`: interval_s, level_alpha, trend_beta, damping).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from serving.config import LoadConfig
from serving.metrics import Metrics


@dataclass
class Holt:
    """Damped Holt smoothing of one series sampled at a fixed step."""

    alpha: float
    beta: float
    phi: float = 1.0
    level: float | None = None
    trend: float = 0.0

    def update(self, y: float) -> None:
        """One new observation."""
        if self.level is None:
            self.level = y
            return
        prev = self.level
        self.level = self.alpha * y + (1 - self.alpha) * (prev + self.phi * self.trend)
        self.trend = self.beta * (self.level - prev) + (1 - self.beta) * self.phi * self.trend

    def forecast(self, steps: float) -> float:
        """The value `steps` steps ahead (fractional steps interpolate), never below 0."""
        if self.level is None:
            return 0.0
        damp = steps if self.phi == 1.0 else self.phi * (1 - self.phi ** steps) / (1 - self.phi)
        return max(0.0, self.level + damp * self.trend)


class ArrivalForecaster:
    """Counts arrivals per class and forecasts each class's rate (requests per second)."""

    def __init__(self, config: LoadConfig | None = None, start: float = 0.0) -> None:
        self.config = config or LoadConfig()
        self.interval_s = self.config.interval_s
        self._step_start = start
        self._counts: dict[str, int] = {}
        self._models: dict[str, Holt] = {}

    def _model(self, cls: str) -> Holt:
        if cls not in self._models:
            c = self.config
            self._models[cls] = Holt(c.level_alpha, c.trend_beta, c.damping)
        return self._models[cls]

    def advance(self, now: float) -> int:
        """Close every step that ended by `now`; returns how many closed."""
        closed = 0
        while now >= self._step_start + self.interval_s:
            for cls in set(self._models) | set(self._counts):
                self._model(cls).update(self._counts.get(cls, 0) / self.interval_s)
            self._counts = {}
            self._step_start += self.interval_s
            closed += 1
            if closed > 10_000:  # a long idle gap: the levels are ~0 long before this
                self._step_start = now - (now - self._step_start) % self.interval_s
                break
        return closed

    def record(self, cls: str, now: float, n: int = 1) -> None:
        """`n` arrivals of class `cls` at time `now`."""
        self.advance(now)
        self._counts[cls] = self._counts.get(cls, 0) + n
        self._model(cls)

    def classes(self) -> list[str]:
        """Classes seen so far."""
        return sorted(self._models)

    def forecast(self, horizon_s: float, cls: str | None = None) -> float:
        """Forecast rate (1/s) `horizon_s` after the last closed step, for one class or all together."""
        steps = max(horizon_s / self.interval_s, 0.0)
        names = [cls] if cls is not None else list(self._models)
        return sum(self._models[c].forecast(steps) for c in names if c in self._models)

    def level(self, cls: str | None = None) -> float:
        """The smoothed current rate (1/s)."""
        return self.forecast(0.0, cls)

    def export(self, metrics: Metrics, horizons_s: tuple[float, ...] = (10.0, 60.0)) -> None:
        """Write the current level and forecasts of each class to `metrics`."""
        for cls in self.classes():
            metrics.load_forecast(cls, 0.0, self.level(cls))
            for h in horizons_s:
                metrics.load_forecast(cls, h, self.forecast(h, cls))


def mape(actual: list[float], predicted: list[float], floor: float = 1e-9) -> float:
    """Mean absolute percentage error over the points whose actual value is above `floor`."""
    pairs = [(a, p) for a, p in zip(actual, predicted, strict=True) if a > floor]
    if not pairs:
        return math.nan
    return sum(abs(p - a) / a for a, p in pairs) / len(pairs)
