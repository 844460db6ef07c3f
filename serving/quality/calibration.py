"""Calibration: the probability that a shortcut's answer agrees with the Validator's, and where it may serve.

A calibration file is made offline (`infopt calibrate`, `make calibrate`) for one pair of
models: the Scout's and the Validator's answers to a calibration set are labelled by the
judge (`serving.quality.judge`), a logistic model is fitted (scikit-learn, offline) from
the Scout's own signals to P(agree), and the serving bound on that probability is chosen
by risk control (`serving.quality.risk.learn_then_test`) so that disagreement among
served answers is at most ε with confidence 1 - δ.

Serving reads the file (numpy only: no scikit-learn on the request path), refuses one
made for other models (`CalibrationMismatchError`), and records the probability, the
bound and the calibration's version in the route trace. Without a file a profile runs as
before and says "uncalibrated".

The Scout's signals (`scout_features`), all from what it returns with its answer:
the lower 10% quantile and the minimum of its token probabilities, the mean token
log-probability, the answer's length (log1p of tokens), whether it was cut by max_tokens,
the mean top-k entropy where the engine returned alternatives (0 otherwise), and the
analyzer's complexity estimate (the calibration set's mean when the request has none).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from serving.engines.base import TokenLogprob

FEATURES = ("q10", "min_p", "mean_logprob", "log_tokens", "truncated", "top_entropy", "complexity")


class CalibrationMismatchError(ValueError):
    """A calibration file made for other models: serving refuses to start with it (it would certify nothing)."""


def _quantile(probs: list[float], q: float) -> float:
    return probs[math.floor(q * (len(probs) - 1))] if probs else 0.0


def scout_features(tokens: Sequence[TokenLogprob] | None, finish_reason: str | None,
                   complexity: float | None, default_complexity: float = 0.5) -> list[float]:
    """The Scout's signals for one answer, in `FEATURES` order."""
    lps = [min(t.logprob, 0.0) for t in tokens or [] if t.logprob is not None and not math.isnan(t.logprob)]
    probs = sorted(math.exp(lp) for lp in lps)
    entropies = []
    for t in tokens or []:
        if t.top:
            p = np.exp(np.asarray([lp for _, lp in t.top], dtype=float))
            p = p / p.sum() if p.sum() > 0 else p
            entropies.append(float(-(p * np.log(np.clip(p, 1e-12, 1))).sum()))
    return [
        _quantile(probs, 0.1),
        probs[0] if probs else 0.0,
        float(np.mean(lps)) if lps else -10.0,
        math.log1p(len(lps)),
        1.0 if finish_reason == "length" else 0.0,
        float(np.mean(entropies)) if entropies else 0.0,
        default_complexity if complexity is None else float(complexity),
    ]


def q10_reachable(token_logprobs: Sequence[float], max_tokens: int, floor: float) -> int | None:
    """The token index at which the answer's q10 token probability can no longer reach `floor`, whatever
    comes after (None: never). The final q10 is p_(k), k = floor(0.1 (n - 1)), n <= max_tokens: once more
    than k_max tokens are below `floor`, p_(k) < floor at every possible length."""
    k_max = math.floor(0.1 * (max_tokens - 1))
    low = 0
    for i, lp in enumerate(token_logprobs):
        if math.exp(min(lp, 0.0)) < floor:
            low += 1
            if low > k_max:
                return i + 1
    return None


class Logistic(BaseModel):
    """A fitted logistic model over standardised features: P = σ(w·(x - mean)/scale + b)."""

    model_config = ConfigDict(extra="forbid")

    features: list[str] = Field(description="Feature names, in order.")
    mean: list[float] = Field(description="Standardisation: feature means on the calibration split.")
    scale: list[float] = Field(description="Standardisation: feature standard deviations.")
    coef: list[float] = Field(description="Logistic coefficients on the standardised features.")
    intercept: float = Field(description="Logistic intercept.")

    def predict(self, x: Sequence[float]) -> float:
        z = (np.asarray(x, dtype=float) - np.asarray(self.mean)) / np.asarray(self.scale)
        return float(1.0 / (1.0 + np.exp(-(float(np.dot(self.coef, z)) + self.intercept))))


class CurvePoint(BaseModel):
    """One threshold of the risk-coverage curve on the calibration split."""

    threshold: float
    coverage: float
    risk: float
    upper: float


class ShortcutCalibration(BaseModel):
    """One shortcut's calibrated decision: serve when P(agree) >= `bound` (None: never serve)."""

    model_config = ConfigDict(extra="forbid")

    model: Logistic = Field(description="P(the shortcut's answer agrees with the Validator's).")
    bound: float | None = Field(description="Risk-controlled bound on P(agree); None: no bound is safe.")
    coverage: float = Field(description="Share of the calibration split served at the bound.")
    served: int = Field(description="Answers served at the bound on the calibration split.")
    disagreements: int = Field(description="Of which disagreeing with the Validator.")
    upper: float = Field(description="Clopper-Pearson upper limit of the risk at the bound.")
    curve: list[CurvePoint] = Field(default_factory=list, description="The risk-coverage curve.")


class PreGeneration(BaseModel):
    """Skipping the Scout before it runs: P(a servable Scout answer) from the analyzer's complexity."""

    model_config = ConfigDict(extra="forbid")

    model: Logistic = Field(description="P(the Scout's answer would be served and agree) from the complexity.")
    skip_below: float | None = Field(description="Skip the Scout when that probability is below this (None: never).")
    scout_work_saved: float = Field(description="Share of Scout calls skipped on the calibration split.")
    coverage_lost: float = Field(description="Share of served Scout answers lost by skipping, calibration split.")


class EarlyStop(BaseModel):
    """Stopping the Scout mid-answer once it can no longer be served."""

    model_config = ConfigDict(extra="forbid")

    min_passing_q10: float = Field(description="The lowest q10 token probability of any answer served at the "
                                   "bound on the calibration split: a running answer that can no longer reach "
                                   "it is escalated at once.")
    scout_tokens_saved: float = Field(description="Share of Scout tokens not generated, calibration split.")
    coverage_lost: float = Field(description="Share of served Scout answers lost, calibration split.")


class Calibration(BaseModel):
    """A calibration file (see the module docstring)."""

    model_config = ConfigDict(extra="forbid")

    version: str = Field(description="Identifies this calibration in traces and metrics.")
    created: str = Field(description="Date it was made (ISO 8601).")
    profile: str = Field(description="Profile it was made with.")
    scout_model: str = Field(description="The Scout's served model name.")
    validator_model: str = Field(description="The Validator's served model name.")
    data: dict[str, Any] = Field(description="The calibration data: sources, split, size, digest.")
    judge: str = Field(description="How answers were labelled (serving.quality.judge).")
    epsilon: float = Field(description="Largest disagreement rate allowed among served answers.")
    delta: float = Field(description="1 - confidence of the guarantee.")
    scout: ShortcutCalibration = Field(description="The Scout's calibrated decision.")
    pre_generation: PreGeneration | None = Field(None, description="Skipping the Scout before generation.")
    early_stop: EarlyStop | None = Field(None, description="Stopping the Scout mid-answer.")
    default_complexity: float = Field(0.5, description="Complexity assumed when a request has none.")

    @classmethod
    def load(cls, path: Path) -> Calibration:
        return cls.model_validate(json.loads(Path(path).read_text()))

    def save(self, path: Path) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(self.model_dump_json(indent=1) + "\n")

    def check(self, scout_model: str, validator_model: str) -> None:
        """Refuse a file made for other models."""
        if (self.scout_model, self.validator_model) != (scout_model, validator_model):
            raise CalibrationMismatchError(
                f"calibration {self.version} was made for scout '{self.scout_model}' and validator "
                f"'{self.validator_model}', not '{scout_model}' and '{validator_model}': run "
                f"`make calibrate PROFILE={self.profile}` for these models, or remove tiering.calibration")

    def p_agree(self, tokens: Sequence[TokenLogprob] | None, finish_reason: str | None,
                complexity: float | None) -> float:
        """The calibrated probability that this Scout answer agrees with the Validator's."""
        return self.scout.model.predict(scout_features(tokens, finish_reason, complexity, self.default_complexity))


def fit_logistic(x: Sequence[Sequence[float]], y: Sequence[bool], features: Sequence[str]) -> Logistic:
    """Fit P(y | x) with scikit-learn (offline only: `infopt calibrate`)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    xa = np.asarray(x, dtype=float)
    scaler = StandardScaler().fit(xa)
    scale = np.where(scaler.scale_ > 0, scaler.scale_, 1.0)
    labels = np.asarray(y, dtype=int)
    if labels.min() == labels.max():  # one class only: a constant model says so
        p = float(np.clip(labels.mean(), 1e-4, 1 - 1e-4))
        return Logistic(features=list(features), mean=scaler.mean_.tolist(), scale=scale.tolist(),
                        coef=[0.0] * xa.shape[1], intercept=float(np.log(p / (1 - p))))
    clf = LogisticRegression(C=1.0, max_iter=1000).fit((xa - scaler.mean_) / scale, labels)
    return Logistic(features=list(features), mean=scaler.mean_.tolist(), scale=scale.tolist(),
                    coef=clf.coef_[0].tolist(), intercept=float(clf.intercept_[0]))
