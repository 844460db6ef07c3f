"""The cost ledger: what every request cost per tier, and what the Validator alone would have cost.

Each finished request's `Cost` (from its `RequestState`: engine seconds and tokens per
tier, a Scout answer thrown away on escalation included) is booked under its cache
namespace and its *path* (the tier that answered: cache, scout, validator; audits under
"audit"). The counterfactual is the Validator answering alone: for a request the
Validator answered, what it spent; for one a shortcut answered, the answer's completion
tokens at the Validator's measured seconds per completion token (a running mean of its
real calls; prefill is not counted, so the estimate is conservative for long prompts).
A cascade engine's cross-check of cache candidates (`Cost.checks`) is booked to that
engine's tier like its other work, but stays out of the counterfactual and of the running
seconds per token, which measure answering.

Totals are served at an admin endpoint (`GET /v1/ledger`) and exported to Prometheus
(`Metrics.ledger`). Savings = counterfactual Validator seconds - Validator seconds spent.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from serving.metrics import Metrics
from serving.pipeline import Cost, Observer, Reason, RequestState, Tier


@dataclass
class Account:
    """Totals of one (namespace, path)."""

    requests: int = 0
    engine_s: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    tokens: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    validator_only_s: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        spent = self.engine_s.get(Tier.VALIDATOR, 0.0)
        return {"requests": self.requests, "engine_s": {k: round(v, 4) for k, v in self.engine_s.items()},
                "tokens": dict(self.tokens), "validator_only_s": round(self.validator_only_s, 4),
                "validator_s_saved": round(self.validator_only_s - spent, 4)}


class CostLedger(Observer):
    """Books requests' costs (see the module docstring)."""

    def __init__(self, metrics: Metrics | None = None, prior_s_per_token: float = 0.05) -> None:
        self.metrics = metrics or Metrics()
        self.accounts: dict[tuple[str, str], Account] = defaultdict(Account)
        # Validator seconds per completion token: a running mean of its real calls.
        self.s_per_token = prior_s_per_token
        self._seen = 0

    def counterfactual_s(self, cost: Cost, completion_tokens: int) -> float:
        """What the Validator alone would have spent on this request."""
        v = cost.tiers.get(Tier.VALIDATOR)
        if v is not None and v.completion_tokens:
            return v.engine_s
        return completion_tokens * self.s_per_token

    def book(self, namespace: str, path: str, cost: Cost, completion_tokens: int) -> float:
        """One request; returns its counterfactual Validator seconds."""
        v = cost.tiers.get(Tier.VALIDATOR)
        if v is not None and v.completion_tokens and path != "audit":
            self._seen += 1
            a = max(0.02, 1.0 / self._seen)
            self.s_per_token += a * (v.engine_s / v.completion_tokens - self.s_per_token)
        account = self.accounts[(namespace, path)]
        account.requests += 1
        counterfactual = 0.0 if path == "audit" else self.counterfactual_s(cost, completion_tokens)
        account.validator_only_s += counterfactual
        # A cross-check's time is its engine's like any other (it lowers the savings); it only stays out of the
        # counterfactual and of the running seconds per token, which measure answering.
        for tier, c in [*cost.tiers.items(), *cost.checks.items()]:
            account.engine_s[str(tier)] += c.engine_s
            account.tokens[f"{tier}_prompt"] += c.prompt_tokens
            account.tokens[f"{tier}_completion"] += c.completion_tokens
            self.metrics.ledger(namespace, path, str(tier), c.engine_s, c.prompt_tokens + c.completion_tokens)
        self.metrics.ledger(namespace, path, "validator_only", counterfactual, 0)
        return counterfactual

    def observe(self, state: RequestState) -> None:
        """A finished request: booked under its namespace and the tier that answered ('coalesced' for one that
        shared an identical request's computation, which spent nothing of its own)."""
        if state.result is None:
            return
        path = "coalesced" if state.reason is Reason.COALESCED else str(state.tier or "none")
        namespace = state.key.namespace if state.key is not None else "default"
        counted = 0 if state.reason is Reason.COALESCED else (
            state.answer_tokens if state.answer_tokens is not None else state.result.usage.completion_tokens)
        state.counterfactual_s = self.book(namespace, path, state.cost, counted)

    def totals(self) -> dict[str, Any]:
        """Per namespace and path, and over everything."""
        out: dict[str, Any] = {"namespaces": {}, "validator_s_per_token": round(self.s_per_token, 5)}
        spent = only = 0.0
        for (ns, path), account in sorted(self.accounts.items()):
            out["namespaces"].setdefault(ns, {})[path] = account.as_dict()
            if path != "audit":
                only += account.validator_only_s
            spent += account.engine_s.get(Tier.VALIDATOR, 0.0)
        out["validator_s"] = round(spent, 4)
        out["validator_only_s"] = round(only, 4)
        out["validator_ratio"] = round(spent / only, 4) if only else None
        return out
