"""Metrics of the request path.

`Metrics` is the interface the pipeline reports to (its base methods do nothing, which is
what unit tests and library use want); `ServeMetrics` exports them to Prometheus through
Ray Serve's custom metrics (`ray.serve.metrics`), tagged with the deployment and replica
automatically. Later stages (cache, analyzer, ...) add their metrics here the same way.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from serving.pipeline import Decision, StageName

# Milliseconds: from a cache hit (~1 ms) to a long CPU generation (minutes).
LATENCY_BOUNDARIES_MS = [0.5, 1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000, 120000, 300000]
CONFIDENCE_BOUNDARIES = [0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99]


class Metrics:
    """Where the request path reports what happened. The base class discards everything."""

    def request(self, route: str, status: int) -> None:
        """One finished request, by the tier that answered (or 'error') and HTTP status."""

    def stage(self, stage: StageName, decision: Decision, latency_ms: float) -> None:
        """One stage of the path finished with `decision` (a typed decision of `serving.pipeline`;
        a `StrEnum`, so it is its plain value as a tag) after `latency_ms`."""

    def confidence(self, value: float) -> None:
        """One Scout confidence score."""

    def tokens(self, tier: str, prompt_tokens: int, completion_tokens: int) -> None:
        """Tokens processed by a tier."""

    def draft(self, proposed: int, accepted: int, source: str = "scout", saved: int = 0) -> None:
        """One verified draft (from the Scout or a cache near miss): tokens proposed, accepted by the
        Validator, and saved (obtained without a Validator decode step)."""

    def cache_event(self, event: str, reason: str = "", n: int = 1) -> None:
        """Cache events: exact_hit, semantic_hit, miss, guard_rejected (reason), admitted, evicted, expired, ..."""

    def cache_lookup(self, decision: str, latency_ms: float) -> None:
        """One lookup inside the cache (embedding and store search included)."""

    def cache_verify(self, rule: str, pairs: int, latency_ms: float) -> None:
        """One verification of proposed cache candidates: the rule that decided, pairs scored, latency."""

    def plan(self, strategy: str, priority: str, complexity: float | None) -> None:
        """One request analyzed: its strategy, priority class and complexity (None when unknown)."""

    def coalesced(self, n: int = 1) -> None:
        """Requests answered by an identical request's computation (in-flight coalescing)."""

    def batch_params(self, deployment: str, max_batch_size: int, batch_wait_timeout_s: float) -> None:
        """The adaptive batching controller set new `@serve.batch` parameters."""

    def load_forecast(self, priority: str, horizon_s: float, rate: float) -> None:
        """Forecast arrival rate (1/s) of a priority class `horizon_s` ahead (0: the smoothed current rate)."""

    def ledger(self, namespace: str, path: str, tier: str, engine_s: float, tokens: int) -> None:
        """One request's cost booked: engine seconds and tokens of `tier` ('validator_only': the counterfactual)."""

    def audit(self, path: str, namespace: str, audits: int, disagreements: int, upper: float) -> None:
        """The audit's running estimate of one shortcut path in one namespace, with its upper confidence limit."""


class MetricsTee(Metrics):
    """Reports every event to each of several `Metrics` (e.g. Prometheus and the load statistics)."""

    def __init__(self, *sinks: Metrics) -> None:
        self.sinks = sinks


def _forward(name: str) -> Any:
    def method(self: MetricsTee, *args: Any, **kwargs: Any) -> None:
        for sink in self.sinks:
            getattr(sink, name)(*args, **kwargs)

    method.__name__ = name
    method.__doc__ = getattr(Metrics, name).__doc__
    return method


# Every public event of `Metrics`, forwarded: a new event reaches all sinks without editing the tee.
for _name in [n for n, v in vars(Metrics).items() if callable(v) and not n.startswith("_")]:
    setattr(MetricsTee, _name, _forward(_name))


class ServeMetrics(Metrics):
    """Prometheus metrics through `ray.serve.metrics` (scraped from Ray's metrics port)."""

    def __init__(self, prefix: str = "infopt") -> None:
        from ray.serve import metrics as m

        self._requests = m.Counter(
            f"{prefix}_requests", description="Requests by answering route and status.", tag_keys=("route", "status")
        )
        self._stage_ms = m.Histogram(
            f"{prefix}_stage_latency_ms",
            description="Latency of each stage of the request path.",
            boundaries=LATENCY_BOUNDARIES_MS,
            tag_keys=("stage", "decision"),
        )
        self._confidence = m.Histogram(
            f"{prefix}_scout_confidence", description="Scout confidence scores.", boundaries=CONFIDENCE_BOUNDARIES
        )
        self._tokens = m.Counter(
            f"{prefix}_tokens", description="Tokens processed per tier and kind.", tag_keys=("tier", "kind")
        )

        self._cache_events = m.Counter(
            f"{prefix}_cache_events", description="Semantic cache events (hits, misses, guard rejections, "
            "admissions, evictions, expirations).", tag_keys=("event", "reason"),
        )
        self._cache_lookup_ms = m.Histogram(
            f"{prefix}_cache_lookup_ms", description="Latency of cache lookups inside the cache deployment.",
            boundaries=LATENCY_BOUNDARIES_MS, tag_keys=("decision",),
        )
        self._cache_verify_ms = m.Histogram(
            f"{prefix}_cache_verify_ms", description="Latency of the cache's pair verifier per lookup, by the rule "
            "that decided (verifier, verifier_timeout, verifier_error).", boundaries=LATENCY_BOUNDARIES_MS,
            tag_keys=("rule",),
        )

        self._draft_tokens = m.Counter(
            f"{prefix}_draft_tokens", description="Verified drafts: tokens proposed, accepted, and saved (obtained "
            "without a Validator decode step), by draft source (scout, cache).", tag_keys=("kind", "source"),
        )
        self._drafts = m.Counter(f"{prefix}_drafts_verified", description="Drafts verified by the Validator, by "
                                 "source (scout, cache).", tag_keys=("source",))

        self._plans = m.Counter(
            f"{prefix}_analyzer_plans", description="Requests analyzed, by strategy and priority class.",
            tag_keys=("strategy", "priority"),
        )
        self._complexity = m.Histogram(
            f"{prefix}_analyzer_complexity", description="Estimated P(the Scout is not good enough).",
            boundaries=CONFIDENCE_BOUNDARIES,
        )
        self._coalesced = m.Counter(
            f"{prefix}_coalesced_requests", description="Requests answered by an identical in-flight request."
        )
        self._batch_size = m.Gauge(
            f"{prefix}_batch_max_size", description="Adaptive @serve.batch max_batch_size in force.",
            tag_keys=("batched",),
        )
        self._batch_wait = m.Gauge(
            f"{prefix}_batch_wait_timeout_s", description="Adaptive @serve.batch batch_wait_timeout_s in force.",
            tag_keys=("batched",),
        )
        self._forecast = m.Gauge(
            f"{prefix}_arrival_rate_forecast", description="Forecast arrival rate (requests/s) per priority class "
            "and horizon (0 = smoothed current rate).", tag_keys=("priority", "horizon_s"),
        )
        self._ledger_s = m.Counter(
            f"{prefix}_ledger_engine_seconds", description="Engine seconds booked by the cost ledger, by namespace, "
            "answering path and tier ('validator_only': what the Validator alone would have spent).",
            tag_keys=("namespace", "path", "tier"),
        )
        self._ledger_tokens = m.Counter(
            f"{prefix}_ledger_tokens", description="Tokens booked by the cost ledger, by namespace, path and tier.",
            tag_keys=("namespace", "path", "tier"),
        )
        self._audits = m.Gauge(f"{prefix}_audit_count", description="Audited shortcut answers, by path and "
                               "namespace.", tag_keys=("path", "namespace"))
        self._audit_rate = m.Gauge(f"{prefix}_audit_disagreement", description="Audited disagreement rate with the "
                                   "Validator, by path and namespace.", tag_keys=("path", "namespace"))
        self._audit_upper = m.Gauge(f"{prefix}_audit_disagreement_upper", description="Clopper-Pearson upper "
                                    "confidence limit of that rate.", tag_keys=("path", "namespace"))

    def request(self, route: str, status: int) -> None:
        self._requests.inc(tags={"route": route, "status": str(status)})

    def stage(self, stage: StageName, decision: Decision, latency_ms: float) -> None:
        # Plain str tags: Ray hands them to its C++ core.
        self._stage_ms.observe(latency_ms, tags={"stage": str(stage), "decision": str(decision)})

    def confidence(self, value: float) -> None:
        self._confidence.observe(value)

    def tokens(self, tier: str, prompt_tokens: int, completion_tokens: int) -> None:
        # Ray counters refuse an increment of 0 (an empty answer would fail the request).
        if prompt_tokens:
            self._tokens.inc(prompt_tokens, tags={"tier": str(tier), "kind": "prompt"})
        if completion_tokens:
            self._tokens.inc(completion_tokens, tags={"tier": str(tier), "kind": "completion"})

    def draft(self, proposed: int, accepted: int, source: str = "scout", saved: int = 0) -> None:
        self._drafts.inc(tags={"source": source})
        for kind, n in (("proposed", proposed), ("accepted", accepted), ("saved", saved)):
            if n:  # Ray counters refuse an increment of 0.
                self._draft_tokens.inc(n, tags={"kind": kind, "source": source})

    def cache_event(self, event: str, reason: str = "", n: int = 1) -> None:
        if n:
            self._cache_events.inc(n, tags={"event": event, "reason": reason})

    def cache_lookup(self, decision: str, latency_ms: float) -> None:
        self._cache_lookup_ms.observe(latency_ms, tags={"decision": decision})

    def cache_verify(self, rule: str, pairs: int, latency_ms: float) -> None:
        self._cache_verify_ms.observe(latency_ms, tags={"rule": rule})

    def plan(self, strategy: str, priority: str, complexity: float | None) -> None:
        self._plans.inc(tags={"strategy": strategy, "priority": priority})
        if complexity is not None:
            self._complexity.observe(complexity)

    def coalesced(self, n: int = 1) -> None:
        if n:  # Ray counters refuse an increment of 0.
            self._coalesced.inc(n)

    def batch_params(self, deployment: str, max_batch_size: int, batch_wait_timeout_s: float) -> None:
        # Not tagged 'deployment': Ray Serve reserves that tag (and fills it) for every replica metric.
        self._batch_size.set(max_batch_size, tags={"batched": deployment})
        self._batch_wait.set(batch_wait_timeout_s, tags={"batched": deployment})

    def ledger(self, namespace: str, path: str, tier: str, engine_s: float, tokens: int) -> None:
        tags = {"namespace": namespace, "path": path, "tier": tier}
        if engine_s > 0:  # Ray counters refuse an increment of 0.
            self._ledger_s.inc(engine_s, tags=tags)
        if tokens:
            self._ledger_tokens.inc(tokens, tags=tags)

    def audit(self, path: str, namespace: str, audits: int, disagreements: int, upper: float) -> None:
        tags = {"path": path, "namespace": namespace}
        self._audits.set(audits, tags=tags)
        self._audit_rate.set(disagreements / audits if audits else 0.0, tags=tags)
        self._audit_upper.set(upper, tags=tags)

    def load_forecast(self, priority: str, horizon_s: float, rate: float) -> None:
        self._forecast.set(rate, tags={"priority": priority, "horizon_s": f"{horizon_s:g}"})
