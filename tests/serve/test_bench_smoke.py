"""`make bench`'s real path, CI-sized: scripts/bench.py starts the tiny profile once per mode on a
real Ray Serve, drives the same three requests through each, judges the answers and writes the
report. Asserts that the harness measures what it says (counts add up, TTFT <= end-to-end, the
Validator's processes were found), never a timing threshold.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from serving.config import load_profile
from serving.models import is_prepared
from tests.conftest import REPO
from tests.serve.conftest import GCS_WAIT_ENV, START_WAIT_S, free_port, require_models

pytestmark = pytest.mark.serve


def test_bench_runs_two_modes_on_the_real_service_and_reports(tmp_path: Path, shared_data: Path) -> None:
    config = load_profile("tiny")
    require_models(config)
    if not is_prepared(config.cache.embedder.model, config.cache_dir):
        pytest.skip("embedder not prepared: run `infopt models prepare --profile tiny`")
    docs = tmp_path / "docs" / "benchmarks.md"
    cmd = [sys.executable, str(REPO / "scripts" / "bench.py"), "--profile", "tiny", "--requests", "3",
           "--max-tokens", "6", "--concurrency", "2", "--modes", "tiered+cache", "--port", str(free_port()),
           "--data-dir", str(shared_data), "--out", str(tmp_path / "reports"), "--docs", str(docs),
           "--img", str(tmp_path / "docs" / "img")]
    # bench.py starts its own Ray, without this suite's patient start and retry (conftest.patient_start):
    # its GCS gets the longer start-up wait at least, the one part that is an environment setting.
    env = {**os.environ, GCS_WAIT_ENV: os.environ.get(GCS_WAIT_ENV, str(START_WAIT_S))}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=840, cwd=REPO, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    saved = json.loads((tmp_path / "reports" / "bench_tiny.json").read_text())
    results = saved["results"]
    assert list(results) == ["validator-only", "tiered+cache"] and saved["failed_modes"] == {}
    for mode, res in results.items():
        assert res["requests"] == res["ok"] == 3 and res["errors"] == 0, (mode, res["records"])
        assert sum(res["route_mix"].values()) == 3
        assert res["validator_cpu_s"] is not None and res["validator_cpu_s"] > 0  # the real Validator's processes
        for r in res["records"]:
            assert 0 < r["ttft_s"] <= r["e2e_s"], r
            assert r["text"] and r["tier"] in {"cache", "scout", "validator"}
    assert results["validator-only"]["route_mix"] == {"validator": 3}
    assert results["validator-only"]["validator_tokens"] > 0
    rows = {r["mode"]: r for r in saved["rows"]}
    assert rows["validator-only"]["fidelity"] == 1.0 and rows["validator-only"]["equivalent"] == 1.0
    # The judge loaded (the cache's embedder) and never judges below what is identical.
    assert rows["tiered+cache"]["fidelity"] <= rows["tiered+cache"]["equivalent"] <= 1.0
    text = docs.read_text()
    assert "### Profile `tiny`" in text and "| judged equivalent |" in text
    assert "| `gpu-a100x4` | all | not measured |" in text
    for kind in ("latency", "routes", "savings"):
        assert (tmp_path / "docs" / "img" / f"bench_tiny_{kind}.png").stat().st_size > 1000
