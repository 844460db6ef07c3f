"""What every stage is, and how a finished answer becomes chunks and chunks an answer."""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from typing import ClassVar

from serving.engines.base import Generation, GenerationChunk, Usage
from serving.pipeline._decisions import StageName
from serving.pipeline._state import RequestState


class Stage(ABC):
    """One step of the request path: it reads the decisions before it from the state and writes its own.

    A stage that answers the request sets `state.answer` (`RequestState.answered`); the
    pipeline then runs no further deciding stage and streams that answer.
    """

    name: ClassVar[StageName]

    @abstractmethod
    async def run(self, state: RequestState) -> None:
        """Decide, and record the decision (`state.record`)."""


class Observer(ABC):
    """Sees every request once its answer is complete (the ledger, the audit). It must never delay or alter
    the response: `observe` returns at once, and any work of its own runs in a task of its own."""

    @abstractmethod
    def observe(self, state: RequestState) -> None:
        """The request is answered (`state.result` holds the whole answer)."""


# Before every non-space that follows a space: word-sized pieces that join back to the text.
_WORD_START = re.compile(r"(?<=\s)(?=\S)")


async def replay(gen: Generation, with_logprobs: bool) -> AsyncIterator[GenerationChunk]:
    """A finished answer as chunks: one per token when the tokens spell the text, else one per word; each
    choice in turn (the usage, of them all, on the last chunk)."""
    for i, choice in enumerate(gen.choices):
        tokens = choice.tokens or []
        if tokens and "".join(t.token for t in tokens) == choice.text:
            for t in tokens:
                yield GenerationChunk(text=t.token, tokens=[t] if with_logprobs else None, index=i)
        elif with_logprobs and tokens:
            yield GenerationChunk(text=choice.text, tokens=tokens, index=i)
        else:
            for piece in _WORD_START.split(choice.text):
                if piece:
                    yield GenerationChunk(text=piece, index=i)
        yield GenerationChunk(finish_reason=choice.finish_reason, index=i,
                              usage=gen.usage if i == len(gen.alternatives) else None)


def assemble(chunks: list[GenerationChunk], model: str) -> Generation:
    """The whole answer the chunks spell (a non-streamed response, or what admission stores); chunks of
    choices 1..n-1 (`chunk.index`) become its `alternatives`, and the last usage seen counts them all."""
    usage = next((c.usage for c in reversed(chunks) if c.usage is not None), Usage())
    indexes = sorted({c.index for c in chunks} | {0})
    gens = [_one([c for c in chunks if c.index == i], model) for i in indexes]
    gens[0].usage, gens[0].alternatives = usage, gens[1:]
    return gens[0]


def _one(chunks: list[GenerationChunk], model: str) -> Generation:
    tokens = [t for c in chunks for t in c.tokens or []]
    finish = next((c.finish_reason for c in reversed(chunks) if c.finish_reason), None)
    return Generation(text="".join(c.text for c in chunks), finish_reason=finish,
                      tokens=tokens if any(c.tokens is not None for c in chunks) else None, model=model)
