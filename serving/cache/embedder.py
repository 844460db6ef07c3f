"""Sentence embeddings for the semantic cache.

`Embedder` is the interface the cache needs: texts in, unit-length vectors out (so cosine
similarity is a dot product). `SentenceTransformerEmbedder` runs a sentence-transformers
model in this process (the `Embedder` deployment holds one); `serving.handles.ServeEmbedder` is
the client side of that deployment. Tests use fakes that subclass `Embedder`.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod


class Embedder(ABC):
    """Turns texts into normalised embedding vectors."""

    dimension: int

    @abstractmethod
    async def embed(self, texts: list[str]) -> list[list[float]]:
        """One unit-length vector per text, in order."""


class SentenceTransformerEmbedder(Embedder):
    """A sentence-transformers model loaded from a folder (or a hub ID on clusters).

    torch is imported here, not at module import; `encode` runs in a worker thread so the
    event loop keeps serving while a batch is embedded.
    """

    def __init__(self, model: str, *, device: str = "cpu", torch_threads: int | None = None) -> None:
        import torch
        from sentence_transformers import SentenceTransformer

        if torch_threads:
            torch.set_num_threads(torch_threads)
        self.model_name = model
        self._model = SentenceTransformer(model, device=device)
        self.dimension = int(self._model.get_embedding_dimension())

    def embed_sync(self, texts: list[str], batch_size: int = 64) -> list[list[float]]:
        """Embed in the calling thread (scripts and batch jobs)."""
        vectors = self._model.encode(texts, batch_size=batch_size, normalize_embeddings=True,
                                     convert_to_numpy=True, show_progress_bar=False)
        return vectors.tolist()

    async def embed(self, texts: list[str]) -> list[list[float]]:
        return await asyncio.to_thread(self.embed_sync, texts)
