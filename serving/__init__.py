"""Inference Optimizer's core: everything a request goes through, importable without Ray.

The public names, by where they sit on the path of a request:

* configuration — `AppConfig`, `load_profile` (`serving.config`);
* the API — `ChatCompletionRequest`, `CompletionRequest`, `RouteTrace` (`serving.api`);
  `OpenAIService` (`serving.service`);
* the pipeline — `Pipeline`, `build_pipeline`, `RequestState` and the typed decisions
  (`serving.pipeline`); its policies in `serving.policy.escalation` and `serving.policy.cache`;
* the swappable backends, one ABC each — `LLMEngine` (engines), `ResponseCache` (the
  semantic cache), `Embedder`, `Analyzer`; their Ray-handle adapters live in `serving.handles`;
* errors — `InferenceOptimizerError` and its tree (`serving.errors`, mapped to HTTP in one place).

Names load on first use: importing `serving` costs nothing until one is touched.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "AppConfig": "serving.config",
    "load_profile": "serving.config",
    "ChatCompletionRequest": "serving.api",
    "CompletionRequest": "serving.api",
    "RouteTrace": "serving.api",
    "OpenAIService": "serving.service",
    "Pipeline": "serving.pipeline",
    "RequestState": "serving.pipeline",
    "build_pipeline": "serving.pipeline",
    "LLMEngine": "serving.engines",
    "GenerationRequest": "serving.engines",
    "Generation": "serving.engines",
    "GenerationChunk": "serving.engines",
    "ResponseCache": "serving.cache",
    "Embedder": "serving.cache.embedder",
    "Analyzer": "serving.analyzer",
    "InferenceOptimizerError": "serving.errors",
}

__all__ = [
    "Analyzer",
    "AppConfig",
    "ChatCompletionRequest",
    "CompletionRequest",
    "Embedder",
    "Generation",
    "GenerationChunk",
    "GenerationRequest",
    "InferenceOptimizerError",
    "LLMEngine",
    "OpenAIService",
    "Pipeline",
    "RequestState",
    "ResponseCache",
    "RouteTrace",
    "build_pipeline",
    "load_profile",
]

if TYPE_CHECKING:
    from serving.analyzer import Analyzer
    from serving.api import ChatCompletionRequest, CompletionRequest, RouteTrace
    from serving.cache import ResponseCache
    from serving.cache.embedder import Embedder
    from serving.config import AppConfig, load_profile
    from serving.engines import Generation, GenerationChunk, GenerationRequest, LLMEngine
    from serving.errors import InferenceOptimizerError
    from serving.pipeline import Pipeline, RequestState, build_pipeline
    from serving.service import OpenAIService


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'serving' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return __all__
