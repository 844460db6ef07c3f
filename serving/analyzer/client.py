"""`ServeRequestAnalyzer`: the ingress's side of the RequestAnalyzer deployment."""

from __future__ import annotations

from typing import Any

from serving.analyzer.plan import RoutePlan
from serving.engines.base import GenerationRequest


class ServeRequestAnalyzer:
    """Plans requests through the RequestAnalyzer deployment's handle (same call as `RequestAnalyzer.analyze`).

    Failures and timeouts are the caller's business: the router takes the default path.
    """

    def __init__(self, handle: Any) -> None:
        self._handle = handle

    async def analyze(self, request: GenerationRequest, *, model: str = "auto", priority: str | None = None
                      ) -> RoutePlan:
        return await self._handle.analyze.remote(request, model, priority)
