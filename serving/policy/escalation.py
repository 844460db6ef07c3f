"""Escalation policy: when the Scout answers, when the Validator does, and whether it verifies a draft.

Every rule of the Scout -> Validator decision lives here; the pipeline's stages ask, and
record what they were told.

* **Which tiers a route uses.** ``model: scout`` forces the Scout, ``model: validator``
  the Validator; ``auto`` asks the Scout first when `tiering.enabled`.
* **Skipping the Scout.** An ``auto`` request skips the Scout when the analyzer's plan
  is ``validator_direct`` (reason ``predicted_hard``: the Scout would fail, so its answer
  would only cost time), or when the cache handed over a *near miss* that the Validator
  will verify (reason ``near_miss_draft``: the cached answer to an almost identical
  question is a better draft than a fresh Scout answer). Calibrated, it is skipped when
  the calibration certified no bound (``uncertified``: no answer of it could be kept) unless
  the Validator would verify its answer as a draft, when the analyzer's complexity predicts
  an answer that would not be served (``predicted_unservable``), and while the audit has
  closed it (``audit_closed``, but for an exploring request now and then).
* **The score and its bound.** Uncalibrated, the score is the Scout's confidence
  (`serving.confidence`) and the bound `tiering.threshold`, or the request's
  ``confidence_threshold`` override. Calibrated (`quality.calibration`, see
  `serving.quality.calibration`), the score is the calibrated probability that the Scout's
  answer agrees with the Validator's and the bound the risk-controlled one (a request's
  override may only make it stricter). At or above the bound the Scout's answer is kept
  (``confident``), below it the request escalates (``escalate``) and the Scout's answer
  becomes the Validator's draft.
* **Feedback from the audit** (`serving.quality.audit`): when the running disagreement of
  kept Scout answers exceeds ε, the bound is raised (`tighten`), or the Scout is closed
  altogether on clear evidence (`close`); it is lowered back only on fresh evidence
  (`relax`). A closed Scout is still asked now and then (1 in `tiering.verify_explore_every`,
  its answer escalated in any case) so the audit keeps learning whether it may reopen.
* **Verification.** The Validator verifies a draft instead of generating from scratch
  when `tiering.verified_escalation` is on, the engine can, the request is one whose
  verified answer equals the Validator's own (`serving.verify.can_verify`: greedy, no
  penalties, stop strings or logprobs), and verification has paid lately for drafts of
  that source (`AcceptanceTracker`). Decided once per draft.
* **The reason** the Validator answered follows from these decisions (`validator_reason`).
"""

from __future__ import annotations

import math

from serving.analyzer.plan import RoutePlan
from serving.config import TieringConfig
from serving.engines.base import Generation, GenerationRequest
from serving.pipeline._decisions import Reason, Route, ScoutDecision, SkipReason
from serving.quality.calibration import Calibration
from serving.verify import AcceptanceTracker, Draft, can_verify


class EscalationPolicy:
    """The Scout -> Validator decisions (see the module docstring)."""

    def __init__(self, tiering: TieringConfig, *, can_verify_drafts: bool = False,
                 calibration: Calibration | None = None) -> None:
        self.tiering = tiering
        self.can_verify_drafts = can_verify_drafts and tiering.verified_escalation
        self.calibration = calibration
        # Whether verifying drafts still pays, per draft source.
        self.acceptance = AcceptanceTracker(tiering.verify_min_acceptance,
                                            explore_every=tiering.verify_explore_every)
        # The audit's feedback: added to the bound; `closed` keeps no Scout answer at all.
        self.tightening = 0.0
        self.closed = False
        self._closed_skips = 0

    @property
    def version(self) -> str:
        """The calibration's version, or 'uncalibrated'."""
        return self.calibration.version if self.calibration is not None else "uncalibrated"

    def base_bound(self, override: float | None = None) -> float:
        """The bound before the audit's feedback: calibrated (None there: never serve) or configured."""
        if self.calibration is None:
            return self.tiering.threshold if override is None else override
        bound = self.calibration.scout.bound
        base = math.inf if bound is None else bound
        return base if override is None else max(base, override)

    def threshold(self, override: float | None) -> float:
        """The score a Scout answer needs now (see the module docstring)."""
        return math.inf if self.closed else self.base_bound(override) + self.tightening

    def score(self, gen: Generation, plan: RoutePlan | None, raw_confidence: float) -> float:
        """The Scout answer's score: the calibrated P(agree), or its raw confidence (computed once, by the stage)."""
        if self.calibration is None:
            return raw_confidence
        return self.calibration.p_agree(gen.tokens, gen.finish_reason, plan.complexity if plan else None)

    def early_stop_floor(self, route: Route) -> float | None:
        """The q10 token probability below which a running Scout answer can no longer be kept (None: let it
        finish): from the calibration, on 'auto' requests only (a forced Scout answers whatever it says)."""
        if route is not Route.AUTO or self.calibration is None or self.calibration.early_stop is None:
            return None
        return self.calibration.early_stop.min_passing_q10

    def tighten(self, step: float) -> None:
        self.tightening = min(self.tightening + step, 1.0)

    def close(self) -> None:
        self.closed = True

    def relax(self, step: float) -> None:
        """One step back towards the calibrated bound (the audit calls it on fresh evidence only)."""
        if self.closed:
            self.closed = False
            return
        self.tightening = max(self.tightening - step, 0.0)

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
        if route is not Route.AUTO or not self.uses_scout(route):
            return None
        if request.n > 1:
            # Several samples are asked for: none of them can be judged against one Validator answer.
            return SkipReason.MULTIPLE_CHOICES
        if plan is not None and plan.strategy == "validator_direct":
            return SkipReason.PREDICTED_HARD
        if self.calibration is not None and self.calibration.scout.bound is None \
                and not (self.can_verify_drafts and can_verify(request) is None):
            # The Scout's answer can never be kept (and the audit cannot reopen what was never certified), nor
            # serve as a draft: running it would only delay the Validator (on the tiny pair, 4.5x the TTFT).
            return SkipReason.UNCERTIFIED
        if self.closed:
            self._closed_skips += 1
            if self._closed_skips % max(self.tiering.verify_explore_every, 1):
                return SkipReason.AUDIT_CLOSED  # its answer could not be kept: asking it is waste
        pre = self.calibration.pre_generation if self.calibration is not None else None
        if pre is not None and pre.skip_below is not None and plan is not None and plan.complexity is not None \
                and pre.model.predict([plan.complexity]) < pre.skip_below:
            return SkipReason.PREDICTED_UNSERVABLE
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
        if scout is ScoutDecision.OVERLOADED:
            return Reason.SCOUT_OVERLOADED
        return Reason.SCOUT_FAILED if scout is ScoutDecision.FAILED else Reason.ESCALATED

    def overflow_to_validator(self) -> bool:
        """Whether a request the Scout's full queue refused goes to the Validator (else it is refused: a 429)."""
        return self.tiering.on_scout_overload == "validator"
