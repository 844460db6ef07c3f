"""Metrics of the request path.

`Metrics` is the interface the router reports to (its base methods do nothing, which is
what unit tests and library use want); `ServeMetrics` exports them to Prometheus through
Ray Serve's custom metrics (`ray.serve.metrics`), tagged with the deployment and replica
automatically. Later stages (cache, analyzer, ...) add their metrics here the same way.
"""

from __future__ import annotations

# Milliseconds: from a cache hit (~1 ms) to a long CPU generation (minutes).
LATENCY_BOUNDARIES_MS = [0.5, 1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000, 120000, 300000]
CONFIDENCE_BOUNDARIES = [0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99]


class Metrics:
    """Where the request path reports what happened. The base class discards everything."""

    def request(self, route: str, status: int) -> None:
        """One finished request, by the tier that answered (or 'error') and HTTP status."""

    def stage(self, stage: str, decision: str, latency_ms: float) -> None:
        """One stage of the path finished with `decision` after `latency_ms`."""

    def confidence(self, value: float) -> None:
        """One Scout confidence score."""

    def tokens(self, tier: str, prompt_tokens: int, completion_tokens: int) -> None:
        """Tokens processed by a tier."""

    def draft(self, proposed: int, accepted: int) -> None:
        """One verified draft: tokens proposed by the Scout, accepted by the Validator."""

    def cache_event(self, event: str, reason: str = "", n: int = 1) -> None:
        """Cache events: exact_hit, semantic_hit, miss, guard_rejected (reason), admitted, evicted, expired, ..."""

    def cache_lookup(self, decision: str, latency_ms: float) -> None:
        """One lookup inside the cache (embedding and store search included)."""


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

        self._draft_tokens = m.Counter(
            f"{prefix}_draft_tokens", description="Verified escalation: draft tokens proposed and accepted.",
            tag_keys=("kind",),
        )
        self._drafts = m.Counter(f"{prefix}_drafts_verified", description="Drafts verified by the Validator.")

    def request(self, route: str, status: int) -> None:
        self._requests.inc(tags={"route": route, "status": str(status)})

    def stage(self, stage: str, decision: str, latency_ms: float) -> None:
        self._stage_ms.observe(latency_ms, tags={"stage": stage, "decision": decision})

    def confidence(self, value: float) -> None:
        self._confidence.observe(value)

    def tokens(self, tier: str, prompt_tokens: int, completion_tokens: int) -> None:
        # Ray counters refuse an increment of 0 (an empty answer would fail the request).
        if prompt_tokens:
            self._tokens.inc(prompt_tokens, tags={"tier": tier, "kind": "prompt"})
        if completion_tokens:
            self._tokens.inc(completion_tokens, tags={"tier": tier, "kind": "completion"})

    def draft(self, proposed: int, accepted: int) -> None:
        self._drafts.inc()
        # Ray counters refuse an increment of 0.
        if proposed:
            self._draft_tokens.inc(proposed, tags={"kind": "proposed"})
        if accepted:
            self._draft_tokens.inc(accepted, tags={"kind": "accepted"})

    def cache_event(self, event: str, reason: str = "", n: int = 1) -> None:
        if n:
            self._cache_events.inc(n, tags={"event": event, "reason": reason})

    def cache_lookup(self, decision: str, latency_ms: float) -> None:
        self._cache_lookup_ms.observe(latency_ms, tags={"decision": decision})
