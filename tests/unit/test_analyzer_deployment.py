"""The RequestAnalyzer deployment is built from the config (no Ray started)."""

from __future__ import annotations

import pytest

from serving.config import AppConfig

BASE = {"scout": {"model": "a"}, "validator": {"model": "b"}}


def test_build_analyzer_follows_the_config():
    pytest.importorskip("ray.serve")
    from deployments.analyzer import RequestAnalyzerDeployment, build_analyzer

    assert build_analyzer(AppConfig(**BASE), embedder=None) is None
    cfg = AppConfig(**BASE, analyzer={"enabled": True, "num_cpus": 0.05, "max_batch_size": 8})
    app = build_analyzer(cfg, embedder="embedder-app")
    deployment = app._bound_deployment
    assert deployment.name == "RequestAnalyzer"
    assert deployment.ray_actor_options["num_cpus"] == 0.05
    assert deployment.max_ongoing_requests >= 2 * 8
    assert hasattr(RequestAnalyzerDeployment.func_or_class, "analyze")


def test_embedder_entry_point_measures_arrivals_before_batching():
    pytest.importorskip("ray.serve")
    from deployments.cache import Embedder

    cls = Embedder.func_or_class
    # One text per call on the handle's entry point; the batched method is separate so each
    # arrival is counted before it joins a batch.
    assert {"embed", "_embed_batch", "batching_state"} <= set(dir(cls))
