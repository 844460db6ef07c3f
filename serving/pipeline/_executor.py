"""The executor: runs the stages in order and produces one chunk stream per request.

    analyzer -> cache -> [flight: identical requests share it] -> priority slot -> strategy -> scout -> validator
             -> (answer streamed) -> admission

A stage that answers (a cache hit, a kept Scout answer, the Validator) ends the deciding;
its chunks are the response. A streamed response sends them as they come; a non-streamed
one collects them (`complete`). Both take the same path: one priority slot per
computation, one coalescing path, one timeout-and-fallback path (the Validator stage's),
one admission path.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from serving.api import CacheControl, RouteTrace, StrategySpec
from serving.cache.keys import cache_key, digest
from serving.confidence import describe
from serving.config import CacheConfig
from serving.engines.base import Generation, GenerationChunk, GenerationRequest
from serving.errors import InferenceOptimizerError
from serving.metrics import Metrics
from serving.pipeline._decisions import CoalescedDecision, Reason, Route, StageName
from serving.pipeline._flights import Flight, Flights
from serving.pipeline._stage import Observer, Stage, assemble
from serving.pipeline._state import RequestState
from serving.policy import cache as cache_policy
from serving.priority import Priority, PriorityGate

if TYPE_CHECKING:
    from serving.policy.escalation import EscalationPolicy


logger = logging.getLogger(__name__)


@dataclass
class Routed:
    """A finished answer and how it was produced."""

    generation: Generation
    trace: RouteTrace


class RoutedStream:
    """An answer being produced: its route is decided (so headers can be sent) before the first chunk."""

    def __init__(self, chunks: AsyncIterator[GenerationChunk], state: RequestState) -> None:
        self.chunks = chunks
        self.state = state

    @property
    def trace(self) -> RouteTrace:
        """The route so far; complete once `chunks` is exhausted."""
        return self.state.trace()

    @property
    def model(self) -> str:
        """The engine model answering."""
        return self.state.model


class Pipeline:
    """The request path: `front` stages (analyzer, cache), then the generating stages (Scout, Validator)
    inside a flight and a priority slot, then `admission`."""

    def __init__(
        self,
        *,
        front: list[Stage],
        generate: list[Stage],
        escalation: EscalationPolicy,
        admission: Stage | None = None,
        flights: Flights | None = None,
        gate: PriorityGate | None = None,
        metrics: Metrics | None = None,
        cache_config: CacheConfig | None = None,
        fingerprint: str = "",
        observers: list[Observer] | None = None,
    ) -> None:
        self.front = front
        self.generate = generate
        self.escalation = escalation
        self.admission = admission
        # Identical requests in flight share one computation (None: each computes its own).
        self.flights = flights
        self._private = Flights()  # flights nobody joins
        # Where we queue engine work: interactive before batch (None: no limit of our own).
        self.gate = gate
        self.metrics = metrics or Metrics()
        self.cache_config = cache_config or CacheConfig()
        self.fingerprint = fingerprint
        # After the answer: the cost ledger, the audit (`pipeline_from_config` names them here too).
        self.observers = observers or []
        self.ledger: Any = None
        self.auditor: Any = None

    # -- public ---------------------------------------------------------------------------

    async def complete(
        self, request: GenerationRequest, model: str = "auto", threshold: float | None = None,
        cache: CacheControl | None = None, priority: Priority | None = None, tenant: str | None = None,
        strategy: StrategySpec | None = None,
    ) -> Routed:
        """The whole answer to `request`, routed by `model` ('auto', 'scout', 'validator')."""
        stream = await self._open(request, model, threshold, cache, priority, tenant, strategy, stream=False)
        async with contextlib.aclosing(stream.chunks) as source:  # a caller that goes away stops the work now
            chunks = [chunk async for chunk in source]
        return Routed(assemble(chunks, stream.model), stream.trace)

    async def open_stream(
        self, request: GenerationRequest, model: str = "auto", threshold: float | None = None,
        cache: CacheControl | None = None, priority: Priority | None = None, tenant: str | None = None,
        strategy: StrategySpec | None = None,
    ) -> RoutedStream:
        """The answer to `request` as chunks; returns once the route is decided (at the first chunk)."""
        return await self._open(request, model, threshold, cache, priority, tenant, strategy, stream=True)

    # -- the path -------------------------------------------------------------------------

    async def _open(self, request: GenerationRequest, model: str, threshold: float | None,
                    cache: CacheControl | None, priority: Priority | None, tenant: str | None,
                    strategy: StrategySpec | None = None, *, stream: bool) -> RoutedStream:
        if priority is not None:
            request = replace(request, priority=priority.value)
        state = RequestState(
            request=request, route=Route(model), threshold=self.escalation.threshold(threshold),
            confidence_method=describe(self.escalation.tiering.confidence), cache_control=cache or CacheControl(),
            priority=priority, tenant=tenant, stream=stream, metrics=self.metrics, calibration=self.escalation.version,
            strategy=strategy,
        )
        chunks = self._traced(state, self._chunks(state), self.observers)
        try:
            first = await anext(chunks, None)
        except BaseException:
            await chunks.aclose()
            raise
        return RoutedStream(_prepend(first, chunks), state)

    async def _chunks(self, state: RequestState) -> AsyncIterator[GenerationChunk]:
        for stage in self.front:
            await stage.run(state)
            if state.answer is not None:  # a cache hit
                async with contextlib.aclosing(state.answer) as answer:
                    async for chunk in answer:
                        yield chunk
                return
        key = self._flight_key(state)
        flight = self.flights.live(key) if self.flights is not None else None
        if flight is not None:
            async for chunk in self._follow(state, flight):
                yield chunk
            return
        flights = self.flights if self.flights is not None and key is not None else self._private
        flight = flights.start(key, lambda: self._generate(state))
        flight.leader = state
        async with contextlib.aclosing(flight.subscribe()) as chunks:
            async for chunk in chunks:
                yield chunk

    async def _generate(self, state: RequestState) -> AsyncIterator[GenerationChunk]:
        """The computation of a flight: Scout and/or Validator in our queue, then admission."""
        parts: list[GenerationChunk] = []
        async with self._slot(state):
            for stage in self.generate:
                await stage.run(state)
                if state.answer is not None:
                    break
            assert state.answer is not None, "the last generating stage always answers"
            async with contextlib.aclosing(state.answer) as answer:
                async for chunk in answer:
                    parts.append(chunk)
                    yield chunk
        state.result = assemble(parts, state.model)
        if self.admission is not None:
            await self.admission.run(state)

    async def _follow(self, state: RequestState, flight: Flight) -> AsyncIterator[GenerationChunk]:
        """Read the flight of an identical request: its answer, routed as it was routed."""
        leader: RequestState = flight.leader
        t0 = time.perf_counter()
        self.metrics.coalesced()
        first = True
        try:
            async with contextlib.aclosing(flight.subscribe()) as chunks:
                async for chunk in chunks:
                    if first:  # the leader's route is decided by its first chunk
                        state.tier, state.reason, state.model = leader.tier, Reason.COALESCED, leader.model
                        state.confidence = leader.confidence
                        first = False
                    yield chunk
        except InferenceOptimizerError as exc:
            raise copy.copy(exc) from exc  # the leader's error object carries the leader's route
        state.tier, state.reason, state.model = leader.tier, Reason.COALESCED, leader.model
        state.confidence = leader.confidence
        state.record(StageName.COALESCED, CoalescedDecision.JOINED, t0, tier=leader.tier, leader_reason=leader.reason)

    def _flight_key(self, state: RequestState) -> str | None:
        """What identical in-flight requests share: the exact cache key, for requests the cache policy would
        let share an answer."""
        if self.flights is None or (state.strategy is not None and state.strategy.name != "greedy"):
            return None  # a strategy samples: two identical requests are two draws
        if state.admission is not None:
            return state.admission.key.exact
        if not cache_policy.may_share(state.request):
            return None
        key = state.key or cache_key(
            state.request, model=state.route.value, fingerprint=self.fingerprint,
            namespace=state.cache_control.namespace or self.cache_config.default_namespace)
        return key.exact

    def _slot(self, state: RequestState) -> Any:
        """Our queue for engine work: by priority when a gate is configured."""
        return self.gate.slot(state.request.priority) if self.gate is not None else contextlib.nullcontext()

    @staticmethod
    async def _traced(state: RequestState, chunks: AsyncIterator[GenerationChunk], observers: list[Observer]
                      ) -> AsyncIterator[GenerationChunk]:
        """`chunks`, with the route finished at the end and carried by any error (`exc.route`); a complete
        answer is shown to the observers."""
        sent: list[GenerationChunk] = []
        try:
            async for chunk in chunks:
                if not sent:
                    state.first_chunk()
                sent.append(chunk)
                yield chunk
        except InferenceOptimizerError as exc:
            state.finish()
            exc.route = state.trace()
            raise
        finally:
            await chunks.aclose()  # type: ignore[attr-defined]
        state.finish()
        if state.result is None:  # a cache hit or a coalesced answer: assembled here
            state.result = assemble(sent, state.model)
        for observer in observers:
            try:
                observer.observe(state)
            except Exception:  # an observer's bug must not fail an answered request
                logger.exception("observer %s failed", type(observer).__name__)


def engines_fingerprint(*model_ids: str) -> str:
    """Names the engines behind the routes: answers cached for other engines never match."""
    return digest(list(model_ids))[:16]


async def _prepend(first: GenerationChunk | None, rest: AsyncIterator[GenerationChunk]
                   ) -> AsyncIterator[GenerationChunk]:
    try:
        if first is not None:
            yield first
            async for chunk in rest:
                yield chunk
    finally:
        await rest.aclose()  # type: ignore[attr-defined]
