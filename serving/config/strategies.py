"""Inference strategies: sampling several candidates and choosing among them (serving.strategies)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class StrategiesConfig(BaseModel):
    """How strategies sample, score and search, what they are predicted to cost, and the default."""

    model_config = ConfigDict(extra="forbid")

    default: Literal["greedy", "auto"] = Field(
        "greedy", description="The strategy of a request that names none: 'greedy' (the cascade as usual) or "
        "'auto' (the frontier's choice for the request's difficulty; needs `frontier`).")
    temperature: float = Field(
        0.7, gt=0, le=2, description="Sampling temperature of candidates when the request itself is greedy.")
    frontier: Path | None = Field(
        None, description="The frontier `scripts/bench_strategies.py` writes (accuracy and engine seconds per "
        "strategy and difficulty): what 'auto' chooses from, and the cost predictions' starting point.")
    target: Literal["validator"] | float = Field(
        "validator", description="The accuracy 'auto' aims for: the Validator's greedy accuracy on the frontier "
        "('validator'), or a number in [0, 1]; the least costly strategy reaching it is chosen.")
    budget_s: float | None = Field(
        None, gt=0, description="Default most engine seconds a strategy may spend on one request (a request's "
        "`strategy.budget` may only lower it).")
    step_stop: str = Field("\n", description="What ends one step of a 'search' (a line of a worked solution).")
    step_tokens: int = Field(48, ge=1, description="Most tokens of one step of a 'search'.")
    search_width: int = Field(4, ge=1, description="Partial solutions a 'search' keeps after each step.")
    max_steps: int = Field(12, ge=1, description="Most steps of a 'search' before it finishes its best candidate.")
    balance_temperature: float = Field(
        0.2, gt=0, description="REBASE's balance temperature: expansions go to partial solutions in proportion to "
        "exp(score / T) of their Validator score (lower: greedier).")
    prior_candidate_s: float = Field(
        1.0, gt=0, description="Engine seconds one candidate is assumed to cost before any is measured (the "
        "frontier's or the running means' figures replace it).")
