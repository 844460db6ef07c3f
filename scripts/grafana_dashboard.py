"""Write the Grafana dashboard of the project's, Ray Serve's and vLLM's metrics.

    python scripts/grafana_dashboard.py            # (re)write k8s/helm/inference-optimizer/dashboards/infopt.json
    python scripts/grafana_dashboard.py --check    # exit 1 when the file differs from what this writes

The chart provisions the file as a ConfigMap that Grafana's dashboard sidecar picks up
(`metrics.grafanaDashboard.enabled`); it can also be imported by hand (Dashboards -> Import).
Every query reads a metric as Ray's Prometheus endpoint names it (`ray_` + the metric's name):
tests/serve/test_cache_app.py checks each name against a real scrape of the tiny service.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "k8s" / "helm" / "inference-optimizer" / "dashboards" / "infopt.json"
DS = {"type": "prometheus", "uid": "${datasource}"}
W = "$__rate_interval"

# (title, unit, [(PromQL, legend)], description): one row of panels per group, two panels a row.
GROUPS: list[tuple[str, list[tuple[str, str, list[tuple[str, str]], str]]]] = [
    ("The optimizer", [
        ("Requests per second by the path that answered", "reqps",
         [(f'sum by (route) (rate(ray_infopt_requests_total{{route!="error"}}[{W}]))', "{{route}}"),
          (f'sum by (status) (rate(ray_infopt_requests_total{{route="error"}}[{W}]))', "error {{status}}")],
         "Who answered: cache, scout or validator; errors by HTTP status."),
        ("Validator time saved against validator-only", "percentunit",
         [(f'1 - sum(rate(ray_infopt_ledger_engine_seconds_total{{tier="validator",path!="audit"}}[{W}])) / '
           f'sum(rate(ray_infopt_ledger_engine_seconds_total{{tier="validator_only"}}[{W}]))', "saved")],
         "From the cost ledger: 1 - Validator engine-seconds spent / what the Validator alone would have spent."),
        ("Audited disagreement with the Validator (upper bound)", "percentunit",
         [("max by (path, namespace) (ray_infopt_audit_disagreement_upper)", "{{path}} {{namespace}} bound"),
          ("max by (path, namespace) (ray_infopt_audit_disagreement)", "{{path}} {{namespace}} measured")],
         "The closed-loop audit's running estimate per shortcut path and its Clopper-Pearson upper limit; "
         "compare with the profile's max_disagreement."),
        ("Audits", "short",
         [("max by (path, namespace) (ray_infopt_audit_count)", "{{path}} {{namespace}}")],
         "Audited answers so far (kept across restarts)."),
        ("Cache events per second", "ops",
         [(f"sum by (event) (rate(ray_infopt_cache_events_total[{W}]))", "{{event}}")],
         "Exact and semantic hits, misses, guard rejections, admissions, evictions."),
        ("Engine tokens per second by tier", "short",
         [(f"sum by (tier, kind) (rate(ray_infopt_tokens_total[{W}]))", "{{tier}} {{kind}}")],
         "Prompt and completion tokens each engine processed (Scout answers thrown away on escalation included)."),
    ]),
    ("Where the time goes", [
        ("Stage latency p50 / p99 (ms)", "ms",
         [(f"histogram_quantile(0.5, sum by (le, stage) (rate(ray_infopt_stage_latency_ms_bucket[{W}])))",
           "{{stage}} p50"),
          (f"histogram_quantile(0.99, sum by (le, stage) (rate(ray_infopt_stage_latency_ms_bucket[{W}])))",
           "{{stage}} p99")],
         "Per stage of the request path (analyzer, cache, scout, validator)."),
        ("Scout confidence (median)", "percentunit",
         [(f"histogram_quantile(0.5, sum by (le) (rate(ray_infopt_scout_confidence_bucket[{W}])))", "median")],
         "The Scout's confidence score on its answers."),
        ("Arrival rate forecast", "reqps",
         [("sum by (priority, horizon_s) (ray_infopt_arrival_rate_forecast)", "{{priority}} +{{horizon_s}}s")],
         "The Ingress's forecast per priority class that the Validator's cascade autoscaling reads."),
        ("Verified drafts: tokens by kind", "short",
         [(f"sum by (kind, source) (rate(ray_infopt_draft_tokens_total[{W}]))", "{{source}} {{kind}}")],
         "Draft tokens proposed, accepted and saved by verified escalation (Scout and cache near misses)."),
    ]),
    ("Ray Serve", [
        ("Healthy replicas by deployment", "short",
         [("sum by (deployment) (ray_serve_deployment_replica_healthy)", "{{deployment}}")], ""),
        ("Queued requests by deployment", "short",
         [("sum by (deployment) (ray_serve_deployment_queued_queries)", "{{deployment}}")],
         "Requests waiting in the handles' queues for a replica."),
        ("Replica processing latency p99 (ms)", "ms",
         [(f"histogram_quantile(0.99, sum by (le, deployment) "
           f"(rate(ray_serve_deployment_processing_latency_ms_bucket[{W}])))", "{{deployment}}")], ""),
        ("HTTP requests and errors per second", "reqps",
         [(f"sum(rate(ray_serve_num_http_requests_total[{W}]))", "requests"),
          (f"sum by (error_code) (rate(ray_serve_num_http_error_requests_total[{W}]))", "error {{error_code}}")],
         "At Serve's proxy."),
    ]),
    ("vLLM engines", [
        ("Requests running / waiting", "short",
         [("sum by (model_name) (ray_vllm_num_requests_running)", "{{model_name}} running"),
          ("sum by (model_name) (ray_vllm_num_requests_waiting)", "{{model_name}} waiting")], ""),
        ("KV cache usage", "percentunit",
         [("max by (model_name) (ray_vllm_kv_cache_usage_perc)", "{{model_name}}")], ""),
        ("Time to first token p50 / p99 (s)", "s",
         [(f"histogram_quantile(0.5, sum by (le, model_name) "
           f"(rate(ray_vllm_time_to_first_token_seconds_bucket[{W}])))", "{{model_name}} p50"),
          (f"histogram_quantile(0.99, sum by (le, model_name) "
           f"(rate(ray_vllm_time_to_first_token_seconds_bucket[{W}])))", "{{model_name}} p99")], ""),
        ("Prefix cache hit rate", "percentunit",
         [(f"sum by (model_name) (rate(ray_vllm_prefix_cache_hits_total[{W}])) / "
           f"sum by (model_name) (rate(ray_vllm_prefix_cache_queries_total[{W}]))", "{{model_name}}")], ""),
        ("Generation tokens per second", "short",
         [(f"sum by (model_name) (rate(ray_vllm_generation_tokens_total[{W}]))", "{{model_name}}")], ""),
    ]),
]


def panel(pid: int, title: str, unit: str, targets: list[tuple[str, str]], description: str,
          x: int, y: int) -> dict[str, Any]:
    return {
        "id": pid, "type": "timeseries", "title": title, "description": description, "datasource": DS,
        "gridPos": {"h": 8, "w": 12, "x": x, "y": y},
        "fieldConfig": {"defaults": {"unit": unit, "custom": {"lineWidth": 2, "fillOpacity": 5}}, "overrides": []},
        "options": {"legend": {"displayMode": "list", "placement": "bottom"}, "tooltip": {"mode": "multi"}},
        "targets": [{"refId": chr(ord("A") + i), "datasource": DS, "expr": expr, "legendFormat": legend}
                    for i, (expr, legend) in enumerate(targets)],
    }


def dashboard() -> dict[str, Any]:
    panels: list[dict[str, Any]] = []
    pid, y = 1, 0
    for group, items in GROUPS:
        panels.append({"id": pid, "type": "row", "title": group, "collapsed": False,
                       "gridPos": {"h": 1, "w": 24, "x": 0, "y": y}, "panels": []})
        pid, y = pid + 1, y + 1
        for i, (title, unit, targets, description) in enumerate(items):
            panels.append(panel(pid, title, unit, targets, description, x=12 * (i % 2), y=y + 8 * (i // 2)))
            pid += 1
        y += 8 * ((len(items) + 1) // 2)
    return {
        "title": "Inference Optimizer", "uid": "infopt-overview", "tags": ["inference-optimizer", "ray", "vllm"],
        "description": "What the optimizer does: paths, savings against validator-only, audited quality, latency, "
                       "Ray Serve and vLLM. Generated by scripts/grafana_dashboard.py.",
        "editable": True, "schemaVersion": 39, "version": 1, "refresh": "30s", "time": {"from": "now-1h", "to": "now"},
        "templating": {"list": [{"name": "datasource", "label": "Prometheus", "type": "datasource",
                                 "query": "prometheus", "current": {}, "hide": 0}]},
        "panels": panels,
    }


def metric_names(board: dict[str, Any]) -> set[str]:
    """Every metric the dashboard's queries read (names as Prometheus has them, e.g. ray_infopt_requests_total)."""
    exprs = [t["expr"] for p in board["panels"] for t in p.get("targets", [])]
    return {m for e in exprs for m in re.findall(r"\b(ray_[a-zA-Z0-9_:]+)", e)}


def render() -> str:
    return json.dumps(dashboard(), indent=1) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="exit 1 when the file is stale")
    opts = ap.parse_args(argv)
    text = render()
    if opts.check:
        if not OUT.exists() or OUT.read_text() != text:
            print(f"{OUT.relative_to(REPO)} is stale: run python scripts/grafana_dashboard.py", file=sys.stderr)
            return 1
        return 0
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(text)
    print(f"wrote {OUT.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
