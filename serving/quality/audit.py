"""The closed-loop audit: a share of shortcut answers is answered again by the Validator and judged.

After a response is complete (never before, never on its path), the `Auditor` picks a
share (`quality.audit.share`) of the answers a shortcut served — a Scout answer kept, an
exact or a semantic cache hit, a Scout strategy's answer — within a budget of Validator time (`max_validator_share`
of one Validator, refilled over wall time; over budget an audit is dropped, not queued),
asks the Validator at the lowest priority, and labels the pair with the judge. Escalated
requests are judged too when the Scout's answer would have been kept but for the audit's
own tightening: both answers exist already, so that evidence is free.

Per path (scout, exact, semantic, and strategy: a Scout strategy's chosen candidate) and cache
namespace it keeps a running disagreement count and its Clopper-Pearson upper bound at 1 - δ,
seeded for the Scout with what the calibration measured at its bound (so a calibrated Scout starts
certified, and live evidence moves it). The estimates are exported to Prometheus and kept across restarts
(`state_path`). Feedback:

* Scout: the bound's upper limit above ε tightens the Scout's bound one step; a lower
  limit above ε (clear evidence) closes it; it relaxes one step only when, after at least
  `cooldown` fresh audits, the upper limit is back at or below ε.
* strategy: measured and exported only (its answers are sampled and chosen by vote; the benchmark's frontier,
  not a bound, decides when one runs).
* cache: a hit that fails its audit is replaced by the Validator's answer (same key for an
  exact hit; the request's own key for a semantic one); the entry behind a failed semantic hit
  serves only above the similarity (or verifier score) it failed at, its own learned bound
  (`ResponseCache.raise_bound`); and a namespace whose semantic hits' bound exceeds ε serves
  exact hits only until fresh evidence brings it back.

`export_path` collects every audited and escalated pair (prompt, Validator answer, shortcut
answer, verdict) as chat-format JSONL: a distillation set for the Scout.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from serving.cache.semantic import CachedAnswer, ResponseCache
from serving.config import AuditConfig
from serving.engines.base import LLMEngine
from serving.metrics import Metrics
from serving.pipeline import Cost, Observer, Reason, RequestState, ScoutDecision, StageName, Tier
from serving.policy.cache import BOUND_MARGIN, last_user_turn
from serving.policy.escalation import EscalationPolicy
from serving.quality.judge import Judge, Verdict
from serving.quality.ledger import CostLedger
from serving.quality.risk import clopper_pearson_upper

logger = logging.getLogger(__name__)
PATHS = ("scout", "exact", "semantic", "strategy")


@dataclass
class Estimate:
    """A running disagreement count on one (path, namespace)."""

    n: int = 0
    k: int = 0
    since_change: int = 0  # audits since the feedback last moved a threshold

    def upper(self, delta: float) -> float:
        return clopper_pearson_upper(self.k, self.n, delta)

    def lower(self, delta: float) -> float:
        """The (1 - δ) lower confidence limit (0 when there is no disagreement)."""
        if self.k <= 0:
            return 0.0
        from scipy import stats

        return float(stats.beta.ppf(delta, self.k, self.n - self.k + 1))


def _path(state: RequestState) -> str | None:
    """Which shortcut served the request (None: the Validator did, or the client forced the tier)."""
    if state.tier is Tier.SCOUT and state.reason is Reason.CONFIDENT:
        return "scout"
    if state.tier is Tier.SCOUT and state.reason is Reason.STRATEGY:
        return "strategy"
    if state.tier is Tier.CACHE:
        return "exact" if state.reason is Reason.EXACT else "semantic"
    return None


def _question(state: RequestState) -> str:
    return last_user_turn(state.request)


class Auditor(Observer):
    """Audits shortcut answers off the request's path and feeds the result back (see the module docstring)."""

    def __init__(
        self, config: AuditConfig, validator: LLMEngine, judge: Judge, escalation: EscalationPolicy, *,
        epsilon: float, delta: float, cache: ResponseCache | None = None, metrics: Metrics | None = None,
        state_path: Path | None = None, ledger: CostLedger | None = None,
        semantic_closed: set[str] | None = None, clock: Callable[[], float] = time.monotonic,
        draw: Callable[[], float] = random.random,
    ) -> None:
        self.config = config
        self.validator = validator
        self.judge = judge
        self.escalation = escalation
        self.epsilon, self.delta = epsilon, delta
        self.cache = cache
        self.metrics = metrics or Metrics()
        self.state_path = state_path
        self.clock, self.draw = clock, draw
        self.estimates: dict[tuple[str, str], Estimate] = {}
        self.ledger = ledger
        # Namespaces whose semantic hits are not served (shared with the cache stage, which reads it).
        self.semantic_closed: set[str] = semantic_closed if semantic_closed is not None else set()
        self.tasks: set[asyncio.Task[None]] = set()
        # Audit budget, in Validator seconds: refilled at max_validator_share per second of wall time.
        self._budget_cap = 60.0 * config.max_validator_share
        self._budget = self._budget_cap
        self._refilled = clock()
        self._load()

    # -- state ----------------------------------------------------------------------------

    def estimate(self, path: str, namespace: str) -> Estimate:
        key = (path, namespace)
        if key not in self.estimates:
            est = Estimate()
            cal = self.escalation.calibration
            if path == "scout" and cal is not None and cal.scout.bound is not None:
                est.n, est.k = cal.scout.served, cal.scout.disagreements  # what the calibration measured
            self.estimates[key] = est
        return self.estimates[key]

    def _load(self) -> None:
        if self.state_path is None or not self.state_path.exists():
            return
        try:
            data = json.loads(self.state_path.read_text())
        except (OSError, ValueError):
            logger.warning("audit state %s unreadable: starting afresh", self.state_path)
            return
        if data.get("calibration") != self.escalation.version:
            return  # estimates of another calibration say nothing about this one
        for row in data.get("estimates", []):
            self.estimates[(row["path"], row["namespace"])] = Estimate(row["n"], row["k"], row.get("since_change", 0))
        self.semantic_closed.update(data.get("semantic_closed", []))  # in place: the cache stage holds this set
        self.escalation.tightening = float(data.get("tightening", 0.0))
        self.escalation.closed = bool(data.get("closed", False))
        self.export()  # a restarted replica's gauges show the kept estimates at once, not after its next audit

    def export(self) -> None:
        """Every estimate to the metrics. Called after each audit and periodically by the Ingress: Ray drops a
        gauge series that is not set again within a few report intervals, so a value set once would vanish from
        Prometheus while the estimate still holds."""
        for (path, namespace), est in self.estimates.items():
            self.metrics.audit(path, namespace, est.n, est.k, est.upper(self.delta))

    def save(self) -> None:
        """Keep the estimates and the feedback across restarts."""
        if self.state_path is None:
            return
        data = {"calibration": self.escalation.version, "tightening": self.escalation.tightening,
                "closed": self.escalation.closed, "semantic_closed": sorted(self.semantic_closed),
                "estimates": [{"path": p, "namespace": ns, **asdict(e)} for (p, ns), e in self.estimates.items()]}
        self.state_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=1))
        tmp.replace(self.state_path)  # atomic: a crash leaves the old state, never half a file

    def report(self) -> dict[str, Any]:
        """The estimates with their bounds, and the feedback in force."""
        return {
            "calibration": self.escalation.version, "epsilon": self.epsilon, "delta": self.delta,
            "scout": {"tightening": self.escalation.tightening, "closed": self.escalation.closed},
            "semantic_closed": sorted(self.semantic_closed),
            "estimates": [{"path": p, "namespace": ns, "audits": e.n, "disagreements": e.k,
                           "rate": round(e.k / e.n, 5) if e.n else None, "upper": round(e.upper(self.delta), 5)}
                          for (p, ns), e in sorted(self.estimates.items())],
        }

    # -- observing ------------------------------------------------------------------------

    def _spend(self) -> bool:
        now = self.clock()
        self._budget = min(self._budget_cap,
                           self._budget + (now - self._refilled) * self.config.max_validator_share)
        self._refilled = now
        return self._budget > 0 and len(self.tasks) < self.config.max_in_flight

    def observe(self, state: RequestState) -> None:
        if state.result is None or state.reason is Reason.COALESCED:
            return
        namespace = state.key.namespace if state.key is not None else "default"
        path = _path(state)
        if path is None:
            self._free_evidence(state, namespace)
            return
        if self.draw() >= self.config.share or not self._spend():
            return
        task = asyncio.get_running_loop().create_task(self._audit(state, path, namespace))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def _free_evidence(self, state: RequestState, namespace: str) -> None:
        """An escalation whose Scout answer would have been kept but for the feedback: judge it, no Validator call."""
        gen, served = state.scout_answer, state.result
        escalated = state.tier is Tier.VALIDATOR and state.scout is ScoutDecision.ESCALATE
        if not escalated or gen is None or served is None:
            return
        if state.agreement is None and state.confidence is None:
            return
        score = state.agreement if state.agreement is not None else state.confidence
        if score is None or score < self.escalation.base_bound():
            return
        task = asyncio.get_running_loop().create_task(self._judge_and_learn(state, "scout", namespace, served.text,
                                                                            gen.text, cost_s=0.0))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _audit(self, state: RequestState, path: str, namespace: str) -> None:
        t0 = time.perf_counter()
        try:
            request = replace(state.request, priority=self.config.priority, logprobs=False)
            reference = await self.validator.generate(request)
        except Exception as exc:  # an audit that fails is no evidence either way
            logger.warning("audit of a %s answer failed: %s", path, exc)
            return
        spent = time.perf_counter() - t0
        self._budget -= spent
        self.metrics.tokens("audit", reference.usage.prompt_tokens, reference.usage.completion_tokens)
        if self.ledger is not None:
            cost = Cost()
            cost.add(Tier.VALIDATOR, reference.usage, spent)
            self.ledger.book(namespace, "audit", cost, 0)
        assert state.result is not None
        verdict = await self._judge_and_learn(state, path, namespace, reference.text, state.result.text, spent)
        if verdict is not None and not verdict.agree and path in ("exact", "semantic") and self.cache is not None \
                and state.key is not None:
            await self._replace_entry(state, reference.text, reference.finish_reason,
                                      reference.usage.prompt_tokens, reference.usage.completion_tokens)
            if path == "semantic":
                await self._bound_entry(state)

    async def _judge_and_learn(self, state: RequestState, path: str, namespace: str, reference: str,
                               candidate: str, cost_s: float) -> Verdict | None:
        kind = state.plan.profile.task if state.plan is not None else None
        try:
            verdict = await self.judge.judge(_question(state), reference, candidate, kind)
        except Exception as exc:
            logger.warning("judging a %s answer failed: %s", path, exc)
            return None
        if verdict is None:
            return None
        self.learn(path, namespace, verdict.agree)
        self._export(state, path, reference, candidate, verdict)
        return verdict

    def learn(self, path: str, namespace: str, agree: bool) -> None:
        """One audited pair: update the estimate, feed it back, export and keep it."""
        est = self.estimate(path, namespace)
        est.n += 1
        est.k += 0 if agree else 1
        est.since_change += 1
        upper, lower = est.upper(self.delta), est.lower(self.delta)
        if path == "scout":
            self._feed_back_scout(est, upper, lower)
        elif path == "semantic":
            self._feed_back_semantic(namespace, est, upper)
        self.metrics.audit(path, namespace, est.n, est.k, upper)
        self.save()

    def _feed_back_scout(self, est: Estimate, upper: float, lower: float) -> None:
        policy, cfg = self.escalation, self.config
        if lower > self.epsilon and not policy.closed:
            policy.close()
            est.since_change = 0
        elif upper > self.epsilon and est.since_change >= cfg.cooldown and not policy.closed:
            policy.tighten(cfg.tighten_step)
            est.since_change = 0
        elif upper <= self.epsilon and est.since_change >= cfg.cooldown and (policy.closed or policy.tightening):
            policy.relax(cfg.tighten_step)
            est.since_change = 0

    def _feed_back_semantic(self, namespace: str, est: Estimate, upper: float) -> None:
        if upper > self.epsilon and est.n >= self.config.cooldown:
            self.semantic_closed.add(namespace)
        elif upper <= self.epsilon and namespace in self.semantic_closed and est.since_change >= self.config.cooldown:
            self.semantic_closed.discard(namespace)
            est.since_change = 0

    async def _replace_entry(self, state: RequestState, text: str, finish_reason: str | None, prompt_tokens: int,
                             completion_tokens: int) -> None:
        """The Validator's answer takes the failed entry's place (an exact hit's key is the request's own)."""
        assert self.cache is not None and state.key is not None
        answer = CachedAnswer(text=text, finish_reason=finish_reason, prompt_tokens=prompt_tokens,
                              completion_tokens=completion_tokens, tier="validator",
                              engine_model=self.validator.model_id)
        try:
            await self.cache.admit(state.key, answer)
        except Exception as exc:
            logger.warning("replacing a failed cache entry failed: %s", exc)

    async def _bound_entry(self, state: RequestState) -> None:
        """The entry that served a wrong semantic hit serves only above the similarity (or verifier score) it was
        served at (`ResponseCache.raise_bound`): the next question that far from it is not served its answer."""
        assert self.cache is not None
        hit = next((o.detail for o in state.outcomes if o.stage is StageName.CACHE and "entry" in o.detail), None)
        if hit is None:
            return
        scored = hit.get("rule") == "verifier" and hit.get("verifier_score") is not None
        at = hit.get("verifier_score") if scored else hit.get("similarity")
        if at is None:
            return
        at += BOUND_MARGIN
        try:
            await self.cache.raise_bound(hit["entry"]["entry_id"], similarity=None if scored else at,
                                         score=at if scored else None)
        except Exception as exc:
            logger.warning("bounding a failed cache entry failed: %s", exc)

    def _export(self, state: RequestState, path: str, reference: str, candidate: str, verdict: Verdict) -> None:
        if self.config.export_path is None:
            return
        messages = list(state.request.messages or [{"role": "user", "content": state.request.prompt or ""}])
        row = {"messages": [*messages, {"role": "assistant", "content": reference}], "path": path,
               "shortcut_answer": candidate, "agree": verdict.agree, "judge": verdict.method,
               "calibration": self.escalation.version}
        path_ = Path(self.config.export_path)
        path_.parent.mkdir(parents=True, exist_ok=True)
        with path_.open("a") as f:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")

    async def drain(self) -> None:
        """Wait for the audits in flight (tests, shutdown)."""
        while self.tasks:
            await asyncio.gather(*list(self.tasks), return_exceptions=True)
