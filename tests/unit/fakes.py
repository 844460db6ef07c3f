"""Fakes of the engine and embedder interfaces (they subclass the real ABCs)."""

from __future__ import annotations

import asyncio
import hashlib
import math
import re
from collections.abc import AsyncIterator

from serving.cache.embedder import Embedder
from serving.engines.base import Generation, GenerationChunk, GenerationRequest, LLMEngine, TokenLogprob, Usage
from serving.errors import EngineUnavailableError


class FakeEngine(LLMEngine):
    """Answers every request with the same tokens and logprobs; records what it was asked."""

    def __init__(self, model_id: str, tokens: list[str], logprobs: list[float] | None = None,
                 delay_s: float = 0.0, fail: bool = False) -> None:
        self.model_id = model_id
        self.tokens = tokens
        self.logprobs = logprobs if logprobs is not None else [-0.01] * len(tokens)
        self.delay_s = delay_s
        self.fail = fail
        self.requests: list[GenerationRequest] = []

    def _token_logprobs(self) -> list[TokenLogprob]:
        return [TokenLogprob(t, lp) for t, lp in zip(self.tokens, self.logprobs, strict=True)]

    async def generate(self, request: GenerationRequest) -> Generation:
        self.requests.append(request)
        await asyncio.sleep(self.delay_s)
        if self.fail:
            raise EngineUnavailableError(f"{self.model_id} is down")
        toks = self.tokens[: request.max_tokens]
        choices = [Generation(
            text="".join(toks) + (f" ({i})" if i else ""),  # choice i > 0 of n is told apart by its suffix
            finish_reason="length" if len(self.tokens) > request.max_tokens else "stop",
            tokens=self._token_logprobs()[: request.max_tokens] if request.logprobs else None,
            model=self.model_id,
        ) for i in range(request.n)]
        choices[0].usage = Usage(prompt_tokens=5, completion_tokens=len(toks) * request.n)  # vLLM: all choices'
        choices[0].alternatives = choices[1:]
        return choices[0]

    async def stream(self, request: GenerationRequest) -> AsyncIterator[GenerationChunk]:
        self.requests.append(request)
        if self.fail:
            raise EngineUnavailableError(f"{self.model_id} is down")
        toks = self.tokens[: request.max_tokens]
        for t in toks:
            await asyncio.sleep(self.delay_s)
            for i in range(request.n):  # the choices interleaved, as vLLM streams them
                yield GenerationChunk(text=t, index=i)
        for i in range(request.n):
            if i:
                yield GenerationChunk(text=f" ({i})", index=i)
            yield GenerationChunk(finish_reason="stop", index=i)
        yield GenerationChunk(usage=Usage(prompt_tokens=5, completion_tokens=len(toks) * request.n))

    async def check_health(self) -> None:
        if self.fail:
            raise EngineUnavailableError(f"{self.model_id} is down")


class FakeEmbedder(Embedder):
    """Bag-of-words vectors (hashed, unit length): shared words make texts similar.

    Good enough to exercise the cache's logic; the real model's judgement of paraphrases is
    tested with the real model.
    """

    dimension = 64

    def __init__(self, fail: bool = False, delay_s: float = 0.0) -> None:
        self.fail = fail
        self.delay_s = delay_s
        self.calls = 0

    @staticmethod
    def vector(text: str) -> list[float]:
        v = [0.0] * FakeEmbedder.dimension
        for w in re.findall(r"\w+", text.lower()):
            v[int(hashlib.md5(w.encode()).hexdigest(), 16) % FakeEmbedder.dimension] += 1.0
        norm = math.sqrt(sum(x * x for x in v)) or 1.0
        return [x / norm for x in v]

    async def embed(self, texts: list[str]) -> list[list[float]]:
        self.calls += 1
        await asyncio.sleep(self.delay_s)
        if self.fail:
            raise ConnectionError("embedder is down")
        return [self.vector(t) for t in texts]


class FakeClock:
    """A clock tests move by hand."""

    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class BindRecorder:
    """Stands in for a Serve deployment class in `deployments.app` builders: records each `.bind()`'s arguments."""

    def __init__(self) -> None:
        self.binds: list[tuple[tuple, dict]] = []

    def options(self, **_) -> BindRecorder:
        return self

    def bind(self, *args, **kwargs) -> str:
        self.binds.append((args, kwargs))
        return "bound-app"
