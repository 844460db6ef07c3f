"""The analyzer's decision for one request: the `RoutePlan`, recorded in the route trace."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from serving.analyzer.profile import RequestProfile

Strategy = Literal["scout_first", "validator_direct", "forced"]


class RoutePlan(BaseModel):
    """How one request should be served, decided before the cache (JSON-serialisable).

    The cache always comes first; `strategy` says what happens on a miss: ``scout_first``
    (the Scout answers, the Validator takes over when it is unsure), ``validator_direct``
    (the Scout is predicted to fail: skip it) or ``forced`` (the client named a tier).
    """

    profile: RequestProfile = Field(description="Cheap facts about the request.")
    complexity: float | None = Field(
        description="P(the Scout is not good enough), or None when it could not be estimated."
    )
    threshold: float = Field(description="Complexity at or above which an 'auto' request goes validator_direct.")
    strategy: Strategy = Field(description="What the request path does after a cache miss.")
    priority: str = Field(description="Priority class, e.g. 'interactive' or 'batch'.")
    vllm_priority: int = Field(description="The class's vLLM priority (lower is scheduled first).")
    max_tokens: int = Field(description="Predicted answer length in tokens, for resource planning.")
    model_version: str | None = Field(description="Version of the complexity model that scored the request.")
    error: str | None = Field(None, description="Why the complexity is missing (embedder down or slow).")
    # Handed on, not recorded: the cache's semantic lookup reuses the analyzer's embedding of the
    # same question instead of embedding it again (one Embedder round-trip per request, not two).
    embedding: list[float] | None = Field(
        None, description="The request's `embedded_question` embedded by the shared Embedder; None when it failed."
    )

    def trace_detail(self) -> dict[str, Any]:
        """A compact form for `StageRecord.detail` of the ``analyzer`` stage."""
        p = self.profile
        detail: dict[str, Any] = {
            "complexity": None if self.complexity is None else round(self.complexity, 4),
            "threshold": self.threshold,
            "priority": self.priority,
            "task": p.task,
            "prompt_tokens": p.prompt_tokens,
            "turns": p.turns,
            "predicted_max_tokens": self.max_tokens,
            "model_version": self.model_version,
            "signals": [s for s in ("code", "math", "reasoning", "short_answer") if getattr(p, s)],
        }
        if self.error:
            detail["error"] = self.error
        return detail
