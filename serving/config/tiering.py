"""Configuration of the Scout -> Validator decision."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class ConfidenceConfig(BaseModel):
    """How the Scout's token log-probabilities become one confidence score.

    See `serving.confidence` for the formulas and why an average is not offered.
    """

    model_config = ConfigDict(extra="forbid")

    method: Literal["quantile", "min"] = Field(
        "quantile",
        description="'quantile': the q-th lower quantile of token probabilities; 'min': the least likely token.",
    )
    quantile: float = Field(
        0.1, ge=0, le=0.5, description="q for method 'quantile' (0 equals 'min'; 0.5 is the median)."
    )


class TieringConfig(BaseModel):
    """When the Scout's own answer is good enough to return."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(
        True, description="Ask the Scout first; when false every 'auto' request goes to the Validator."
    )
    threshold: float = Field(
        0.5,
        ge=0,
        le=1,
        description="Scout answers with confidence >= threshold are returned; others escalate. "
        "Requests may override it with the 'confidence_threshold' field.",
    )
    confidence: ConfidenceConfig = Field(
        default_factory=ConfidenceConfig, description="How the confidence score is computed."
    )
    verified_escalation: bool = Field(
        False,
        description="On escalation, the Validator verifies the Scout's draft in one prefill pass and generates "
        "only the rest (greedy requests; identical output). See serving/verify.py.",
    )
    verify_min_acceptance: float = Field(
        0.15,
        ge=0,
        le=1,
        description="Verify drafts only while the running accepted fraction of their source's drafts (Scout or "
        "cache, over about 20 drafts, after 10) is at least this; below it escalations use plain generation, but "
        "1 in verify_explore_every is still verified. 0: always verify.",
    )
    on_scout_overload: Literal["reject", "validator"] = Field(
        "reject", description="When the Scout's queue is full (Ray Serve's max_queued_requests): 'reject' answers a "
        "429 with Retry-After, so overload does not pour onto the Validator; 'validator' sends the request there. The "
        "route trace says which.")
    verify_explore_every: int = Field(
        10, ge=1, description="While verification is paused for low acceptance, verify one escalation in this many."
    )
