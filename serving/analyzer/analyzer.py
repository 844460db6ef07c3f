"""The request analyzer: profile, complexity, priority and strategy of each request.

`RequestAnalyzer` is pure apart from its injected parts: an `Embedder` (the Embedder
deployment's client in production), a `TokenCounter` (the Validator's tokenizer) and a
`ComplexityModel` (the trained artifact). It never fails a request: when the embedder is
down or slower than `analyzer.timeout_s`, the plan has no complexity, says why, and keeps
the default path (``scout_first``).
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from serving.analyzer.complexity import ComplexityModel
from serving.analyzer.plan import RoutePlan, Strategy
from serving.analyzer.profile import RequestProfile, TokenCounter, profile_request
from serving.cache.embedder import Embedder
from serving.config import AnalyzerConfig, PriorityConfig
from serving.engines.base import GenerationRequest
from serving.policy.cache import embedded_question


@dataclass
class AnalysisInput:
    """One request to analyze. `priority` is the resolved class (see `serving.priority.resolve_priority`)."""

    request: GenerationRequest
    model: str = "auto"
    priority: str | None = None


class Analyzer(ABC):
    """What plans a request before the cache: the analyzer stage's one dependency."""

    @abstractmethod
    async def analyze(
        self, request: GenerationRequest, *, model: str = "auto", priority: str | None = None
    ) -> RoutePlan:
        """The plan of one request; `priority` is its resolved class (None: the default)."""


class RequestAnalyzer(Analyzer):
    """Turns requests into `RoutePlan`s; batches of requests share one embedder call and one matrix product.

    It runs inside the Ingress; only the embedding crosses a Ray hop (to the Embedder
    deployment, whose `@serve.batch` joins concurrent requests' texts).
    """

    def __init__(
        self,
        config: AnalyzerConfig,
        embedder: Embedder,
        tokens: TokenCounter | None,
        model: ComplexityModel | None = None,
        *,
        priority: PriorityConfig | None = None,
    ) -> None:
        self.config = config
        # The classes' vLLM priorities (the `priority` section; a request's class is resolved before analysis).
        self.priority = priority or PriorityConfig()
        self.embedder = embedder
        self.tokens = tokens
        self.model = model or ComplexityModel.load(config.artifact)
        if embedder.dimension != self.model.embedding_dim:
            raise ValueError(f"the embedder makes {embedder.dimension}-d vectors; the complexity model "
                             f"{self.model.version} was trained on {self.model.embedding_dim}-d ones")

    async def analyze(
        self, request: GenerationRequest, *, model: str = "auto", priority: str | None = None
    ) -> RoutePlan:
        """The plan of one request."""
        return (await self.analyze_many([AnalysisInput(request, model, priority)]))[0]

    async def analyze_many(self, items: Sequence[AnalysisInput]) -> list[RoutePlan]:
        """Plans of a batch: one embedding call for all questions, then one scoring pass."""
        profiles = [self.profile(i.request) for i in items]
        texts = [embedded_question(i.request) for i in items]
        embeddings: np.ndarray | None = None
        error: str | None = None
        try:
            vectors = await asyncio.wait_for(self.embedder.embed(texts), self.config.timeout_s)
            embeddings = np.asarray(vectors, dtype=np.float64)
        except TimeoutError:
            error = f"embedder took longer than {self.config.timeout_s:g} s"
        except Exception as exc:  # the analysis is advice: any failure leaves the default path
            error = f"{type(exc).__name__}: {exc}"[:300]
        plans = self.plans(items, profiles, embeddings, error)
        if embeddings is not None:
            for plan, vector in zip(plans, embeddings.tolist(), strict=True):
                plan.embedding = vector
        return plans

    def profile(self, request: GenerationRequest) -> RequestProfile:
        """The request's profile with the engine's token count."""
        return profile_request(request, self.tokens, self.config.expected_output_tokens)

    def plans(
        self,
        items: Sequence[AnalysisInput],
        profiles: Sequence[RequestProfile],
        embeddings: np.ndarray | None,
        error: str | None = None,
    ) -> list[RoutePlan]:
        """Plans from profiles and question embeddings (pure; `embeddings` None when the embedder failed)."""
        scores: list[float | None] = [None] * len(items)
        if embeddings is not None and len(items):
            scores = [float(s) for s in self.model.score(profiles, embeddings)]
        return [self._plan(i, p, s, error) for i, p, s in zip(items, profiles, scores, strict=True)]

    def _plan(self, item: AnalysisInput, profile: RequestProfile, score: float | None, error: str | None) -> RoutePlan:
        cfg = self.config
        classes = self.priority.classes
        priority = item.priority or self.priority.default_priority
        strategy: Strategy
        if item.model != "auto":
            strategy = "forced"
        elif score is not None and score >= cfg.direct_threshold:
            strategy = "validator_direct"
        else:
            strategy = "scout_first"
        return RoutePlan(
            profile=profile,
            complexity=score,
            threshold=cfg.direct_threshold,
            strategy=strategy,
            priority=priority,
            vllm_priority=classes.get(priority, classes[self.priority.default_priority]),
            max_tokens=min(item.request.max_tokens, profile.expected_output_tokens),
            model_version=self.model.version,
            error=error,
        )
