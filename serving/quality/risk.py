"""Distribution-free risk control: choose where a shortcut may serve so its error stays under ε.

A shortcut (a kept Scout answer, a semantic cache hit) serves when a score passes a
threshold λ. Its *risk* at λ is the disagreement rate with the Validator among the answers
it serves. From a calibration set of (score, agrees) pairs we pick λ so that

    P(risk(λ) ≤ ε) ≥ 1 - δ

with **Learn then Test** (Angelopoulos et al., 2021): every candidate λ, strictest first,
is a null hypothesis H(λ): risk(λ) > ε, tested with the exact binomial p-value
P(Bin(n_λ, ε) ≤ k_λ) (n_λ answers served at λ, k_λ of them disagreeing). Fixed-sequence
testing walks the candidates from strict to loose and stops at the first one it cannot
reject; the loosest rejected λ is chosen. Each test uses the whole δ and the family-wise
error stays ≤ δ because the order is fixed in advance. The sequence starts at the first
threshold that serves at least `min_served` answers: a start chosen from the scores alone,
never from the labels (a threshold serving three answers can never be certified, and
stopping there would end the sequence before it began). No λ rejected: the shortcut never
serves (a finding, not a failure).

How much data a guarantee needs: with no disagreement at all, certifying ε = 1% at
δ = 5% takes 299 served answers (0.99^299 < 0.05); fewer calibration prompts cannot
certify any coverage at that level, whatever the Scout's quality.

The same bound, Clopper-Pearson's exact upper confidence limit, is what the live audit
reports for a running disagreement estimate (`clopper_pearson_upper`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats


def clopper_pearson_upper(k: int, n: int, delta: float) -> float:
    """The exact (1 - δ) upper confidence limit of a binomial rate with k events in n trials (1.0 when n is 0)."""
    if n <= 0 or k >= n:
        return 1.0
    return float(stats.beta.ppf(1.0 - delta, k + 1, n - k))


def min_certifiable(epsilon: float, delta: float) -> int:
    """The fewest served answers that can certify risk ≤ ε at 1 - δ: with no disagreement, (1 - ε)^n ≤ δ."""
    return int(np.ceil(np.log(delta) / np.log1p(-epsilon)))


def binomial_p_value(k: int, n: int, epsilon: float) -> float:
    """P(Bin(n, ε) ≤ k): small when k disagreements in n served answers are unlikely under risk > ε."""
    if n <= 0:
        return 1.0
    return float(stats.binom.cdf(k, n, epsilon))


@dataclass(frozen=True)
class RiskPoint:
    """The shortcut at one threshold: how much it serves, how often it disagrees, and the bound."""

    threshold: float
    served: int
    disagreements: int
    coverage: float  # served / all
    risk: float  # disagreements / served (0 when nothing is served)
    upper: float  # Clopper-Pearson upper limit of the risk at 1 - δ
    p_value: float


@dataclass(frozen=True)
class ThresholdChoice:
    """The chosen threshold (None: no threshold is safe, the shortcut never serves) and the curve it came from."""

    threshold: float | None
    epsilon: float
    delta: float
    n: int
    curve: tuple[RiskPoint, ...]

    @property
    def chosen(self) -> RiskPoint | None:
        return next((p for p in self.curve if p.threshold == self.threshold), None)

    @property
    def coverage(self) -> float:
        return self.chosen.coverage if self.chosen else 0.0


def risk_curve(scores: Sequence[float], agrees: Sequence[bool], thresholds: Sequence[float],
               delta: float, epsilon: float) -> list[RiskPoint]:
    """Coverage, risk and its bound at each threshold (serve when score >= threshold)."""
    s = np.asarray(scores, dtype=float)
    wrong = ~np.asarray(agrees, dtype=bool)
    out = []
    for t in thresholds:
        served = s >= t
        n, k = int(served.sum()), int((served & wrong).sum())
        out.append(RiskPoint(float(t), n, k, n / max(len(s), 1), k / n if n else 0.0,
                             clopper_pearson_upper(k, n, delta), binomial_p_value(k, n, epsilon)))
    return out


def learn_then_test(scores: Sequence[float], agrees: Sequence[bool], *, epsilon: float, delta: float,
                    thresholds: Sequence[float] | None = None, min_served: int = 30) -> ThresholdChoice:
    """The loosest threshold whose risk is ≤ ε with confidence 1 - δ (fixed-sequence testing, strict first)."""
    if len(scores) != len(agrees):
        raise ValueError("scores and agrees differ in length")
    grid = sorted(set(thresholds) if thresholds is not None else set(np.round(np.linspace(0, 1, 201), 4)),
                  reverse=True)
    curve = risk_curve(scores, agrees, grid, delta, epsilon)
    # Below this many served answers even zero disagreements cannot reject H(λ).
    start = max(min_served, min_certifiable(epsilon, delta))
    chosen: float | None = None
    for point in curve:  # strictest first
        if point.served < start and chosen is None:
            continue  # the sequence starts where enough is served (decided by the scores, not the labels)
        if point.p_value > delta:
            break  # the first hypothesis not rejected ends the sequence
        chosen = point.threshold
    return ThresholdChoice(chosen, epsilon, delta, len(scores), tuple(curve))
