"""Verified escalation: the Validator checks a draft instead of starting over.

A draft is an answer that is probably close to the Validator's own: the Scout's answer
after it was not sure enough (an escalation), or a cached answer to a very similar
question that was not similar enough to serve (a *near miss*, see
`serving.cache.semantic`). The Validator reads prompt + draft in one prefill pass and
reports, at every draft position, the token it would have chosen itself (prompt
logprobs, top 1). The longest prefix of the draft that agrees is accepted as if the
Validator had generated it; at the first disagreement the Validator's own token is taken
(it is known from the same pass), and generation continues from there, greedy, with the
accepted prefix already in the prefix cache.

Greedy only: at temperature 0 the result is, token for token, what the Validator alone
produces (each accepted token *is* its argmax given the same prefix). Sampled requests
fall back to plain Validator generation rather than a request-level speculative-sampling
rule: the draft would need the Scout's full distribution at every position, which the
API does not return. (Inside the engine, vLLM's speculative decoding does apply the
standard speculative-sampling rule to sampled requests; see `SpeculativeConfig`.)
Requests with stop strings (a stop string inside the accepted prefix would need the
engine's stop logic), logprob requests and requests with presence or frequency penalties
(the scoring pass reads plain greedy choices) also use plain generation. A draft that
cannot be scored (prompt + draft do not fit the Validator's context) falls back to plain
generation too: verification may make an answer cheaper, never fail it. The draft is text,
re-tokenised with the Validator's tokenizer, so Scout and Validator need not share a
vocabulary.

Streaming: the accepted prefix (and the correction) is sent at once as the first chunk,
then the rest streams token by token.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from serving.engines.base import Generation, GenerationRequest

DraftSource = Literal["scout", "cache"]


def accept_length(draft: list[int], choices: list[int | None]) -> int:
    """How many leading draft tokens equal the Validator's own choice at their position."""
    n = 0
    for d, c in zip(draft, choices, strict=False):
        if d != c:
            break
        n += 1
    return n


def can_verify(request: GenerationRequest) -> str | None:
    """Why `request` cannot use verified escalation (None: it can)."""
    if request.temperature != 0:
        return "sampled"
    if request.presence_penalty or request.frequency_penalty:
        # Penalties change the Validator's choice by what came before; the scoring pass reads
        # plain greedy choices, so an accepted prefix would not be the penalised answer.
        return "penalties"
    if request.stop:
        return "stop_strings"
    if request.logprobs:
        return "logprobs"
    if request.n > 1 or request.prefix:
        return "n" if request.n > 1 else "prefix"
    return None


@dataclass
class Draft:
    """A candidate answer for the Validator to verify, and where it came from."""

    text: str
    source: DraftSource
    # For a cache draft: the similarity of the cached question.
    similarity: float | None = None
    # Decided once by the router: verify it (True), or not (False; `paused` holds the recent
    # acceptance when that was the reason).
    approved: bool | None = None
    paused: float | None = None


@dataclass
class DraftOutcome:
    """How a verified draft fared, in the Validator's tokens."""

    proposed: int  # draft tokens offered
    accepted: int  # of which accepted
    # Tokens the Validator got without a decode step: the accepted ones, plus its correction
    # (or its next token) when the scoring pass produced one.
    saved: int


@dataclass
class Verified:
    """The Validator's answer built on a verified draft."""

    generation: Generation
    proposed: int  # draft tokens (in the Validator's tokenizer) offered
    accepted: int  # of which accepted
    generated: int  # tokens the Validator generated itself (the correction included)
    saved: int = 0  # see `DraftOutcome.saved`

    @property
    def outcome(self) -> DraftOutcome:
        return DraftOutcome(self.proposed, self.accepted, self.saved)


class AcceptanceTracker:
    """Whether verifying drafts still pays, from how much of each source's drafts was accepted.

    Verification costs a prefill over prompt + draft and one more engine call; it saves a
    decode step per accepted token. A pair of models whose answers part at the first token
    (the tiny profile's: 1% of draft tokens accepted, measured) makes every escalation
    slower. Like vLLM turning speculation off when it does not pay, the router asks this
    tracker: after `warmup` drafts of a source, while the running accepted fraction (an
    EWMA over about `window` drafts) is below `min_acceptance`, drafts of that source go
    unverified — except one in `explore_every`, which keeps the estimate fresh so a change
    (a new Scout, another traffic mix) is noticed.
    """

    def __init__(self, min_acceptance: float, *, window: int = 20, warmup: int = 10, explore_every: int = 10) -> None:
        self.min_acceptance = min_acceptance
        self.alpha = 2.0 / (window + 1)
        self.warmup = warmup
        self.explore_every = max(explore_every, 1)
        self.rate: dict[str, float] = {}
        self.seen: dict[str, int] = {}
        self._skipped: dict[str, int] = {}

    def should_verify(self, source: str) -> bool:
        """Whether the next draft of `source` should be verified."""
        if self.min_acceptance <= 0 or self.seen.get(source, 0) < self.warmup:
            return True
        if self.rate.get(source, 1.0) >= self.min_acceptance:
            return True
        self._skipped[source] = self._skipped.get(source, 0) + 1
        return self._skipped[source] % self.explore_every == 0  # explore now and then

    def record(self, source: str, proposed: int, accepted: int) -> None:
        """A verified draft of `source`: `accepted` of `proposed` tokens were kept."""
        if proposed <= 0:
            return
        fraction = accepted / proposed
        prev = self.rate.get(source)
        self.rate[source] = fraction if prev is None else prev + self.alpha * (fraction - prev)
        self.seen[source] = self.seen.get(source, 0) + 1
