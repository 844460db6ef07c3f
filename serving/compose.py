"""What the composition root hands the Ingress, and how the Ingress's service is put together from it.

`deployments.app.build_app` builds the parts — the engines, the cache and the embedder as
Ray-handle adapters (`serving.handles`) over bound deployments — and injects them with
`Ingress.bind(Parts(...))`, the way `ray.serve.llm` injects its engine: Ray Serve replaces
every bound deployment inside the parts with its handle in the replica. Tests inject fakes
that subclass the same interfaces.
"""

from __future__ import annotations

from dataclasses import dataclass

from serving.cache.embedder import Embedder
from serving.cache.semantic import ResponseCache
from serving.config import AppConfig
from serving.engines.base import LLMEngine
from serving.metrics import Metrics
from serving.pipeline import Pipeline, pipeline_from_config
from serving.service import OpenAIService
from serving.tenancy import Tenancy, TenantMeter


@dataclass
class Parts:
    """The Ingress's dependencies."""

    config: AppConfig
    scout: LLMEngine
    validator: LLMEngine
    cache: ResponseCache | None = None
    # What the request analyzer (it runs in the Ingress: only the embedding crosses a hop) and the audit's
    # judge embed with.
    embedder: Embedder | None = None


def build_service(parts: Parts, metrics: Metrics | None = None) -> OpenAIService:
    """The OpenAI service over the pipeline `parts.config` describes (the analyzer's tokenizer loads here)."""
    config = parts.config
    analyzer = None
    if config.analyzer.enabled and parts.embedder is not None:
        from serving.analyzer import HFTokenCounter, RequestAnalyzer

        tokens = HFTokenCounter(config.resolve_model(config.analyzer.tokenizer or config.validator.model))
        _ = tokens.tokenizer  # load now, not on the first request
        analyzer = RequestAnalyzer(config.analyzer, parts.embedder, tokens, priority=config.priority)
    pipeline: Pipeline = pipeline_from_config(config, parts.scout, parts.validator, cache=parts.cache,
                                              analyzer=analyzer, metrics=metrics, embedder=parts.embedder)
    tenancy = Tenancy(config.auth, config.priority)
    pipeline.observers.append(TenantMeter(tenancy))
    return OpenAIService(pipeline, config.api, parts.scout, parts.validator, tenancy)
