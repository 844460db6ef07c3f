"""The Validator stage: the large model answers, or verifies a draft and generates only the rest.

One path for streamed and non-streamed requests: the engine's answer is a chunk source
(its stream, or its whole answer as one chunk), read under one deadline, with one
fallback: a draft that cannot be scored (prompt + draft past the context window, say)
falls back to plain generation before anything was sent. Verification may make an answer
cheaper, never make it fail.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from serving.engines.base import GenerationChunk, LLMEngine, Usage
from serving.errors import EngineTimeoutError, InferenceOptimizerError, RequestError
from serving.pipeline._decisions import StageName, Tier, ValidatorDecision
from serving.pipeline._stage import Stage
from serving.pipeline._state import RequestState
from serving.verify import Draft, DraftOutcome

if TYPE_CHECKING:
    from serving.policy.escalation import EscalationPolicy


class ValidatorStage(Stage):
    """Always answers (it is the last tier): ``answered``, ``verified`` or, raising, ``failed``."""

    name = StageName.VALIDATOR

    def __init__(self, engine: LLMEngine, policy: EscalationPolicy, timeout_s: float = 300.0) -> None:
        self.engine = engine
        self.policy = policy
        self.timeout_s = timeout_s

    async def run(self, state: RequestState) -> None:
        draft = state.draft if self.policy.approve(state.draft, state.request) else None
        note: dict[str, object] = {}
        if state.draft is not None and state.draft.paused is not None:
            # Not verified because verification has not paid lately for drafts of this source.
            note = {"verify_paused": state.draft.source, "recent_acceptance": state.draft.paused}
        reason = self.policy.validator_reason(state.route, state.scout, state.draft)
        state.answered(Tier.VALIDATOR, reason, self.engine.model_id, self._chunks(state, draft, note))

    def _source(self, state: RequestState, draft: Draft | None) -> AsyncIterator[GenerationChunk]:
        if state.stream:
            return self.engine.verify_stream(state.request, draft.text) if draft else self.engine.stream(state.request)
        return self._whole(state, draft)

    async def _whole(self, state: RequestState, draft: Draft | None) -> AsyncIterator[GenerationChunk]:
        """A non-streamed answer as one chunk (and a closing one): no per-token messages to pay for."""
        outcome: DraftOutcome | None = None
        if draft is not None:
            verified = await self.engine.verify(state.request, draft.text)
            gen, outcome = verified.generation, verified.outcome
        else:
            gen = await self.engine.generate(state.request)
        yield GenerationChunk(text=gen.text, tokens=gen.tokens, draft=outcome)
        for i, other in enumerate(gen.alternatives, 1):  # the other choices of a request with n > 1
            yield GenerationChunk(text=other.text, tokens=other.tokens, index=i)
            yield GenerationChunk(finish_reason=other.finish_reason, index=i)
        yield GenerationChunk(finish_reason=gen.finish_reason, usage=gen.usage)

    async def _chunks(self, state: RequestState, draft: Draft | None, note: dict[str, object]
                      ) -> AsyncIterator[GenerationChunk]:
        t0 = time.perf_counter()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout_s
        outcome: DraftOutcome | None = None
        usage: Usage | None = None
        finish_reason: str | None = None
        sent = False
        source = self._source(state, draft)
        try:
            while True:
                # A deadline per chunk rather than a timeout scope around `yield`: the scope
                # would cancel whatever the consumer is doing between chunks.
                try:
                    chunk = await asyncio.wait_for(anext(source), max(deadline - loop.time(), 0.001))
                except StopAsyncIteration:
                    break
                except RequestError as exc:
                    if draft is None or sent:
                        raise
                    # The draft could not be scored and nothing was sent yet: answer plainly.
                    await source.aclose()
                    draft, note = None, {"verify_failed": exc.code or exc.type}
                    source = self._source(state, None)
                    continue
                if chunk.usage is not None:
                    usage = chunk.usage
                if chunk.draft is not None:
                    outcome = chunk.draft
                finish_reason = chunk.finish_reason or finish_reason
                sent = True
                yield chunk
        except TimeoutError:
            exc = EngineTimeoutError(f"{self.engine.model_id} did not answer within {self.timeout_s:g} s")
            self._failed(state, t0, exc)
            raise exc from None
        except InferenceOptimizerError as exc:
            self._failed(state, t0, exc)
            raise
        finally:
            await source.aclose()  # a client that leaves closes the engine stream now, not at GC
        tokens = usage.completion_tokens if usage else 0
        state.cost.add(Tier.VALIDATOR, usage, time.perf_counter() - t0)
        if usage is not None:
            state.metrics.tokens(Tier.VALIDATOR, usage.prompt_tokens, usage.completion_tokens)
        if draft is not None and outcome is not None:
            self.policy.record_verified(draft.source, outcome.proposed, outcome.accepted)
            state.metrics.draft(outcome.proposed, outcome.accepted, source=draft.source, saved=outcome.saved)
            detail: dict[str, object] = {"draft_source": draft.source}
            if draft.similarity is not None:
                detail["draft_similarity"] = round(draft.similarity, 4)
            state.record(self.name, ValidatorDecision.VERIFIED, t0, tokens=tokens, finish_reason=finish_reason,
                         draft_tokens=outcome.proposed, accepted_tokens=outcome.accepted,
                         generated_tokens=max(tokens - outcome.accepted, 0), saved_tokens=outcome.saved, **detail)
        else:
            state.record(self.name, ValidatorDecision.ANSWERED, t0, tokens=tokens, finish_reason=finish_reason,
                         **note)

    def _failed(self, state: RequestState, t0: float, exc: InferenceOptimizerError) -> None:
        state.cost.add(Tier.VALIDATOR, None, time.perf_counter() - t0)
        state.record(self.name, ValidatorDecision.FAILED, t0, error=exc.message)
