"""`ServeEmbedder`: the client side of the `Embedder` deployment."""

from __future__ import annotations

import asyncio
from typing import Any

from serving.cache.embedder import Embedder


class ServeEmbedder(Embedder):
    """One handle call per text; the deployment's `@serve.batch` joins concurrent calls into one batch."""

    def __init__(self, handle: Any, dimension: int) -> None:
        self._handle = handle
        self.dimension = dimension

    async def embed(self, texts: list[str]) -> list[list[float]]:
        return list(await asyncio.gather(*(self._handle.embed.remote(t) for t in texts)))
