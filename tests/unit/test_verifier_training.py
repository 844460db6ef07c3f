"""The verifier's training data and the frontier that chooses among cache decisions (no training here: the
trained verifier is tested in tests/serve)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from infopt import verifier_training as vt
from infopt.calibrate import load_qqp, qqp_split

DATA = Path(__file__).resolve().parents[3] / "shared" / "data"


def test_the_frontier_is_the_best_recall_within_the_false_hit_target():
    # 4 duplicates, 100 non-duplicates; one non-duplicate scores high (0.9), one pair can never be served.
    scores = [0.95, 0.9, 0.8, 0.7, -math.inf] + [0.9] + [0.1] * 99
    dup = [True, True, True, True, True] + [False] * 100
    f = vt.frontier(scores, dup, target=0.01)
    assert f["best"] == {"threshold": 0.7, "recall": 0.8, "false_hit_rate": 0.01, "precision": 0.8}
    strict = vt.frontier(scores, dup, target=0.0)["best"]
    assert strict["threshold"] == 0.95 and strict["recall"] == 0.2  # 0.9 serves a non-duplicate too (a tie)
    assert vt.frontier([-math.inf, 0.5], [True, False], target=0.0)["best"] is None


@pytest.mark.skipif(not (DATA / "qqp").is_dir(), reason="../shared/data (QQP, STS-B) is not beside the repository")
def test_the_train_split_is_apart_from_calibration_and_evaluation():
    pairs = load_qqp(DATA / "qqp" / "qqp_dev.tsv")
    split = qqp_split(pairs, vt.CALIBRATION_SHARE, train_share=vt.TRAIN_SHARE)
    questions = {name: {q for p in ps for q in (p.qid1, p.qid2)} for name, ps in split.items()}
    assert not questions["train"] & questions["calibration"] and not questions["train"] & questions["evaluation"]
    # The evaluation split is the one `infopt calibrate cache` replays on (no train split there).
    assert [p.id for p in split["evaluation"]] == [p.id for p in qqp_split(pairs)["evaluation"]]
    train, data = vt.training_pairs(DATA, vt.Recipe())
    assert len(train) == data["qqp"]["train_pairs"] + data["stsb"]["pairs"]
    assert all(0.0 <= y <= 1.0 for _, _, y in train)
    assert data["qqp"]["train_pairs"] == len(split["train"])
