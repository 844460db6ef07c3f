"""Which strategy to run: the learned frontier, the predicted cost, and the budget.

The frontier is what `scripts/bench_strategies.py` measured: for each difficulty bucket (by the
analyzer's complexity estimate), each strategy's accuracy and mean engine seconds per problem.
`StrategyPolicy.choose` picks, for a request's difficulty, the least costly strategy whose
accuracy reaches the target (the Validator's greedy accuracy by default) and fits the budget;
`fit` turns a requested strategy that would cost more than its budget into the best one predicted
to fit. Costs are predicted per candidate from running means of what strategies really spent
(seeded by the frontier's figures), so the predictions follow the deployed engines.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any


class StrategyName(StrEnum):
    """The strategies (see docs/strategies.md). GREEDY leaves the request to the cascade."""

    GREEDY = "greedy"
    MAJORITY_VOTE = "majority_vote"
    WEIGHTED_VOTE = "weighted_vote"
    BEST_OF_N = "best_of_n"
    SEARCH = "search"
    AUTO = "auto"

    @property
    def scored(self) -> bool:
        """Whether it asks the Validator to score candidates."""
        return self in (StrategyName.WEIGHTED_VOTE, StrategyName.BEST_OF_N, StrategyName.SEARCH)


@dataclass(frozen=True)
class Plan:
    """A strategy to run: its name and candidates, its predicted cost, and why it was chosen."""

    name: StrategyName
    n: int = 1
    predicted_s: float = 0.0
    why: str = "requested"  # requested | over_budget | frontier | default

    def as_dict(self) -> dict[str, Any]:
        return {"strategy": str(self.name), "n": self.n, "predicted_s": round(self.predicted_s, 4), "why": self.why}


@dataclass
class Entry:
    """One point of the frontier: a strategy at n candidates, its accuracy and mean engine seconds."""

    strategy: str  # a StrategyName, or "scout" / "validator" (that model greedy)
    n: int
    accuracy: float
    cost_s: float


@dataclass
class Bucket:
    """The frontier of the problems whose complexity estimate is at most `max_complexity` (None: any)."""

    max_complexity: float | None
    entries: list[Entry]

    def reference(self) -> Entry | None:
        """The Validator's greedy point (the default target)."""
        return next((e for e in self.entries if e.strategy == "validator"), None)


@dataclass
class Frontier:
    """Accuracy against compute per strategy, by difficulty (`scripts/bench_strategies.py` writes it)."""

    version: str
    buckets: list[Bucket]
    meta: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path) -> Frontier:
        doc = json.loads(Path(path).read_text())
        buckets = [Bucket(b.get("max_complexity"), [Entry(**e) for e in b["entries"]]) for b in doc["buckets"]]
        return cls(doc["version"], buckets, {k: v for k, v in doc.items() if k not in ("version", "buckets")})

    def bucket(self, complexity: float | None) -> Bucket:
        """The bucket a request of this complexity falls in (the last one when it is unknown)."""
        if complexity is not None:
            for b in self.buckets:
                if b.max_complexity is None or complexity <= b.max_complexity:
                    return b
        return self.buckets[-1]


class CostModel:
    """Engine seconds per candidate of each strategy: a running mean of measured runs, seeded by the frontier."""

    def __init__(self, prior_candidate_s: float = 1.0, frontier: Frontier | None = None, alpha: float = 0.2) -> None:
        self.prior = prior_candidate_s
        self.alpha = alpha
        self.per_candidate: dict[str, float] = {}
        self.greedy_s: float | None = None
        if frontier is not None:
            for b in frontier.buckets:
                for e in b.entries:
                    if e.strategy == "validator":
                        self.greedy_s = e.cost_s if self.greedy_s is None else max(self.greedy_s, e.cost_s)
                    elif e.strategy in StrategyName.__members__.values() and e.n > 0:
                        # The largest per-candidate figure of any bucket: predictions err on the side of cost.
                        self.per_candidate[e.strategy] = max(self.per_candidate.get(e.strategy, 0.0), e.cost_s / e.n)

    def predict(self, name: StrategyName, n: int) -> float:
        """Predicted engine seconds of `name` with `n` candidates."""
        if name is StrategyName.GREEDY:
            return self.greedy_s if self.greedy_s is not None else self.prior
        return self.per_candidate.get(name, self.prior) * n

    def record(self, name: StrategyName, n: int, spent_s: float) -> None:
        """A run's measured engine seconds."""
        if name is StrategyName.GREEDY or n < 1:
            return
        x = spent_s / n
        old = self.per_candidate.get(name)
        self.per_candidate[name] = x if old is None else (1 - self.alpha) * old + self.alpha * x


class StrategyPolicy:
    """Chooses the strategy a request runs (see the module docstring)."""

    def __init__(self, costs: CostModel, frontier: Frontier | None = None, target: str | float = "validator",
                 default_budget_s: float | None = None, max_n: int = 16) -> None:
        self.costs = costs
        self.frontier = frontier
        self.target = target
        self.default_budget_s = default_budget_s
        self.max_n = max_n

    def budget(self, requested: float | None) -> float | None:
        """The budget in force: the request's, never above the configured default."""
        if requested is None:
            return self.default_budget_s
        return min(requested, self.default_budget_s) if self.default_budget_s is not None else requested

    def plan(self, name: StrategyName, n: int, budget_s: float | None, complexity: float | None) -> Plan:
        """What to run for a request that asked for `name` with `n` candidates."""
        if name is StrategyName.AUTO:
            return self.choose(complexity, budget_s)
        if name is StrategyName.GREEDY:
            return Plan(name, 1, self.costs.predict(name, 1))
        n = min(n, self.max_n)
        cost = self.costs.predict(name, n)
        if budget_s is None or cost <= budget_s:
            return Plan(name, n, cost)
        return self.fit(name, n, budget_s, complexity)

    def fit(self, name: StrategyName, n: int, budget_s: float, complexity: float | None) -> Plan:
        """The best strategy predicted to cost at most `budget_s`: with a frontier, the most accurate point that
        fits; without one, the same strategy with fewer candidates (halving), then an unscored majority vote,
        then the cascade (`greedy`), which always runs."""
        if self.frontier is not None:
            fitting = [(e, self.costs.predict(StrategyName(e.strategy), e.n)) for e in self._choices(complexity)]
            fitting = [(e, c) for e, c in fitting if c <= budget_s]
            if fitting:
                e, c = max(fitting, key=lambda ec: (ec[0].accuracy, -ec[1]))
                return Plan(StrategyName(e.strategy), e.n, c, "over_budget")
        for candidate in ([name, StrategyName.MAJORITY_VOTE] if name is not StrategyName.MAJORITY_VOTE else [name]):
            k = n
            while k >= 2:
                cost = self.costs.predict(candidate, k)
                if cost <= budget_s:
                    return Plan(candidate, k, cost, "over_budget")
                k //= 2
        return Plan(StrategyName.GREEDY, 1, self.costs.predict(StrategyName.GREEDY, 1), "over_budget")

    def choose(self, complexity: float | None, budget_s: float | None) -> Plan:
        """'auto': the least costly strategy predicted to reach the target accuracy at this difficulty (within
        the budget); if none does, the most accurate that fits; the cascade without a frontier."""
        if self.frontier is None:
            return Plan(StrategyName.GREEDY, 1, self.costs.predict(StrategyName.GREEDY, 1), "default")
        bucket = self.frontier.bucket(complexity)
        ref = bucket.reference()
        if self.target == "validator" and (ref is None or ref.accuracy <= 0):
            # Nothing measured to reach (the Validator solved none): no evidence that a strategy is as good.
            return Plan(StrategyName.GREEDY, 1, self.costs.predict(StrategyName.GREEDY, 1), "frontier")
        target = ref.accuracy if self.target == "validator" else float(self.target)
        options = [(e, self.costs.predict(StrategyName(e.strategy), e.n)) for e in self._choices(complexity)]
        if budget_s is not None:
            options = [(e, c) for e, c in options if c <= budget_s] or options[:0]
        reaching = [(e, c) for e, c in options if e.accuracy >= target]
        if reaching:
            e, c = min(reaching, key=lambda ec: (ec[1], -ec[0].accuracy))
        elif options:
            e, c = max(options, key=lambda ec: (ec[0].accuracy, -ec[1]))
        else:
            return Plan(StrategyName.GREEDY, 1, self.costs.predict(StrategyName.GREEDY, 1), "frontier")
        return Plan(StrategyName(e.strategy), e.n, c, "frontier")

    def _choices(self, complexity: float | None) -> list[Entry]:
        """The frontier's points a request can be given: its strategies at allowed n, and the cascade (whose
        accuracy and cost are taken as the Validator's greedy ones: an upper bound on its cost)."""
        assert self.frontier is not None
        out = []
        for e in self.frontier.bucket(complexity).entries:
            if e.strategy == "validator":
                out.append(Entry(str(StrategyName.GREEDY), 1, e.accuracy, e.cost_s))
            elif e.strategy in StrategyName.__members__.values() and e.strategy != "auto" and 1 <= e.n <= self.max_n:
                out.append(e)
        return out
