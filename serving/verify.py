"""Verified escalation: the Validator checks the Scout's draft instead of starting over.

When the Scout is unsure, its answer is still a draft. The Validator reads prompt + draft
in one prefill pass and reports, at every draft position, the token it would have chosen
itself (prompt logprobs, top 1). The longest prefix of the draft that agrees is accepted
as if the Validator had generated it; at the first disagreement the Validator's own token
is taken (it is known from the same pass), and generation continues from there, greedy,
with the accepted prefix already in the prefix cache.

Greedy only: at temperature 0 the result is, token for token, what the Validator alone
produces (each accepted token *is* its argmax given the same prefix). Sampled requests,
requests with stop strings (a stop string inside the accepted prefix would need the
engine's stop logic) and logprob requests use plain Validator generation. The draft is
text, re-tokenised with the Validator's tokenizer, so Scout and Validator need not share
a vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass

from serving.engines.base import Generation, GenerationRequest


def accept_length(draft: list[int], choices: list[int]) -> int:
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
    if request.stop:
        return "stop_strings"
    if request.logprobs:
        return "logprobs"
    return None


@dataclass
class Verified:
    """The Validator's answer built on a verified draft."""

    generation: Generation
    proposed: int  # draft tokens (in the Validator's tokenizer) offered
    accepted: int  # of which accepted
    generated: int  # tokens the Validator generated itself (the correction included)
