"""What may be looked up and what may be admitted: the cache's two policy decisions.

Only answers that are *final* and *reproducible* are worth serving again:

* reproducible — the request is deterministic (temperature 0, or a seed), unless the
  request opts in (`cache.allow_sampled`) or the operator does (`admit_sampled`): a sampled
  request asks for *a* sample, and a cached one is a fair sample only if the user says so.
  Requests for logprobs are not cached (entries keep text, not token probabilities).
* final — an answer of the Validator, or of the Scout with confidence at or above
  `admit_scout_min_confidence` (stricter than the escalation threshold, so a borderline
  Scout answer is served once but not repeated); never an error, never an empty answer,
  and not one cut by max_tokens unless `admit_truncated`.
"""

from __future__ import annotations

from serving.cache.semantic import CachedAnswer
from serving.config.cache import CacheConfig
from serving.engines.base import GenerationRequest


def skip_reason(request: GenerationRequest, config: CacheConfig, *, allow_sampled: bool = False) -> str | None:
    """Why `request` must not use the cache at all (None: it may)."""
    if request.logprobs:
        return "logprobs"
    deterministic = request.temperature == 0 or request.seed is not None
    if not deterministic and not (allow_sampled or config.admit_sampled):
        return "sampled"
    return None


def rejection_reason(answer: CachedAnswer, config: CacheConfig) -> str | None:
    """Why `answer` must not be admitted (None: admit it)."""
    if answer.tier not in ("scout", "validator"):
        return "not_generated"
    if not answer.text.strip():
        return "empty"
    if answer.finish_reason == "length":
        if not config.admit_truncated:
            return "truncated"
    elif answer.finish_reason != "stop":
        return "not_final"
    if answer.tier == "scout" and (answer.confidence or 0.0) < config.admit_scout_min_confidence:
        return "low_confidence"
    return None
