"""The typed decisions of the request path: one enum per stage, plus the route and its reason.

They are `StrEnum`s: the route trace, the metrics' tags and the JSON a client reads carry
their plain values (``"confident"``, ``"exact_hit"``…), while the code compares members,
never strings.
"""

from __future__ import annotations

from enum import StrEnum


class Route(StrEnum):
    """What the client asked for in `model`: let the optimizer decide, or force a tier."""

    AUTO = "auto"
    SCOUT = "scout"
    VALIDATOR = "validator"


class Tier(StrEnum):
    """Who produced the answer."""

    CACHE = "cache"
    SCOUT = "scout"
    VALIDATOR = "validator"


class Reason(StrEnum):
    """Why that tier answered."""

    EXACT = "exact"  # an exact cache hit
    SEMANTIC = "semantic"  # a semantic cache hit
    CONFIDENT = "confident"  # the Scout was sure enough
    FORCED = "forced"  # the client named the tier
    ESCALATED = "escalated"  # the Scout was not sure: the Validator answered
    SCOUT_FAILED = "scout_failed"  # the Scout failed or timed out: the Validator answered
    SCOUT_OVERLOADED = "scout_overloaded"  # the Scout's queue was full and tiering.on_scout_overload said 'validator'
    VALIDATOR_DIRECT = "validator_direct"  # the analyzer predicted the Scout would fail
    NEAR_MISS = "near_miss"  # a cached near miss went to the Validator as a draft
    TIERING_DISABLED = "tiering_disabled"  # tiering.enabled is false
    COALESCED = "coalesced"  # an identical request in flight answered this one
    STRATEGY = "strategy"  # an inference strategy chose among several candidates (serving.strategies)


class StageName(StrEnum):
    """The stages of the request path, in order."""

    ANALYZER = "analyzer"
    CACHE = "cache"
    COALESCED = "coalesced"
    STRATEGY = "strategy"
    SCOUT = "scout"
    VALIDATOR = "validator"
    ADMISSION = "admission"


class AnalyzerDecision(StrEnum):
    """The analyzer's `RoutePlan.strategy`, or why there is none."""

    SCOUT_FIRST = "scout_first"
    VALIDATOR_DIRECT = "validator_direct"
    FORCED = "forced"
    FAILED = "failed"  # no plan (embedder down or slow): the default path


class CacheDecision(StrEnum):
    EXACT_HIT = "exact_hit"
    SEMANTIC_HIT = "semantic_hit"
    MISS = "miss"
    SKIPPED = "skipped"  # the request may not use the cache (sampled, logprobs, bypass, refresh)
    BYPASS = "bypass"  # the cache failed or was too slow: the request goes on without it

    @property
    def is_hit(self) -> bool:
        return self in (CacheDecision.EXACT_HIT, CacheDecision.SEMANTIC_HIT)


class CoalescedDecision(StrEnum):
    JOINED = "joined"  # waited for an identical request's computation


class StrategyDecision(StrEnum):
    RAN = "ran"  # the strategy asked for (or 'auto''s choice) answered
    DEGRADED = "degraded"  # over its budget: the best strategy predicted to fit answered instead
    CASCADE = "cascade"  # 'greedy' was chosen (by 'auto' or a budget): the cascade answers as usual
    FAILED = "failed"  # an engine failed or timed out: the cascade answers instead


class ScoutDecision(StrEnum):
    CONFIDENT = "confident"
    ESCALATE = "escalate"
    FORCED = "forced"
    FAILED = "failed"
    OVERLOADED = "overloaded"  # its queue was full (tiering.on_scout_overload decides what follows)
    SKIPPED = "skipped"  # validator-direct plan, or a near-miss draft goes straight to the Validator

    @property
    def kept(self) -> bool:
        """Whether the Scout's answer is the response."""
        return self in (ScoutDecision.CONFIDENT, ScoutDecision.FORCED)


class ValidatorDecision(StrEnum):
    ANSWERED = "answered"
    VERIFIED = "verified"  # a draft was verified, then the rest generated
    FAILED = "failed"


class AdmissionDecision(StrEnum):
    ADMITTED = "admitted"
    REJECTED = "rejected"  # by the admission policy
    FAILED = "failed"  # the cache failed: the answer is returned anyway


class SkipReason(StrEnum):
    """Why the Scout stage did not run although the route includes the Scout."""

    PREDICTED_HARD = "predicted_hard"
    NEAR_MISS_DRAFT = "near_miss_draft"
    # The calibrated pre-generation estimate says its answer would not be served.
    PREDICTED_UNSERVABLE = "predicted_unservable"
    AUDIT_CLOSED = "audit_closed"  # the audit closed the Scout: its answers disagree too often
    # The calibration certified no bound: no Scout answer can be kept, and none would be verified as a draft.
    UNCERTIFIED = "uncertified"
    MULTIPLE_CHOICES = "multiple_choices"  # n > 1 on `auto`: the Validator samples them (one shared prefill)


Decision = (AnalyzerDecision | CacheDecision | CoalescedDecision | StrategyDecision | ScoutDecision | ValidatorDecision
            | AdmissionDecision)
