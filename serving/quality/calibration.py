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

The file may also hold the semantic cache's part (`CacheCalibration`, `infopt calibrate
cache`): the similarity threshold above which a guarded semantic hit is a false hit (a
non-duplicate served) at most ε of the time, with confidence 1 - δ, chosen the same way on
labelled paraphrase pairs (QQP) embedded by one embedder; serving applies it only for that
embedder (`serving.policy.cache.threshold_in_force`). The file's `version` names the parts
it holds: `<scout part>+<cache part>` (e.g. `tiny-2026-12-02-232ff313+cache-2026-12-10-0a1b2c3d`).

File format (`format`): 1, the Scout part only (files without the field); 2, the Scout
part and/or the cache part. A file of a later format is refused with the command to run.

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
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from serving.engines.base import TokenLogprob

FORMAT = 2  # the calibration file format this code writes (see the module docstring)
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


class EmbedderIdentity(BaseModel):
    """The embedder a cache calibration was made with: its similarities mean nothing for another one."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(description="`cache.embedder.model` as configured (catalog name, folder or hub ID).")
    dimension: int = Field(description="Size of its vectors.")
    sha256: str | None = Field(None, description="sha256 of its weights (model.safetensors) when known.")


class VerifierIdentity(BaseModel):
    """The pair verifier a cache calibration was made with: its scores mean nothing for another one."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(description="`cache.verifier.model` as configured (catalog name, folder or hub ID).")
    sha256: str | None = Field(None, description="sha256 of its weights (model.safetensors) when known.")
    propose_threshold: float = Field(description="The similarity floor below which no pair was proposed to it.")


class CacheCurvePoint(BaseModel):
    """The semantic cache at one similarity threshold, on one split of labelled pairs."""

    model_config = ConfigDict(extra="forbid")

    threshold: float
    served: int = Field(description="Pairs served: similarity >= threshold and no guard veto.")
    false_hits: int = Field(description="Served pairs that are not duplicates.")
    risk: float = Field(description="false_hits / served (0 when nothing is served).")
    upper: float = Field(description="Clopper-Pearson upper limit of the risk at 1 - δ (pointwise).")
    recall: float = Field(description="Duplicates served / duplicates.")


class CacheSplitResult(BaseModel):
    """The semantic decision at one threshold replayed on one split."""

    model_config = ConfigDict(extra="forbid")

    split: str = Field(description="Which split of the data ('calibration', 'evaluation').")
    pairs: int
    duplicates: int
    threshold: float | None = Field(description="The threshold replayed (None: nothing served).")
    served: int
    false_hits: int
    false_hit_rate: float | None = Field(description="false_hits / served (None when nothing is served).")
    upper: float = Field(description="Clopper-Pearson upper limit of the false-hit rate at 1 - δ.")
    recall: float = Field(description="Duplicates served / duplicates.")


class CacheCalibration(BaseModel):
    """The semantic cache's calibrated decision: serve a guarded candidate at similarity >= `threshold`."""

    model_config = ConfigDict(extra="forbid")

    version: str = Field(description="Identifies the cache part (`cache-<date>-<digest>`).")
    created: str = Field(description="Date it was made (ISO 8601).")
    embedder: EmbedderIdentity = Field(description="The embedder whose similarities were calibrated.")
    guards: bool = Field(description="Whether the false-hit guards were applied (as `cache.guards`).")
    normalisation: str = Field("serving.policy.cache.normalize",
                               description="How questions were normalised before embedding (the cache's own).")
    data: dict[str, Any] = Field(description="The labelled pairs: source, file, digest, split rule, sizes.")
    epsilon: float = Field(description="Largest false-hit rate allowed among served pairs.")
    delta: float = Field(description="1 - confidence of the guarantee.")
    rule: Literal["threshold", "verifier"] = Field(
        "threshold", description="The decision calibrated: 'threshold' (the similarity of a guarded candidate) or "
        "'verifier' (the pair verifier's score of a guarded candidate proposed at its similarity floor).")
    verifier: VerifierIdentity | None = Field(None, description="The verifier whose scores were calibrated (rule "
                                              "'verifier').")
    threshold: float | None = Field(description="Risk-controlled threshold on the rule's score (similarity, or the "
                                    "verifier's score); None: none is certifiable (serving keeps the configured one "
                                    "and says so).")
    served: int = Field(description="Calibration-split pairs served at the threshold.")
    false_hits: int = Field(description="Of which not duplicates.")
    upper: float = Field(description="Clopper-Pearson upper limit of the false-hit rate at the threshold.")
    recall: float = Field(description="Share of the calibration split's duplicates served at the threshold.")
    curve: list[CacheCurvePoint] = Field(default_factory=list,
                                         description="The risk-recall curve on the calibration split.")
    evaluation: CacheSplitResult | None = Field(None, description="The threshold replayed on the evaluation split.")

    def check(self, embedder_model: str, dimension: int, guards: bool, verifier_model: str | None = None,
              propose_threshold: float | None = None) -> None:
        """Refuse a cache part made for another embedder, with the guards set otherwise, or for another rule or
        verifier than the profile decides by."""
        wrong: list[str] = []
        if self.rule == "verifier" and self.verifier is not None:
            if (self.verifier.model, self.verifier.propose_threshold) != (verifier_model, propose_threshold):
                wrong.append(f"was made for verifier '{self.verifier.model}' proposed at similarity >= "
                             f"{self.verifier.propose_threshold}, and the profile has cache.verifier "
                             f"'{verifier_model}' at {propose_threshold}")
        elif verifier_model is not None:
            wrong.append(f"calibrated the similarity threshold, and the profile decides by the verifier "
                         f"'{verifier_model}'")
        if (self.embedder.model, self.embedder.dimension) != (embedder_model, dimension):
            wrong.append(f"was made for embedder '{self.embedder.model}' ({self.embedder.dimension}-d), not "
                         f"'{embedder_model}' ({dimension}-d): its threshold says nothing about this embedder's "
                         "similarities")
        if self.guards != guards:
            wrong.append(f"was made with cache.guards {self.guards}, and the profile has {guards}")
        if wrong:
            raise CalibrationMismatchError(f"the cache calibration {self.version} {'; it '.join(wrong)}: run "
                                           "`infopt calibrate cache` for this profile (with its guards)")


class CalibrationFormatError(ValueError):
    """A calibration file of a format this code does not know (made by a later version)."""


class Calibration(BaseModel):
    """A calibration file (see the module docstring): the Scout's part, the cache's part, or both."""

    model_config = ConfigDict(extra="forbid")

    format: int = Field(FORMAT, description="File format: 1 (Scout only, files without the field) or 2.")
    version: str = Field(description="Identifies this calibration in traces and metrics (its parts, '+'-joined).")
    created: str = Field(description="Date it was made (ISO 8601).")
    profile: str = Field(description="Profile it was made with.")
    scout_model: str | None = Field(None, description="The Scout's served model name (with a Scout part).")
    validator_model: str | None = Field(None, description="The Validator's served model name (with a Scout part).")
    data: dict[str, Any] = Field(default_factory=dict, description="The Scout's calibration data: sources, split, "
                                 "size, digest.")
    judge: str | None = Field(None, description="How answers were labelled (serving.quality.judge).")
    epsilon: float = Field(description="Largest disagreement rate allowed among served answers.")
    delta: float = Field(description="1 - confidence of the guarantee.")
    scout: ShortcutCalibration | None = Field(None, description="The Scout's calibrated decision (None: the file "
                                              "holds the cache part only).")
    pre_generation: PreGeneration | None = Field(None, description="Skipping the Scout before generation.")
    early_stop: EarlyStop | None = Field(None, description="Stopping the Scout mid-answer.")
    default_complexity: float = Field(0.5, description="Complexity assumed when a request has none.")
    cache: CacheCalibration | None = Field(None, description="The semantic cache's calibrated threshold.")

    @model_validator(mode="before")
    @classmethod
    def _format(cls, data: Any) -> Any:
        if isinstance(data, dict):
            data = {"format": 1, **data}  # files written before the field are format 1
            if not isinstance(data["format"], int) or not 1 <= data["format"] <= FORMAT:
                raise CalibrationFormatError(
                    f"calibration file format {data['format']!r} is not one this code reads (1-{FORMAT}): it was "
                    f"made by a later infopt; update, or re-run `make calibrate`")
        return data

    @model_validator(mode="after")
    def _parts(self) -> Calibration:
        if self.scout is None and self.cache is None:
            raise ValueError("a calibration file holds a Scout part, a cache part or both")
        if self.scout is not None and not (self.scout_model and self.validator_model and self.judge):
            raise ValueError("a Scout part needs scout_model, validator_model and judge")
        return self

    @classmethod
    def load(cls, path: Path) -> Calibration:
        data = json.loads(Path(path).read_text())
        try:
            return cls.model_validate(data)
        except ValidationError:
            fmt = data.get("format") if isinstance(data, dict) else None
            if isinstance(fmt, int) and fmt > FORMAT:
                raise CalibrationFormatError(f"{path}: calibration file format {fmt} is later than this code's "
                                             f"({FORMAT}): update infopt, or re-run `make calibrate`") from None
            raise

    def save(self, path: Path) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(self.model_dump_json(indent=1) + "\n")

    @property
    def scout_version(self) -> str | None:
        """The Scout part's own version (None without one)."""
        return self.version.split("+", 1)[0] if self.scout is not None else None

    def with_cache(self, cache: CacheCalibration | None) -> Calibration:
        """This calibration with `cache` as its cache part (None: without one); the version names the parts."""
        if cache is None and self.scout is None:
            raise ValueError("a calibration without a Scout part needs its cache part")
        base = self.scout_version or self.profile
        version = base if cache is None else f"{base}+{cache.version}"
        return self.model_copy(update={"cache": cache, "version": version, "format": FORMAT})

    def check(self, scout_model: str, validator_model: str) -> None:
        """Refuse a file made for other models (a file without a Scout part names none: nothing to refuse)."""
        if self.scout is None:
            return
        if (self.scout_model, self.validator_model) != (scout_model, validator_model):
            raise CalibrationMismatchError(
                f"calibration {self.version} was made for scout '{self.scout_model}' and validator "
                f"'{self.validator_model}', not '{scout_model}' and '{validator_model}': run "
                f"`make calibrate PROFILE={self.profile}` for these models, or remove tiering.calibration")

    def p_agree(self, tokens: Sequence[TokenLogprob] | None, finish_reason: str | None,
                complexity: float | None) -> float:
        """The calibrated probability that this Scout answer agrees with the Validator's."""
        if self.scout is None:
            raise ValueError(f"calibration {self.version} has no Scout part")
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
