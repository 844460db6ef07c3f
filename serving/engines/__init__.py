"""Engines' client side: the `LLMEngine` interface and its Ray Serve LLM implementation."""

from serving.engines.base import (
    Generation,
    GenerationChunk,
    GenerationRequest,
    LLMEngine,
    Scored,
    TokenLogprob,
    Usage,
)

__all__ = ["Generation", "GenerationChunk", "GenerationRequest", "LLMEngine", "Scored", "TokenLogprob", "Usage"]
