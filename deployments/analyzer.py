"""The RequestAnalyzer deployment: one `RequestAnalyzer`, requests analyzed in batches (`@serve.batch`)."""

from __future__ import annotations

from typing import Any

from ray import serve
from ray.serve import Application

from serving.analyzer import AnalysisInput, HFTokenCounter, RequestAnalyzer, RoutePlan
from serving.cache.embedder import ServeEmbedder
from serving.config import AppConfig
from serving.config.engine import replica_options
from serving.engines.base import GenerationRequest
from serving.load.batching import AdaptiveBatching
from serving.metrics import ServeMetrics


@serve.deployment(name="RequestAnalyzer")
class RequestAnalyzerDeployment:
    """Plans requests (`RoutePlan`); concurrent calls share one embedding round-trip and one scoring pass.

    The batch size and wait adapt to the arrival rate like the Embedder's; the configured
    `analyzer.max_batch_size` / `analyzer.batch_wait_timeout_s` are their ceilings.
    """

    def __init__(self, embedder: Any, config: AppConfig) -> None:
        cfg = config.analyzer
        tokens = HFTokenCounter(config.resolve_model(cfg.tokenizer or config.validator.model))
        _ = tokens.tokenizer  # load now, not on the first request
        self.analyzer = RequestAnalyzer(cfg, ServeEmbedder(embedder, config.cache.embedder.dimension), tokens)
        self.metrics = ServeMetrics()
        self.batching = AdaptiveBatching(
            self._analyze_batch, cfg.max_batch_size, cfg.batch_wait_timeout_s, cfg.batching,
            on_change=lambda p: self.metrics.batch_params("RequestAnalyzer", p.max_batch_size,
                                                          p.batch_wait_timeout_s),
        )

    async def analyze(self, request: GenerationRequest, model: str = "auto", priority: str | None = None) -> RoutePlan:
        """The plan of one request; `priority` is the class from `serving.priority.resolve_priority`."""
        self.batching.on_request()
        plan = await self._analyze_batch(AnalysisInput(request, model, priority))
        self.metrics.plan(plan.strategy, plan.priority, plan.complexity)
        return plan

    async def batching_state(self) -> dict[str, float]:
        """Measured arrival rate and the batch parameters in force (for dashboards and tests)."""
        return self.batching.state()

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.005)
    async def _analyze_batch(self, items: list[AnalysisInput]) -> list[RoutePlan]:
        return await self.analyzer.analyze_many(items)


def build_analyzer(config: AppConfig, embedder: Application) -> Application | None:
    """The bound RequestAnalyzer over an Embedder deployment, or None when `analyzer.enabled` is false."""
    if not config.analyzer.enabled:
        return None
    cfg = config.analyzer
    options: dict[str, Any] = {"num_cpus": cfg.num_cpus}
    if cfg.resources:
        options["resources"] = dict(cfg.resources)
    return RequestAnalyzerDeployment.options(
        **replica_options(cfg.num_replicas, cfg.autoscaling),
        max_ongoing_requests=max(64, 2 * cfg.max_batch_size),
        max_queued_requests=cfg.max_queued_requests,
        ray_actor_options=options,
    ).bind(embedder, config)
