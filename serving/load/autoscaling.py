"""Cascade-aware autoscaling of the Validator.

Request-based autoscaling (Ray Serve's default: ongoing requests / target per replica)
reacts to load that has already queued at the Validator. In a cascade the Validator's
load is predictable earlier, at the front door: of the requests arriving, a share is
answered by the cache, and of the rest a share is escalated (or sent direct) to the
Validator. By Little's law the Validator's concurrency is

    L = λ̂(t + H) × (1 − cache hit rate) × escalation rate × mean Validator time

with λ̂ the arrival rate forecast `H` seconds ahead (about a replica's start-up time,
`serving.load.forecast`). L is a mean: with ample servers the number in flight is Poisson
(an M/G/∞ queue), so the policy plans for ``L + z·sqrt(L)`` (`headroom_sigmas` = z) and asks
for ``ceil((L + z·sqrt(L)) / target per replica)`` replicas, clamped to the bounds.

**Hysteresis.** Scaling up is immediate. Scaling down needs the smaller count to be
comfortably loaded — ``L <= (1 − scale_down_hysteresis) × target × n`` — and to stay so for
`downscale_delay_s`; a load that wobbles around a boundary does not make replicas flap.

Pieces:

* `cascade_replicas` — the pure decision (state in, state out; JSON-serialisable state);
* `CascadeStats` — what the ingress measures (arrivals per class, cache hits, Validator
  share, Validator time) and reports through `record_autoscaling_stats()`;
* `CascadeAutoscalingPolicy` — the adapter for Ray Serve's custom autoscaling policy hook
  (deployment-level: ``AutoscalingConfig.policy = {"policy_function":
  "serving.load.autoscaling:CascadeAutoscalingPolicy", "policy_kwargs": {...}}``);
* `CascadeApplicationPolicy` — the application-level variant: it reads the ingress's
  custom metrics and scales the Validator, leaving every other deployment to Ray's
  request-based policy (``autoscaling_policy: {"policy_function":
  "serving.load.autoscaling:CascadeApplicationPolicy", "policy_kwargs": {...}}`` in the
  Serve config's application).

Configured by the `load` section: the forecast (`LoadConfig`) and `load.autoscaling`
(`CascadeAutoscalingConfig`). Ray is imported only inside the adapters' calls, so this module
is importable without it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from serving.config import CascadeAutoscalingConfig, LoadConfig
from serving.load.forecast import ArrivalForecaster
from serving.metrics import Metrics
from serving.pipeline import CacheDecision, Decision, ScoutDecision, StageName, ValidatorDecision

# Names of the custom autoscaling metrics the ingress reports (record_autoscaling_stats).
ARRIVALS = "infopt_arrival_rate_forecast"
HIT_RATE = "infopt_cache_hit_rate"
ESCALATION = "infopt_escalation_rate"
SERVICE_S = "infopt_validator_service_s"


@dataclass(frozen=True)
class CascadeSignals:
    """The inputs of the decision."""

    arrival_rate: float  # forecast requests/s at the front door, `horizon_s` ahead
    cache_hit_rate: float  # share answered by the cache
    escalation_rate: float  # share of cache misses the Validator serves (escalated, direct or forced)
    service_time_s: float  # mean Validator time per request

    def validator_concurrency(self) -> float:
        """Little's law: requests in flight at the Validator."""
        return max(self.arrival_rate, 0.0) * (1 - _unit(self.cache_hit_rate)) * _unit(self.escalation_rate) \
            * max(self.service_time_s, 0.0)


def _unit(x: float) -> float:
    return min(max(x, 0.0), 1.0)


def cascade_replicas(
    signals: CascadeSignals,
    config: CascadeAutoscalingConfig,
    current: int,
    min_replicas: int,
    max_replicas: int,
    now: float,
    state: dict[str, Any] | None = None,
) -> tuple[int, dict[str, Any]]:
    """Replicas the Validator should have now, and the policy state to keep (see the module docstring)."""
    state = dict(state or {})
    mean_load = signals.validator_concurrency()
    # Requests in flight at a server with ample capacity are Poisson (M/G/inf): plan for mean + z·sd.
    load = mean_load + config.headroom_sigmas * math.sqrt(mean_load)
    target = config.target_ongoing_requests
    needed = min(max(math.ceil(load / target - 1e-9), min_replicas), max_replicas)
    state["load"] = round(mean_load, 6)
    if needed >= current:
        state.pop("low_since", None)
        return needed, state
    # Scale down only to a count that stays below (1 - hysteresis) of its target.
    comfortable = min(max(math.ceil(load / ((1 - config.scale_down_hysteresis) * target) - 1e-9), min_replicas),
                      max_replicas)
    if comfortable >= current:
        state.pop("low_since", None)
        return current, state
    low_since = state.setdefault("low_since", now)
    if now - low_since >= config.downscale_delay_s:
        state.pop("low_since", None)
        return comfortable, state
    return current, state


def request_based_replicas(ongoing: float, target: float, min_replicas: int, max_replicas: int) -> int:
    """Ray Serve's default rule without its delays: ceil(ongoing requests / target), clamped."""
    return min(max(math.ceil(ongoing / target - 1e-9), min_replicas), max_replicas)


class _Ratio:
    """A share measured as an EWMA of 0/1 events (weight `alpha` per event)."""

    def __init__(self, prior: float, alpha: float = 0.005) -> None:
        self.value, self.alpha, self.seen = prior, alpha, 0

    def add(self, hit: bool) -> None:
        self.seen += 1
        # Early events weigh more, so a fresh replica converges quickly.
        a = max(self.alpha, 1.0 / self.seen)
        self.value = (1 - a) * self.value + a * float(hit)


class CascadeStats(Metrics):
    """What the front door measures for the cascade policy; `autoscaling_stats()` reports it to Ray.

    It listens to the request path like any `Metrics` sink (`stage()`: cache lookups, Scout
    answers kept, Validator calls and their times), and the ingress adds `arrival(priority)`
    per request. The same figures can be fed directly: `cache(hit)`, `routed(to_validator)`,
    `validator_time(seconds)`.
    """

    def __init__(
        self, config: LoadConfig | None = None, clock: Callable[[], float] = time.monotonic,
        metrics: Metrics | None = None,
    ) -> None:
        self.config = config or LoadConfig()
        self._clock = clock
        self.metrics = metrics
        self.forecaster = ArrivalForecaster(self.config, start=clock())
        self.hit = _Ratio(0.0)
        self.escalation = _Ratio(self.config.autoscaling.default_escalation_rate)
        self.service = self.config.autoscaling.default_service_time_s
        self._service_n = 0

    def stage(self, stage: StageName, decision: Decision, latency_ms: float) -> None:
        """A stage of the request path finished (the pipeline's `Metrics` event): read from the typed decision."""
        if isinstance(decision, CacheDecision):
            self.cache(decision.is_hit)
        elif isinstance(decision, ValidatorDecision):
            self.routed(True)
            if decision is not ValidatorDecision.FAILED:
                self.validator_time(latency_ms / 1000)
        elif isinstance(decision, ScoutDecision) and decision.kept:
            self.routed(False)

    def arrival(self, priority: str = "interactive", n: int = 1) -> None:
        """`n` requests arrived."""
        self.forecaster.record(priority, self._clock(), n)

    def cache(self, hit: bool) -> None:
        """One cache lookup."""
        self.hit.add(hit)

    def routed(self, to_validator: bool) -> None:
        """A cache miss was answered by the Validator (True) or by the Scout alone (False)."""
        self.escalation.add(to_validator)

    def validator_time(self, seconds: float) -> None:
        """One Validator call took `seconds`."""
        self._service_n += 1
        a = max(0.01, 1.0 / self._service_n)
        self.service = (1 - a) * self.service + a * seconds

    def signals(self, horizon_s: float | None = None) -> CascadeSignals:
        """The current signals, the arrival rate forecast `horizon_s` ahead (default: the configured horizon)."""
        self.forecaster.advance(self._clock())
        h = self.config.autoscaling.horizon_s if horizon_s is None else horizon_s
        return CascadeSignals(self.forecaster.forecast(h), self.hit.value, self.escalation.value, self.service)

    def export(self) -> None:
        """Write each class's smoothed rate and its forecasts 10 s and `horizon_s` ahead to `metrics`."""
        self.forecaster.advance(self._clock())
        if self.metrics is not None:
            self.forecaster.export(self.metrics, tuple(sorted({10.0, self.config.autoscaling.horizon_s})))

    def autoscaling_stats(self) -> dict[str, float]:
        """The custom metrics for Ray Serve (return this from the deployment's `record_autoscaling_stats`).

        Also exports the per-class forecasts to `metrics` when given (Ray calls this every few seconds).
        """
        s = self.signals()
        self.export()
        return {ARRIVALS: s.arrival_rate, HIT_RATE: s.cache_hit_rate, ESCALATION: s.escalation_rate,
                SERVICE_S: s.service_time_s}


def signals_from_metrics(aggregated: dict[str, dict[Any, float]] | None) -> CascadeSignals | None:
    """Signals from Ray's aggregated custom metrics (per replica): arrivals add up, shares and times average."""
    if not aggregated or not aggregated.get(ARRIVALS):
        return None

    def mean(name: str) -> float | None:
        values = list((aggregated.get(name) or {}).values())
        return sum(values) / len(values) if values else None

    hit, esc, service = mean(HIT_RATE), mean(ESCALATION), mean(SERVICE_S)
    if hit is None or esc is None or service is None:
        return None
    return CascadeSignals(sum(aggregated[ARRIVALS].values()), hit, esc, service)


class CascadeAutoscalingPolicy:
    """Ray Serve deployment-level policy (a class: Ray instantiates it once with `policy_kwargs`).

    Reads the cascade signals from the deployment's own custom metrics
    (`ctx.aggregated_metrics`); without them (no reports yet) it falls back to the
    request-based rule on the Validator's ongoing requests.
    """

    def __init__(self, **policy_kwargs: Any) -> None:
        self.config = CascadeAutoscalingConfig(**policy_kwargs)

    def decide(self, ctx: Any, aggregated: dict[str, dict[Any, float]] | None) -> tuple[int, dict[str, Any]]:
        """The decision for one deployment's `AutoscalingContext` from the given custom metrics."""
        lo, hi = ctx.capacity_adjusted_min_replicas, ctx.capacity_adjusted_max_replicas
        now = ctx.current_time if ctx.current_time is not None else time.time()
        signals = signals_from_metrics(aggregated)
        if signals is None:
            n = request_based_replicas(ctx.total_num_requests, self.config.target_ongoing_requests, lo, hi)
            return n, {**ctx.policy_state, "source": "requests"}
        n, state = cascade_replicas(signals, self.config, ctx.current_num_replicas, lo, hi, now,
                                    dict(ctx.policy_state))
        return n, {**state, "source": "cascade"}

    def __call__(self, ctx: Any) -> tuple[int, dict[str, Any]]:
        return self.decide(ctx, ctx.aggregated_metrics)


class CascadeApplicationPolicy:
    """Ray Serve application-level policy: the Validator by the cascade, the rest request-based.

    `policy_kwargs`: ``validator`` and ``source`` (deployment names, default "Validator" and
    "Ingress": the deployment whose `record_autoscaling_stats` reports `CascadeStats`), plus
    the fields of `CascadeAutoscalingConfig`.
    """

    def __init__(self, validator: str = "Validator", source: str = "Ingress", **policy_kwargs: Any) -> None:
        self.validator, self.source = validator, source
        self.policy = CascadeAutoscalingPolicy(**policy_kwargs)

    def __call__(self, contexts: dict[Any, Any]) -> tuple[dict[Any, int], dict[Any, dict[str, Any]]]:
        from ray.serve.autoscaling_policy import replica_queue_length_autoscaling_policy

        by_name = {getattr(dep, "name", str(dep)): ctx for dep, ctx in contexts.items()}
        source = by_name.get(self.source)
        aggregated = source.aggregated_metrics if source is not None else None
        decisions: dict[Any, int] = {}
        states: dict[Any, dict[str, Any]] = {}
        for dep, ctx in contexts.items():
            if getattr(dep, "name", None) == self.validator:
                decisions[dep], states[dep] = self.policy.decide(ctx, aggregated)
            else:
                n, state = replica_queue_length_autoscaling_policy(ctx)
                decisions[dep], states[dep] = n, dict(state or {})
        return decisions, states
