"""Escalation policy: when the Scout answers, when the Validator does, and whether it verifies a draft.

Every rule of the Scout -> Validator decision lives here; the pipeline's stages ask, and
record what they were told.

* **Which tiers a route uses.** ``model: scout`` forces the Scout, ``model: validator``
  the Validator; ``auto`` asks the Scout first when `tiering.enabled`.
* **Skipping the Scout.** An ``auto`` request skips the Scout when the analyzer's plan
  is ``validator_direct`` (reason ``predicted_hard``: the Scout would fail, so its answer
  would only cost time), or when the cache handed over a *near miss* that the Validator
  will verify (reason ``near_miss_draft``: the cached answer to an almost identical
  question is a better draft than a fresh Scout answer).
* **The threshold.** The Scout's confidence (`serving.confidence`) is compared with
  `tiering.threshold`, or the request's ``confidence_threshold`` override:
  at or above it the Scout's answer is kept (``confident``), below it the request
  escalates (``escalate``) and the Scout's answer becomes the Validator's draft.
* **Verification.** The Validator verifies a draft instead of generating from scratch
  when `tiering.verified_escalation` is on, the engine can, the request is one whose
  verified answer equals the Validator's own (`serving.verify.can_verify`: greedy, no
  penalties, stop strings or logprobs), and verification has paid lately for drafts of
  that source (`AcceptanceTracker`). Decided once per draft.
* **The reason** the Validator answered follows from these decisions (`validator_reason`).
"""

from __future__ import annotations

from serving.analyzer.plan import RoutePlan
from serving.config import TieringConfig
from serving.engines.base import GenerationRequest
from serving.pipeline._decisions import Reason, Route, ScoutDecision, SkipReason
from serving.verify import AcceptanceTracker, Draft, can_verify


class EscalationPolicy:
    """The Scout -> Validator decisions (see the module docstring)."""

    def __init__(self, tiering: TieringConfig, *, can_verify_drafts: bool = False) -> None:
        self.tiering = tiering
        self.can_verify_drafts = can_verify_drafts and tiering.verified_escalation
        # Whether verifying drafts still pays, per draft source.
        self.acceptance = AcceptanceTracker(tiering.verify_min_acceptance,
                                            explore_every=tiering.verify_explore_every)

    def threshold(self, override: float | None) -> float:
        """The confidence a Scout answer needs: the request's override, else the configured one."""
        return self.tiering.threshold if override is None else override

    def uses_scout(self, route: Route) -> bool:
        """Whether `route` includes the Scout."""
        return route is Route.SCOUT or (route is Route.AUTO and self.tiering.enabled)

    def skip_scout(self, route: Route, plan: RoutePlan | None, draft: Draft | None,
                   request: GenerationRequest) -> SkipReason | None:
        """Why the Scout is skipped although `route` may include it (None: it runs, if the route uses it).

        A near-miss draft that the Validator will verify skips it on every route but a forced
        Scout; a validator-direct plan skips it on ``auto`` only.
        """
        if route is Route.SCOUT:
            return None
        if draft is not None and draft.source == "cache" and self.approve(draft, request):
            return SkipReason.NEAR_MISS_DRAFT
        if route is Route.AUTO and self.uses_scout(route) and plan is not None and plan.strategy == "validator_direct":
            return SkipReason.PREDICTED_HARD
        return None

    def judge(self, route: Route, confidence: float, threshold: float) -> ScoutDecision:
        """Keep the Scout's answer or escalate."""
        if route is Route.SCOUT:
            return ScoutDecision.FORCED
        return ScoutDecision.CONFIDENT if confidence >= threshold else ScoutDecision.ESCALATE

    def approve(self, draft: Draft | None, request: GenerationRequest) -> bool:
        """Whether the Validator verifies `draft`; decided once per draft (a draft not verified
        because verification has not paid lately keeps the recent acceptance in `draft.paused`)."""
        if draft is None:
            return False
        if draft.approved is None:
            possible = self.can_verify_drafts and can_verify(request) is None
            draft.approved = possible and self.acceptance.should_verify(draft.source)
            if possible and not draft.approved:
                draft.paused = round(self.acceptance.rate.get(draft.source, 0.0), 4)
        return draft.approved

    def record_verified(self, source: str, proposed: int, accepted: int) -> None:
        """How a verified draft fared, for `approve`'s next decisions."""
        self.acceptance.record(source, proposed, accepted)

    def validator_reason(self, route: Route, scout: ScoutDecision | None, draft: Draft | None) -> Reason:
        """Why the Validator answers, from the decisions made before it."""
        if route is Route.VALIDATOR:
            return Reason.FORCED
        if draft is not None and draft.source == "cache" and draft.approved:
            return Reason.NEAR_MISS
        if scout is ScoutDecision.SKIPPED:
            return Reason.VALIDATOR_DIRECT
        if scout is None:
            return Reason.TIERING_DISABLED
        return Reason.SCOUT_FAILED if scout is ScoutDecision.FAILED else Reason.ESCALATED
