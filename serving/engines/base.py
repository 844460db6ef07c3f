"""The engine interface: what the router needs from a model server, nothing more.

`LLMEngine` is the one swappable backend between the request path and a model. The
production implementation (`ServeLLMEngine`) talks to a `ray.serve.llm` LLMServer
deployment; tests use fakes that subclass this ABC.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
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

    @property
    def kind(self) -> Literal["chat", "completion"]:
        return "chat" if self.messages is not None else "completion"


@dataclass
class TokenLogprob:
    """One generated token with its log-probability and the alternatives asked for."""

    token: str
    logprob: float
    top: list[tuple[str, float]] = field(default_factory=list)


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


@dataclass
class GenerationChunk:
    """A piece of a streamed generation. The last one has `finish_reason` set."""

    text: str = ""
    finish_reason: str | None = None
    tokens: list[TokenLogprob] | None = None
    usage: Usage | None = None
    # Set on the first chunk of a verified stream (`LLMEngine.verify_stream`).
    draft: DraftOutcome | None = None


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
