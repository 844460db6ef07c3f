"""The engine interface: what the router needs from a model server, nothing more.

`LLMEngine` is the one swappable backend between the request path and a model. The
production implementation (`ServeLLMEngine`) talks to a `ray.serve.llm` LLMServer
deployment; tests use fakes that subclass this ABC.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from serving.verify import DraftOutcome, Verified


@dataclass
class GenerationRequest:
    """One generation, independent of the API it came from.

    Exactly one of `messages` (chat) and `prompt` (text completion) is set.
    """

    messages: list[dict[str, Any]] | None = None
    prompt: str | None = None
    max_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    # Per-token log-probabilities of the chosen tokens (and this many alternatives).
    logprobs: bool = False
    top_logprobs: int = 0
    request_id: str | None = None
    # vLLM priority (lower first) of the request's class; engines with priority scheduling honour it.
    priority: int = 0
    # Independent choices from one prompt (OpenAI's `n`; vLLM shares their prefill).
    n: int = 1
    # The start of the answer, already written: the engine continues it (a step of a search).
    prefix: str = ""

    @property
    def kind(self) -> Literal["chat", "completion"]:
        return "chat" if self.messages is not None else "completion"


@dataclass
class TokenLogprob:
    """One generated token with its log-probability and the alternatives asked for."""

    token: str
    logprob: float
    top: list[tuple[str, float]] = field(default_factory=list)

    def alternatives(self) -> dict[str, float]:
        """The chosen token and its alternatives, token text -> log-probability (the chosen one once)."""
        return {self.token: self.logprob, **dict(self.top)}


def yes_probability(alternatives: Sequence[tuple[str, float]] | Mapping[str, float]) -> float | None:
    """P(yes) / (P(yes) + P(no)) from a first token's alternatives (token text -> log-probability).

    The one reading of a Yes/No answer, shared by the Validator as judge and the cache's cross-checker.
    Spellings are folded (" Yes", "yes", "YES" count as one word, their probabilities summed: a model
    splits its belief among them). A token listed twice counts once. Neither word among the
    alternatives: None (the model said something else); only one of them: 1 or 0."""
    mass = {"yes": 0.0, "no": 0.0}
    for token, logprob in dict(alternatives).items():
        word = token.strip().lower()
        if word in mass and math.isfinite(logprob):
            mass[word] += math.exp(logprob)
    total = mass["yes"] + mass["no"]
    return mass["yes"] / total if total > 0 else None


@dataclass
class Usage:
    """Token counts of one generation."""

    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass
class Generation:
    """A finished generation."""

    text: str
    finish_reason: str | None
    usage: Usage = field(default_factory=Usage)
    # Present when the request asked for logprobs.
    tokens: list[TokenLogprob] | None = None
    model: str = ""
    # Which stop string ended it (None: the end of sequence, or no stop: see `finish_reason`).
    stop_reason: str | int | None = None
    # Choices 1..n-1 of a request with n > 1 (this one is choice 0; `usage` counts them all).
    alternatives: list[Generation] = field(default_factory=list)

    @property
    def choices(self) -> list[Generation]:
        """Every choice, in index order."""
        return [self, *self.alternatives]


@dataclass
class GenerationChunk:
    """A piece of a streamed generation. The last one has `finish_reason` set."""

    text: str = ""
    finish_reason: str | None = None
    tokens: list[TokenLogprob] | None = None
    usage: Usage | None = None
    # Set on the first chunk of a verified stream (`LLMEngine.verify_stream`).
    draft: DraftOutcome | None = None
    # Which choice it belongs to (a request with n > 1 streams its choices interleaved).
    index: int = 0


@dataclass
class Scored:
    """How likely a model finds a continuation of a prompt: the log-probability of each of its tokens."""

    text: str
    logprobs: list[float]
    prompt_tokens: int = 0

    @property
    def total(self) -> float:
        return sum(self.logprobs)

    @property
    def mean(self) -> float:
        """Per-token mean log-probability: comparable across continuations of different lengths."""
        return self.total / len(self.logprobs) if self.logprobs else float("-inf")


class LLMEngine(ABC):
    """A model server the router can ask for a generation.

    Implementations raise the errors of `serving.errors`: `RequestError` subclasses when
    the engine rejects the request (e.g. the prompt is longer than its context window),
    `EngineUnavailableError` when it cannot answer. Timeouts are the caller's business.
    """

    #: The model's served name (reported in responses).
    model_id: str = "engine"

    @abstractmethod
    async def generate(self, request: GenerationRequest) -> Generation:
        """Generate the whole answer."""

    @abstractmethod
    def stream(self, request: GenerationRequest) -> AsyncIterator[GenerationChunk]:
        """Generate the answer piece by piece (an async generator)."""

    async def check_health(self) -> None:  # noqa: B027 - optional hook, default healthy
        """Raise `EngineUnavailableError` when the engine cannot serve."""

    #: Whether `verify` is implemented (see `serving.verify`).
    can_verify: bool = False

    async def verify(self, request: GenerationRequest, draft: str) -> Verified:
        """Answer a greedy `request` by verifying `draft` (another model's answer) first.

        The result must equal `generate(request)` token for token. Engines that cannot
        score a prompt leave `can_verify` False.
        """
        raise NotImplementedError

    def verify_stream(self, request: GenerationRequest, draft: str) -> AsyncIterator[GenerationChunk]:
        """`verify`, streamed: the first chunk holds the accepted prefix (and carries the
        `DraftOutcome` in `chunk.draft`), then the rest streams; the text joins to `verify`'s."""
        raise NotImplementedError

    async def score(self, request: GenerationRequest, continuations: list[str]) -> list[Scored]:
        """The model's log-probability of each continuation's tokens after `request`'s prompt, in one
        prefill pass and no decoding (a reward without a reward model). Engines that can score set
        `can_verify`, which needs the same pass."""
        raise NotImplementedError
