"""Compute-optimal inference strategies: several candidates, one answer.

Reading order: what a candidate answers (`extract_answer`); how one candidate is chosen
(`majority_vote`, `weighted_vote`, `best_of`: ties broken as `serving.strategies._vote` says);
running a strategy over the Scout and the Validator (`StrategyRunner`: sampling through vLLM's
`n`, scoring by the Validator's one-pass log-probabilities, a REBASE-style step search); and
choosing which to run (`StrategyPolicy`: the benchmark's frontier, predicted costs, budgets).
The pipeline's `StrategyStage` runs them; `docs/strategies.md` is the reference.
"""

from serving.answers import extract_answer, final_number, normalised
from serving.strategies._policy import CostModel, Entry, Frontier, Plan, StrategyName, StrategyPolicy
from serving.strategies._runner import Spent, StrategyResult, StrategyRunner
from serving.strategies._vote import Candidate, Choice, best_of, majority_vote, weighted_vote

__all__ = [
    "Candidate",
    "Choice",
    "CostModel",
    "Entry",
    "Frontier",
    "Plan",
    "Spent",
    "StrategyName",
    "StrategyPolicy",
    "StrategyResult",
    "StrategyRunner",
    "best_of",
    "extract_answer",
    "final_number",
    "majority_vote",
    "normalised",
    "weighted_vote",
]
