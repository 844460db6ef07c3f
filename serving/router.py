"""The request path: Scout first, Validator when the Scout is not sure.

One decision per stage, each recorded in the `RouteTrace` returned with the answer:

* ``scout`` stage — the Scout answers with token logprobs; its confidence (see
  `serving.confidence`) is compared with the threshold: ``confident`` returns the
  Scout's answer, ``escalate`` hands over to the Validator. A Scout that fails or
  times out also escalates (``failed``): the Validator can still answer.
* ``validator`` stage — the Validator answers (``answered``).

A client may force a tier with ``model: scout`` / ``model: validator``; the stage then
records ``forced``. Errors carry the trace so far (`exc.route`).

Streaming: the Validator streams token by token. The Scout's answer has to be complete
before its confidence is known, so on the Scout path the first token arrives when the
whole Scout answer is ready (then it is replayed token by token): the Scout path trades
time-to-first-token for a much shorter end-to-end time on small models.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace

from serving.api import RouteTrace
from serving.confidence import confidence, describe
from serving.config import TieringConfig
from serving.engines.base import Generation, GenerationChunk, GenerationRequest, LLMEngine
from serving.errors import EngineTimeoutError, InferenceOptimizerError, RequestError, ServiceError
from serving.metrics import Metrics


@dataclass
class Routed:
    """A finished answer and how it was produced."""

    generation: Generation
    trace: RouteTrace


@dataclass
class RoutedStream:
    """A streamed answer: the decision is known (so headers can be sent) before the first chunk."""

    chunks: AsyncIterator[GenerationChunk]
    trace: RouteTrace
    model: str


class TieredRouter:
    """Decides, per request, whether the Scout's answer is returned or the Validator is asked."""

    def __init__(
        self,
        scout: LLMEngine,
        validator: LLMEngine,
        tiering: TieringConfig,
        *,
        scout_timeout_s: float = 300.0,
        validator_timeout_s: float = 300.0,
        metrics: Metrics | None = None,
    ) -> None:
        self.scout = scout
        self.validator = validator
        self.tiering = tiering
        self.scout_timeout_s = scout_timeout_s
        self.validator_timeout_s = validator_timeout_s
        self.metrics = metrics or Metrics()

    # -- public ---------------------------------------------------------------------------

    async def complete(
        self, request: GenerationRequest, model: str = "auto", threshold: float | None = None
    ) -> Routed:
        """Answer `request`, choosing the tier by `model` ('auto', 'scout', 'validator')."""
        trace = self._new_trace(model, threshold)
        started = time.perf_counter()
        try:
            gen = await self._scout_stage(request, model, trace)
            if gen is None:
                gen = await self._validator_complete(request, model, trace)
            elif not request.logprobs:
                gen = replace(gen, tokens=None)
        except InferenceOptimizerError as exc:
            exc.route = self._finish(trace, started)
            raise
        self._finish(trace, started)
        return Routed(gen, trace)

    async def open_stream(
        self, request: GenerationRequest, model: str = "auto", threshold: float | None = None
    ) -> RoutedStream:
        """Decide the tier (running the Scout if needed), then return the chunks to send."""
        trace = self._new_trace(model, threshold)
        started = time.perf_counter()
        try:
            gen = await self._scout_stage(request, model, trace)
        except InferenceOptimizerError as exc:
            exc.route = self._finish(trace, started)
            raise
        if gen is not None:
            self._finish(trace, started)
            return RoutedStream(_replay(gen, request.logprobs), trace, self.scout.model_id)
        # Decided now, not when the generator first runs: the header is sent before any chunk.
        trace.tier, trace.reason = "validator", self._validator_reason(model, trace)
        return RoutedStream(
            self._validator_stream(request, trace, started), trace, self.validator.model_id
        )

    # -- stages ---------------------------------------------------------------------------

    def _new_trace(self, model: str, threshold: float | None) -> RouteTrace:
        return RouteTrace(
            requested_model=model,
            threshold=self.tiering.threshold if threshold is None else threshold,
            confidence_method=describe(self.tiering.confidence),
        )

    def _uses_scout(self, model: str) -> bool:
        return model == "scout" or (model == "auto" and self.tiering.enabled)

    async def _scout_stage(self, request: GenerationRequest, model: str, trace: RouteTrace) -> Generation | None:
        """Run the Scout when the route includes it; return its answer when it is to be served."""
        if not self._uses_scout(model):
            return None
        forced = model == "scout"
        # The Scout always returns token logprobs: they are what confidence is made of.
        scout_req = replace(request, logprobs=True)
        t0 = time.perf_counter()
        try:
            gen = await self._call(self.scout, scout_req, self.scout_timeout_s)
        except RequestError:
            raise
        except ServiceError as exc:
            self._record(trace, "scout", "failed", t0, error=exc.message)
            if forced:
                raise
            return None
        score = confidence([t.logprob for t in gen.tokens or []], self.tiering.confidence)
        trace.confidence = round(score, 6)
        self.metrics.confidence(score)
        self.metrics.tokens("scout", gen.usage.prompt_tokens, gen.usage.completion_tokens)
        decision = "forced" if forced else "confident" if score >= (trace.threshold or 0.0) else "escalate"
        self._record(
            trace, "scout", decision, t0, confidence=trace.confidence, tokens=gen.usage.completion_tokens,
            finish_reason=gen.finish_reason,
        )
        if decision == "escalate":
            return None
        trace.tier, trace.reason = "scout", decision
        return gen

    def _validator_reason(self, model: str, trace: RouteTrace) -> str:
        if model == "validator":
            return "forced"
        if not trace.stages:
            return "tiering_disabled"
        return "scout_failed" if trace.stages[-1].decision == "failed" else "escalated"

    async def _validator_complete(self, request: GenerationRequest, model: str, trace: RouteTrace) -> Generation:
        reason = self._validator_reason(model, trace)
        t0 = time.perf_counter()
        try:
            gen = await self._call(self.validator, request, self.validator_timeout_s)
        except ServiceError as exc:
            self._record(trace, "validator", "failed", t0, error=exc.message)
            raise
        self._record(trace, "validator", "answered", t0, tokens=gen.usage.completion_tokens,
                     finish_reason=gen.finish_reason)
        self.metrics.tokens("validator", gen.usage.prompt_tokens, gen.usage.completion_tokens)
        trace.tier, trace.reason = "validator", reason
        return gen

    async def _validator_stream(
        self, request: GenerationRequest, trace: RouteTrace, started: float
    ) -> AsyncIterator[GenerationChunk]:
        t0 = time.perf_counter()
        tokens = 0
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.validator_timeout_s
        chunks = self.validator.stream(request)
        try:
            while True:
                # A deadline per chunk rather than a timeout scope around `yield`: the scope
                # would cancel whatever the consumer is doing between chunks.
                try:
                    chunk = await asyncio.wait_for(anext(chunks), max(deadline - loop.time(), 0.001))
                except StopAsyncIteration:
                    break
                if chunk.usage is not None:
                    tokens = chunk.usage.completion_tokens
                    self.metrics.tokens("validator", chunk.usage.prompt_tokens, tokens)
                yield chunk
        except TimeoutError:
            exc = EngineTimeoutError(f"{self.validator.model_id} did not finish within {self.validator_timeout_s:g} s")
            self._record(trace, "validator", "failed", t0, error=exc.message)
            exc.route = self._finish(trace, started)
            raise exc from None
        except InferenceOptimizerError as exc:
            self._record(trace, "validator", "failed", t0, error=exc.message)
            exc.route = self._finish(trace, started)
            raise
        finally:
            if hasattr(chunks, "aclose"):
                await chunks.aclose()
        self._record(trace, "validator", "answered", t0, tokens=tokens)
        self._finish(trace, started)

    def _record(self, trace: RouteTrace, stage: str, decision: str, started: float, **detail: object) -> None:
        """One stage's decision: into the route trace and the metrics, always both."""
        rec = trace.add(stage, decision, started, **detail)
        self.metrics.stage(stage, decision, rec.latency_ms)

    async def _call(self, engine: LLMEngine, request: GenerationRequest, timeout_s: float) -> Generation:
        try:
            return await asyncio.wait_for(engine.generate(request), timeout_s)
        except TimeoutError:
            raise EngineTimeoutError(f"{engine.model_id} did not answer within {timeout_s:g} s") from None

    @staticmethod
    def _finish(trace: RouteTrace, started: float) -> RouteTrace:
        trace.total_ms = round((time.perf_counter() - started) * 1000, 3)
        return trace


async def _replay(gen: Generation, with_logprobs: bool) -> AsyncIterator[GenerationChunk]:
    """Replay a finished answer as chunks, one per token when the tokens spell the text."""
    tokens = gen.tokens or []
    if tokens and "".join(t.token for t in tokens) == gen.text:
        for t in tokens:
            yield GenerationChunk(text=t.token, tokens=[t] if with_logprobs else None)
    elif gen.text:
        yield GenerationChunk(text=gen.text, tokens=tokens if with_logprobs else None)
    yield GenerationChunk(finish_reason=gen.finish_reason, usage=gen.usage)
