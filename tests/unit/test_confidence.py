import math

import pytest

from serving.confidence import confidence, describe
from serving.config import ConfidenceConfig

Q10 = ConfidenceConfig(method="quantile", quantile=0.1)
MIN = ConfidenceConfig(method="min")


def lp(*probs: float) -> list[float]:
    return [math.log(p) for p in probs]


def test_empty_answer_is_not_confident():
    assert confidence([], Q10) == 0.0
    assert confidence([], MIN) == 0.0


def test_min_is_the_least_likely_token():
    assert confidence(lp(0.9, 0.2, 0.99), MIN) == pytest.approx(0.2)


def test_quantile_picks_a_real_probability_at_the_lower_tail():
    # 11 tokens: k = floor(0.1 * 10) = 1 -> the second smallest.
    probs = [0.99] * 9 + [0.3, 0.6]
    assert confidence(lp(*probs), Q10) == pytest.approx(0.6)


def test_quantile_zero_equals_min():
    seq = lp(0.9, 0.4, 0.7)
    assert confidence(seq, ConfidenceConfig(method="quantile", quantile=0.0)) == confidence(seq, MIN)


def test_one_wrong_token_in_a_long_fluent_answer_is_not_averaged_away():
    # A mean of log-probs would call this confident (exp(mean) ~ 0.96); min does not.
    seq = lp(*([0.999] * 60 + [0.05]))
    mean_based = math.exp(sum(seq) / len(seq))
    assert mean_based > 0.9
    assert confidence(seq, MIN) == pytest.approx(0.05)


def test_length_does_not_inflate_the_quantile():
    # Same per-token distribution (1 hesitant token in 10) at two lengths -> same score.
    short = lp(*([0.95] * 9 + [0.2]))
    long = lp(*(([0.95] * 9 + [0.2]) * 10))
    assert confidence(short, ConfidenceConfig(quantile=0.05)) == pytest.approx(
        confidence(long, ConfidenceConfig(quantile=0.05))
    )


def test_positive_and_infinite_logprobs_are_clamped():
    assert confidence([0.0000001, -math.inf], MIN) == 0.0
    assert confidence([0.2], MIN) == 1.0


def test_nan_is_rejected():
    with pytest.raises(ValueError):
        confidence([float("nan")], MIN)


def test_describe():
    assert describe(MIN) == "min"
    assert describe(Q10) == "quantile(q=0.1)"
