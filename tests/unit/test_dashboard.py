"""The live page's data (`serving.dashboard.LiveStats`) on scripted requests, and its files."""

from __future__ import annotations

import asyncio
import math
import sys

import pytest

from serving.config import TieringConfig
from serving.dashboard import ASSETS, LiveStats, asset, page_state, percentile
from serving.engines.base import GenerationRequest
from serving.pipeline import StageName, build_pipeline
from serving.pipeline._decisions import ScoutDecision
from serving.quality.ledger import CostLedger
from tests.conftest import REPO
from tests.unit.fakes import FakeEngine

sys.path.insert(0, str(REPO / "scripts"))


class Clock:
    def __init__(self, t: float = 1_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def req(question: str) -> GenerationRequest:
    return GenerationRequest(messages=[{"role": "user", "content": question}], temperature=0)


def scripted(clock: Clock) -> tuple[LiveStats, CostLedger]:
    """Three requests: two kept by a sure Scout, one escalated to the Validator, 15 s apart."""
    live = LiveStats(window_s=60, bucket_s=10, clock=clock)
    ledger = CostLedger(prior_s_per_token=0.01)
    sure = FakeEngine("small", ["Par", "is"], [math.log(0.99)] * 2)
    unsure = FakeEngine("small", ["Ro", "me"], [math.log(0.01)] * 2)
    validator = FakeEngine("large", ["Paris", " is", " it"])
    # The ledger first: the page reads the counterfactual the ledger books.
    keep = build_pipeline(sure, validator, TieringConfig(threshold=0.5), observers=[ledger, live], metrics=live)
    escalate = build_pipeline(unsure, validator, TieringConfig(threshold=0.5), observers=[ledger, live],
                              metrics=live)

    async def go() -> None:
        await keep.complete(req("What is the capital of France?"))
        clock.t += 15
        await keep.complete(req("What is the capital of Spain?"))
        clock.t += 15
        await escalate.complete(req("What is the capital of Italy?"))

    asyncio.run(go())
    return live, ledger


def test_the_window_counts_each_path_and_adds_up_to_the_ledger():
    clock = Clock()
    live, ledger = scripted(clock)
    live.request("error", 429)
    s = live.snapshot()
    assert s["window"]["requests"] == 3 and s["window"]["errors"] == 1
    assert s["window"]["errors_by_status"] == {"429": 1}
    assert s["totals"] == {"scout": 2, "validator": 1, "error": 1}
    mix = s["series"]["mix"]
    assert sum(mix["scout"]) == 2 and sum(mix["validator"]) == 1 and sum(mix["error"]) == 1
    # One point per 10 s bucket from the first request on: the requests land 15 s apart, in 3 buckets.
    assert len(s["series"]["t"]) == len(mix["scout"]) == 4
    assert [i for i, n in enumerate(mix["scout"]) if n] == [0, 1]
    # Savings: what the Validator spent against what validator-only would have, as the ledger books them.
    totals = ledger.totals()
    assert s["window"]["validator_s"] == pytest.approx(totals["validator_s"], abs=1e-3)
    assert s["window"]["validator_only_s"] == pytest.approx(totals["validator_only_s"], abs=1e-3)
    assert sum(s["series"]["validator_only_s"]) == pytest.approx(totals["validator_only_s"], abs=1e-3)
    # (The fakes spend a fraction of a millisecond: the ledger's figures, rounded to 0.1 ms, move the ratio by up
    # to ~0.003; a share computed wrongly, e.g. without the counterfactual, would be off by far more.)
    assert s["window"]["saved_share"] == pytest.approx(1 - totals["validator_s"] / totals["validator_only_s"],
                                                       abs=0.01)
    # Latency and TTFT per path, and the stages' latencies.
    assert set(s["latency"]) == {"scout", "validator"}
    assert s["latency"]["scout"]["requests"] == 2
    assert s["latency"]["scout"]["ttft_p50_ms"] is not None
    assert s["latency"]["scout"]["ttft_p50_ms"] <= s["latency"]["scout"]["p99_ms"]
    assert s["stages"][str(StageName.SCOUT)]["count"] == 3


def test_requests_older_than_the_window_leave_it():
    clock = Clock()
    live, _ = scripted(clock)
    clock.t += 46  # the first request is now 76 s old, the second 61, the third 46: window 60 s
    s = live.snapshot()
    assert s["window"]["requests"] == 1
    assert s["totals"]["scout"] == 2  # totals since start stay
    assert sum(s["series"]["mix"].get("scout", [0])) == 0
    assert len(s["series"]["t"]) <= 60 / 10 + 1


def test_the_window_is_bounded_in_memory():
    live = LiveStats(window_s=3600, max_requests=100, clock=Clock())
    for _ in range(500):
        live.stage(StageName.SCOUT, ScoutDecision.CONFIDENT, 1.0)
        live.request("error", 503)
    assert len(live.errors) == 100 and len(live.stages) <= 600


def test_the_page_state_gathers_ledger_quality_cache_and_queue_and_survives_a_broken_cache():
    from serving.priority import PriorityGate
    from tests.unit.test_router_cache import BrokenCache

    live = LiveStats(window_s=60, bucket_s=10)
    pipeline = build_pipeline(FakeEngine("small", ["a"]), FakeEngine("large", ["b"]), gate=PriorityGate(2),
                              observers=[live])
    pipeline.ledger = CostLedger()
    asyncio.run(pipeline.complete(req("anything?")))
    body = asyncio.run(page_state(pipeline, live, profile="tiny", refresh_s=2.0, cache=BrokenCache(hang=True),
                                  cache_timeout_s=0.05, replicas={"infopt": {}}))
    assert body["object"] == "dashboard.state" and body["profile"] == "tiny" and body["refresh_s"] == 2.0
    assert body["window"]["requests"] == 1
    assert body["quality"] == {"calibration": "uncalibrated", "audit": "off"}
    assert body["cache"] == {"error": "unavailable (TimeoutError)"}
    assert body["queue"] == {"active": 0, "waiting": 0, "limit": 2, "max_waiting": None}
    assert body["ledger"]["validator_s"] == 0.0 and body["replicas"] == {"infopt": {}}


def test_percentiles_by_nearest_rank():
    assert percentile([], 0.5) is None
    assert percentile([5.0], 0.99) == 5.0
    values = [float(i) for i in range(1, 101)]
    assert percentile(values, 0.5) == 50.0 and percentile(values, 0.99) == 99.0 and percentile(values, 1) == 100.0


def test_the_page_files_are_served_by_name_only():
    html, media = asset("index.html")
    assert media.startswith("text/html")
    assert b"dashboard.js" in html and b"uPlot.iife.min.js" in html
    js, _ = asset("dashboard.js")
    assert b"/v1/dashboard/state" in js
    for name in ASSETS:  # every listed file ships with the package
        assert asset(name) is not None
    assert asset("../__init__.py") is None and asset("static/index.html") is None
    license_text, _ = asset("LICENSE.uPlot.txt")
    assert b"MIT License" in license_text and b"1.6.32" in license_text


# -- the Grafana dashboard ----------------------------------------------------------------------------------


def test_the_grafana_dashboard_is_fresh_and_every_panel_has_a_query():
    import grafana_dashboard

    assert grafana_dashboard.OUT.read_text() == grafana_dashboard.render(), \
        "k8s/helm/inference-optimizer/dashboards/infopt.json is stale: run python scripts/grafana_dashboard.py"
    board = grafana_dashboard.dashboard()
    panels = [p for p in board["panels"] if p["type"] != "row"]
    assert len(panels) >= 15
    assert all(p["targets"] and all(t["expr"] for t in p["targets"]) for p in panels)
    assert len({p["id"] for p in board["panels"]}) == len(board["panels"])
    names = grafana_dashboard.metric_names(board)
    # The project's own, Ray Serve's and vLLM's metrics, as Ray's Prometheus endpoint names them.
    assert {"ray_infopt_requests_total", "ray_infopt_ledger_engine_seconds_total",
            "ray_infopt_audit_disagreement_upper", "ray_serve_deployment_replica_healthy",
            "ray_vllm_num_requests_running"} <= names
