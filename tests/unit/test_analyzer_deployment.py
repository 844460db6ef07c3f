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


def test_the_analyzer_deployment_batches_and_its_batch_follows_the_arrival_rate(monkeypatch):
    """The deployment's own `@serve.batch` (Ray's, run without a cluster): concurrent plans share one
    embedding call, and the batch wait Ray applies follows the measured arrival rate."""
    pytest.importorskip("ray.serve")
    import asyncio
    from types import SimpleNamespace

    from ray import serve

    # Ray's batch queue reads the replica's max_ongoing_requests (to warn); there is no replica here.
    monkeypatch.setattr(serve, "get_replica_context",
                        lambda: SimpleNamespace(_deployment_config=SimpleNamespace(max_ongoing_requests=64)))

    from deployments.analyzer import RequestAnalyzerDeployment
    from serving.analyzer import RequestAnalyzer
    from serving.config import AdaptiveBatchingConfig, AnalyzerConfig
    from serving.engines.base import GenerationRequest
    from serving.load.batching import AdaptiveBatching
    from serving.metrics import Metrics
    from tests.unit.fakes import FakeEmbedder
    from tests.unit.test_analyzer import WordCounter, _toy_model

    class Recording(Metrics):
        def __init__(self) -> None:
            self.params: list[tuple[int, float]] = []
            self.plans: list[str] = []

        def batch_params(self, deployment: str, max_batch_size: int, batch_wait_timeout_s: float) -> None:
            self.params.append((max_batch_size, batch_wait_timeout_s))

        def plan(self, strategy: str, priority: str, complexity: float | None) -> None:
            self.plans.append(strategy)

    class Ticking:
        """A clock that moves `step` seconds at every reading: one reading per arrival."""

        def __init__(self) -> None:
            self.now, self.step = 0.0, 0.5

        def __call__(self) -> float:
            self.now += self.step
            return self.now

    clock, embedder, metrics = Ticking(), FakeEmbedder(), Recording()
    dep = object.__new__(RequestAnalyzerDeployment.func_or_class)  # its __init__ loads a real tokenizer
    dep.analyzer = RequestAnalyzer(AnalyzerConfig(), embedder, WordCounter(), _toy_model())
    dep.metrics = metrics
    dep.batching = AdaptiveBatching(
        dep._analyze_batch, 16, 0.05, AdaptiveBatchingConfig(halflife_s=0.5, update_interval_s=0.1), clock=clock,
        on_change=lambda p: metrics.batch_params("RequestAnalyzer", p.max_batch_size, p.batch_wait_timeout_s))
    batch = dep._analyze_batch
    request = GenerationRequest(messages=[{"role": "user", "content": "What is 2 + 2?"}], temperature=0)

    async def go() -> tuple[float, float, int]:
        for _ in range(8):  # 2 requests/s: nobody else is coming, so no wait
            await dep.analyze(request)
        low = batch._get_batch_wait_timeout_s()
        clock.step = 0.001  # 1000 requests/s
        for _ in range(300):
            dep.batching.on_request()
        high = batch._get_batch_wait_timeout_s()
        before = embedder.calls
        plans = await asyncio.gather(*(dep.analyze(request) for _ in range(16)))
        assert len(plans) == 16 and all(p.complexity is not None for p in plans)
        return low, high, embedder.calls - before

    # Ray keeps the batch queue on the decorated function (one per class): put it back as it was,
    # or the class can no longer be pickled into a deployment by later tests.
    lazy = batch._get_max_batch_size.__self__
    saved = (lazy.max_batch_size, lazy.batch_wait_timeout_s)
    try:
        low, high, calls = asyncio.run(go())
        applied = (batch._get_max_batch_size(), batch._get_batch_wait_timeout_s())
    finally:
        lazy._queue = None
        lazy.max_batch_size, lazy.batch_wait_timeout_s = saved
    assert low == 0.0
    assert 0 < high <= 0.05 and applied[0] == 16
    # What Ray applied is what the controller chose last, and what was exported.
    assert applied == metrics.params[-1]
    assert dep.batching.controller.params.batch_wait_timeout_s == applied[1] > 0
    assert calls <= 2  # 16 concurrent plans, one or two embedding round-trips
    assert len(metrics.plans) == 24
