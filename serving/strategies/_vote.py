"""Choosing one candidate: majority vote, weighted majority vote, best-of-N.

Ties are broken the same way everywhere: the larger total weight of the tied answers (for a plain
majority vote, the sampler's own mean token log-probability, exponentiated), then the answer whose
first candidate came first. An empty answer (a candidate with no final answer) never wins while any
candidate has one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field


@dataclass
class Candidate:
    """One sampled answer: its text, the answer a vote counts, and its scores."""

    text: str
    answer: str
    own_logprob: float = 0.0  # the sampler's mean token log-probability
    score: float | None = None  # the Validator's mean token log-probability of it (None: not scored)
    tokens: int = 0
    finish_reason: str | None = None

    @property
    def weight(self) -> float:
        """The candidate's weight in a weighted vote: exp(mean log-probability) by the Validator when it scored
        it, else by the sampler (a probability-like number in (0, 1])."""
        lp = self.score if self.score is not None else self.own_logprob
        return math.exp(lp) if math.isfinite(lp) else 0.0


@dataclass
class Choice:
    """What a vote or a ranking chose, and the tally behind it."""

    index: int  # of the chosen candidate
    tally: dict[str, float] = field(default_factory=dict)  # answer -> votes (or summed weights)


def _tally(candidates: list[Candidate], weighted: bool) -> Choice:
    if not candidates:
        raise ValueError("no candidates to vote on")
    votes: dict[str, float] = {}
    weights: dict[str, float] = {}
    first: dict[str, int] = {}
    for i, c in enumerate(candidates):
        votes[c.answer] = votes.get(c.answer, 0.0) + (c.weight if weighted else 1.0)
        weights[c.answer] = weights.get(c.answer, 0.0) + c.weight
        first.setdefault(c.answer, i)
    pool = [a for a in votes if a] or list(votes)  # an empty answer wins only when there is nothing else
    best = max(pool, key=lambda a: (round(votes[a], 9), round(weights[a], 9), -first[a]))
    # The answer's representative: its candidate with the highest weight (then the earliest).
    members = [i for i, c in enumerate(candidates) if c.answer == best]
    index = max(members, key=lambda i: (candidates[i].weight, -i))
    return Choice(index, {a: round(v, 6) for a, v in votes.items()})


def majority_vote(candidates: list[Candidate]) -> Choice:
    """The answer most candidates give (ties: see the module docstring)."""
    return _tally(candidates, weighted=False)


def weighted_vote(candidates: list[Candidate]) -> Choice:
    """The answer with the largest summed weight (`Candidate.weight`)."""
    return _tally(candidates, weighted=True)


def best_of(candidates: list[Candidate]) -> Choice:
    """The candidate the Validator scores highest (the sampler's score where none was scored); ties: the
    earliest. The tally is each answer's best score."""
    if not candidates:
        raise ValueError("no candidates to rank")

    def key(i: int) -> tuple[float, int]:
        c = candidates[i]
        lp = c.score if c.score is not None else c.own_logprob
        return (lp if math.isfinite(lp) else -math.inf, -i)

    index = max(range(len(candidates)), key=key)
    tally: dict[str, float] = {}
    for i, c in enumerate(candidates):
        tally[c.answer] = max(tally.get(c.answer, -math.inf), round(key(i)[0], 6))
    return Choice(index, tally)
