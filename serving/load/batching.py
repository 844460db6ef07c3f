"""Adaptive batching: `@serve.batch` size and wait follow the measured arrival rate.

A batched method trades latency for throughput: waiting `w` seconds for more requests
lets one model call serve a batch, but every request in it pays up to `w`. The right
trade depends on the arrival rate λ, which changes by the minute, so the controller
measures it and resets the batch parameters through Ray Serve's runtime setters
(`set_max_batch_size`, `set_batch_wait_timeout_s` on the decorated method).

**Rate.** An exponentially decayed count of arrivals with half-life `halflife_s` (see
`ArrivalRate`): unbiased under bursts, and it decays by itself during a lull instead of
freezing at its last busy value.

**Control rule.** With ceilings `B_max` (max_batch_size) and `W_max` (batch_wait_timeout_s)
from the deployment's configuration:

* expected arrivals during the longest wait: ``n = λ · W_max``;
* batch size ``B = clamp(2^ceil(log2 n), 1, B_max)`` — a power of two, so small
  fluctuations of λ do not change it (hysteresis by quantisation);
* wait ``W = clamp((B - 1) / λ, min_wait_s, W_max)`` — just long enough for the B-1
  followers expected after the first request, never longer than the ceiling (rounded up
  to an eighth of `W_max`, so a drifting rate does not reset it at every request);
* if ``n < 1`` (low load: nobody else will come within W_max), ``B = 1``-style
  behaviour: ``W = min_wait_s`` so a lone request is not delayed for nothing, with the
  batch size kept at its ceiling so a sudden burst is still batched.

So at low load requests go through at once, and as load grows batches fill up to `B_max`
while each request waits at most `W_max`. Changes are applied at most every
`update_interval_s` and only when a value changes. Configured by `load.batching`
(`AdaptiveBatchingConfig`); the ceilings are the batched deployment's own (`cache.embedder`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from serving.config import AdaptiveBatchingConfig


class ArrivalRate:
    """Arrival rate as an exponentially decayed count of arrivals (time constant from a half-life).

    Each arrival adds 1/τ to a sum that decays as exp(-Δt/τ); the sum is the rate. Unlike an
    EWMA of inter-arrival gaps weighted by time, it is not biased low by bursts (many tiny
    gaps then a long one, which is how a replica sees traffic queued in front of it), and it
    decays by itself during a lull. The start-up bias is corrected by dividing by
    1 - exp(-elapsed/τ).
    """

    def __init__(self, halflife_s: float) -> None:
        self.tau = halflife_s / math.log(2)
        self._sum = 0.0
        self._first: float | None = None
        self._last: float | None = None

    def observe(self, now: float) -> None:
        """One arrival at `now` (seconds, monotonic)."""
        if self._last is None:
            self._first = now
        else:
            self._sum *= math.exp(-max(now - self._last, 0.0) / self.tau)
        self._sum += 1.0 / self.tau
        self._last = now

    def rate(self, now: float) -> float:
        """Arrivals per second; 0 before two arrivals."""
        if self._last is None or self._first is None or self._last == self._first:
            return 0.0
        decayed = self._sum * math.exp(-max(now - self._last, 0.0) / self.tau)
        return decayed / (1.0 - math.exp(-max(now - self._first, 1e-9) / self.tau))


@dataclass(frozen=True)
class BatchParams:
    """Parameters of one `@serve.batch` method."""

    max_batch_size: int
    batch_wait_timeout_s: float


def batch_params(rate: float, max_batch_size: int, max_wait_s: float, min_wait_s: float = 0.0) -> BatchParams:
    """The control rule (module docstring): batch size and wait for arrival rate `rate` (1/s)."""
    n = rate * max_wait_s
    if n < 1.0:
        return BatchParams(max_batch_size, min(min_wait_s, max_wait_s))
    size = min(max_batch_size, 2 ** math.ceil(math.log2(n)))
    # On a grid of an eighth of the ceiling, so that a drifting rate does not reset the wait every time.
    step = max_wait_s / 8
    wait = step * math.ceil((size - 1) / rate / step - 1e-9) if size > 1 else min_wait_s
    return BatchParams(size, round(min(max(wait, min_wait_s), max_wait_s), 6))


class BatchController:
    """Measures arrivals and says when a batched method's parameters should change."""

    def __init__(
        self, max_batch_size: int, max_wait_s: float, config: AdaptiveBatchingConfig | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config or AdaptiveBatchingConfig()
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_s
        self.rate = ArrivalRate(self.config.halflife_s)
        self._clock = clock
        self.params = BatchParams(max_batch_size, max_wait_s)
        self._changed_at = -math.inf

    def observe(self, now: float | None = None) -> BatchParams | None:
        """Record one arrival; return new parameters when they should change, else None."""
        now = self._clock() if now is None else now
        self.rate.observe(now)
        if not self.config.enabled or now - self._changed_at < self.config.update_interval_s:
            return None
        new = batch_params(self.rate.rate(now), self.max_batch_size, self.max_wait_s, self.config.min_wait_s)
        if new == self.params:
            return None
        self.params, self._changed_at = new, now
        return new


class AdaptiveBatching:
    """Applies a `BatchController` to a `@serve.batch` method through Ray Serve's runtime setters.

    In a deployment::

        self.batching = AdaptiveBatching(self._embed_batch, cfg.max_batch_size, cfg.batch_wait_timeout_s, adaptive)

        async def embed(self, text):            # the handle's entry point
            self.batching.on_request()
            return await self._embed_batch(text)
    """

    def __init__(
        self, method: Any, max_batch_size: int, max_wait_s: float, config: AdaptiveBatchingConfig | None = None,
        clock: Callable[[], float] = time.monotonic, on_change: Callable[[BatchParams], None] | None = None,
    ) -> None:
        self.method = method
        self.controller = BatchController(max_batch_size, max_wait_s, config, clock)
        self.on_change = on_change
        self._apply(self.controller.params)

    def _apply(self, params: BatchParams) -> None:
        self.method.set_max_batch_size(params.max_batch_size)
        self.method.set_batch_wait_timeout_s(params.batch_wait_timeout_s)
        if self.on_change is not None:
            self.on_change(params)

    def on_request(self) -> BatchParams:
        """Call once per request, before entering the batched method; returns the parameters in force."""
        new = self.controller.observe()
        if new is not None:
            self._apply(new)
        return self.controller.params

    def arrival_rate(self) -> float:
        """The measured arrival rate now (1/s)."""
        return self.controller.rate.rate(self.controller._clock())

    def state(self) -> dict[str, float]:
        """Arrival rate and the parameters in force."""
        p = self.controller.params
        return {"arrival_rate": round(self.arrival_rate(), 3), "max_batch_size": p.max_batch_size,
                "batch_wait_timeout_s": p.batch_wait_timeout_s}
