"""What the live page (`/dashboard`) shows: a rolling window of finished requests, summarised.

`LiveStats` watches the request path twice: as an `Observer` it sees every answered request once
its answer is complete (its path, end-to-end time, time to first chunk, and what it cost against
what the Validator alone would have spent: the ledger's figures); as a `Metrics` sink it counts
errors by status and stage latencies. `snapshot()` turns the window into plain JSON: the route
mix per time bucket, the savings against validator-only per bucket and in total, latency and
TTFT percentiles per path, and the stages' latencies. `page_state` adds what lives elsewhere (the
ledger, the audit's bounds, the cache's statistics, the queue, and the replicas the Ingress reads
from Serve); the Ingress serves it at `GET /v1/dashboard/state`; the page itself (`static/`)
polls that and draws it.

Memory is bounded: at most `max_requests` requests and `window_s` seconds are kept.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter, deque
from dataclasses import dataclass
from importlib import resources
from typing import TYPE_CHECKING, Any

from serving.metrics import Metrics
from serving.pipeline._stage import Observer

if TYPE_CHECKING:
    from collections.abc import Callable

    from serving.cache.semantic import ResponseCache
    from serving.pipeline import Decision, Pipeline, RequestState, StageName

# The page's files and their media types: only these are served (no path from a URL reaches the disk).
ASSETS: dict[str, str] = {
    "index.html": "text/html; charset=utf-8",
    "dashboard.js": "text/javascript; charset=utf-8",
    "dashboard.css": "text/css; charset=utf-8",
    "uPlot.iife.min.js": "text/javascript; charset=utf-8",
    "uPlot.min.css": "text/css; charset=utf-8",
    "LICENSE.uPlot.txt": "text/plain; charset=utf-8",
}


def asset(name: str) -> tuple[bytes, str] | None:
    """One of the page's files (content, media type), or None for a name that is not one of them."""
    if name not in ASSETS:
        return None
    return resources.files(__package__).joinpath("static", name).read_bytes(), ASSETS[name]


@dataclass(frozen=True)
class Finished:
    """One answered request, as the page needs it."""

    at: float  # wall-clock seconds when it finished
    path: str  # cache / scout / validator / coalesced
    total_ms: float
    ttft_ms: float | None
    validator_s: float  # Validator engine seconds it spent
    validator_only_s: float  # what the Validator alone would have spent (the ledger's counterfactual)


def percentile(values: list[float], q: float) -> float | None:
    """The `q` quantile (0-1) by the nearest-rank method (None for no values): what the page labels p50/p99."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, min(len(ordered), int(-(-q * len(ordered) // 1))))  # ceil(q * n), at least 1
    return round(ordered[rank - 1], 3)


class LiveStats(Observer, Metrics):
    """A rolling window of the request path, for the live page. Cheap: a deque append per request."""

    def __init__(self, window_s: float = 900.0, bucket_s: float = 10.0, max_requests: int = 20_000,
                 clock: Callable[[], float] = time.time) -> None:
        self.window_s, self.bucket_s = window_s, bucket_s
        self.clock = clock
        self.started = clock()
        self.requests: deque[Finished] = deque(maxlen=max_requests)
        self.errors: deque[tuple[float, int]] = deque(maxlen=max_requests)
        self.stages: deque[tuple[float, str, float]] = deque(maxlen=max_requests * 6)
        self.total = Counter[str]()  # since start, by path ('error' included)

    # -- fed by the request path ----------------------------------------------------------

    def observe(self, state: RequestState) -> None:
        if state.result is None:
            return
        from serving.pipeline import Reason, Tier

        path = "coalesced" if state.reason is Reason.COALESCED else str(state.tier or "none")
        validator_s = state.cost.engine_s(Tier.VALIDATOR)  # its cross-checks of cache candidates included
        only = state.counterfactual_s if state.counterfactual_s is not None else validator_s
        self.requests.append(Finished(
            at=self.clock(), path=path, total_ms=state.total_ms or 0.0, ttft_ms=state.ttft_ms,
            validator_s=validator_s, validator_only_s=float(only)))
        self.total[path] += 1

    def request(self, route: str, status: int) -> None:
        if route == "error":
            self.errors.append((self.clock(), status))
            self.total["error"] += 1

    def stage(self, stage: StageName, decision: Decision, latency_ms: float) -> None:
        self.stages.append((self.clock(), str(stage), latency_ms))

    # -- read by the page -----------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """The window as plain JSON (see the module docstring)."""
        now = self.clock()
        horizon = now - self.window_s
        while self.requests and self.requests[0].at < horizon:
            self.requests.popleft()
        while self.errors and self.errors[0][0] < horizon:
            self.errors.popleft()
        while self.stages and self.stages[0][0] < horizon:
            self.stages.popleft()

        first = max(horizon, self.started)
        start = first - first % self.bucket_s
        n = int((now - start) // self.bucket_s) + 1
        times = [round(start + i * self.bucket_s, 3) for i in range(n)]
        paths = sorted({r.path for r in self.requests} | ({"error"} if self.errors else set()))
        mix = {p: [0] * n for p in paths}
        spent, only = [0.0] * n, [0.0] * n
        by_path: dict[str, list[Finished]] = {}
        for r in self.requests:
            i = min(n - 1, max(0, int((r.at - start) // self.bucket_s)))
            mix[r.path][i] += 1
            spent[i] += r.validator_s
            only[i] += r.validator_only_s
            by_path.setdefault(r.path, []).append(r)
        for at, _status in self.errors:
            mix["error"][min(n - 1, max(0, int((at - start) // self.bucket_s)))] += 1

        latency = {}
        for path, rows in sorted(by_path.items()):
            totals = [r.total_ms for r in rows]
            ttfts = [r.ttft_ms for r in rows if r.ttft_ms is not None]
            latency[path] = {"requests": len(rows), "p50_ms": percentile(totals, 0.5),
                             "p95_ms": percentile(totals, 0.95), "p99_ms": percentile(totals, 0.99),
                             "ttft_p50_ms": percentile(ttfts, 0.5)}
        stage_ms: dict[str, list[float]] = {}
        for _at, name, ms in self.stages:
            stage_ms.setdefault(name, []).append(ms)
        window_spent, window_only = sum(spent), sum(only)
        return {
            "now": round(now, 3), "window_s": self.window_s, "bucket_s": self.bucket_s,
            "uptime_s": round(now - self.started, 1),
            "series": {"t": times, "mix": mix, "validator_s": [round(x, 4) for x in spent],
                       "validator_only_s": [round(x, 4) for x in only]},
            "window": {"requests": len(self.requests), "errors": len(self.errors),
                       "errors_by_status": dict(Counter(str(s) for _, s in self.errors)),
                       "validator_s": round(window_spent, 4), "validator_only_s": round(window_only, 4),
                       "saved_share": round(1 - window_spent / window_only, 4) if window_only else None},
            "totals": dict(self.total),
            "latency": latency,
            "stages": {name: {"count": len(v), "p50_ms": percentile(v, 0.5), "p99_ms": percentile(v, 0.99)}
                       for name, v in sorted(stage_ms.items())},
        }


def quality_report(pipeline: Pipeline) -> dict[str, Any]:
    """The audit's report (`GET /v1/quality`), or the calibration in force when the audit is off."""
    if pipeline.auditor is not None:
        return pipeline.auditor.report()
    return {"calibration": pipeline.escalation.version, "audit": "off"}


async def page_state(pipeline: Pipeline, live: LiveStats, *, profile: str, refresh_s: float,
                     cache: ResponseCache | None = None, cache_timeout_s: float = 1.0,
                     replicas: dict[str, Any] | None = None) -> dict[str, Any]:
    """Everything the live page draws: the window (`live.snapshot()`), the ledger's totals, the quality report,
    the cache's statistics (an error note when it cannot say, within `cache_timeout_s`), our queue, and
    `replicas` as the caller read them."""
    body: dict[str, Any] = {"object": "dashboard.state", "profile": profile, "refresh_s": refresh_s,
                            **live.snapshot()}
    body["ledger"] = pipeline.ledger.totals() if pipeline.ledger is not None else None
    body["quality"] = quality_report(pipeline)
    body["cache"] = None
    if cache is not None:
        try:
            body["cache"] = await asyncio.wait_for(cache.stats(), cache_timeout_s)
        except Exception as exc:  # the page shows the cache as unavailable; it never fails for it
            body["cache"] = {"error": f"unavailable ({type(exc).__name__})"}
    gate = pipeline.gate
    body["queue"] = ({"active": gate.active, "waiting": gate.waiting, "limit": gate.limit,
                      "max_waiting": gate.max_waiting} if gate is not None else None)
    body["replicas"] = replicas
    return body
