"""How sure the Scout is of its own answer, from its token log-probabilities.

For generated tokens with log-probabilities ``l_1 .. l_n`` let ``p_i = exp(l_i)`` be
the probability the Scout gave each token it chose. Two scores are offered:

* ``min``:       ``c = min_i p_i`` — the single least certain token decides.
* ``quantile``:  ``c = p_(k)`` with ``k = floor(q * (n - 1))`` over the sorted
  probabilities ``p_(0) <= ... <= p_(n-1)`` — the lower q-quantile ("lower"
  interpolation, so ``c`` is always a probability the Scout really assigned). ``q = 0``
  is ``min``; the default ``q = 0.1`` tolerates a few hesitant tokens (a synonym,
  a formatting choice) but not a tenth of the answer being guesswork.

Why not the mean of ``l_i`` (or the geometric mean of ``p_i``)? An average is biased by
length: one wrong, improbable token (a wrong number) in a long, fluent answer barely
moves it, so long answers look confident exactly when they hide an error, while short
answers are judged by every token. A low quantile keeps its meaning at every length.

An empty answer scores 0: nothing was said, so nothing can be trusted.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from serving.config.tiering import ConfidenceConfig


def token_probabilities(logprobs: Sequence[float]) -> list[float]:
    """Probabilities of the chosen tokens; -inf (impossible) becomes 0, NaN is rejected."""
    out = []
    for lp in logprobs:
        if lp is None or math.isnan(lp):
            raise ValueError("token logprobs must be numbers")
        out.append(math.exp(min(lp, 0.0)))
    return out


def confidence(logprobs: Sequence[float], config: ConfidenceConfig | None = None) -> float:
    """The confidence score in [0, 1] of a generation (see the module docstring)."""
    config = config or ConfidenceConfig()
    probs = sorted(token_probabilities(logprobs))
    if not probs:
        return 0.0
    if config.method == "min":
        return probs[0]
    k = math.floor(config.quantile * (len(probs) - 1))
    return probs[k]


def describe(config: ConfidenceConfig) -> str:
    """Short label for route traces and metrics, e.g. ``quantile(q=0.1)``."""
    return "min" if config.method == "min" else f"quantile(q={config.quantile:g})"
