"""`infopt calibrate fit`/`evaluate` on synthetic collected rows (no models): the file, its choices, the replay."""

from __future__ import annotations

import asyncio
import json
import math
import random

from infopt.calibrate import evaluate, fit, label, q10_reachable, run_fit
from serving.quality.calibration import Calibration
from serving.quality.judge import default_panel


def rows(n: int, seed: int, split: str) -> list[dict]:
    """A Scout that agrees exactly when it is sure (its token probabilities high), and a small complexity."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        sure = rng.random() < 0.6
        p = rng.uniform(0.9, 0.999) if sure else rng.uniform(0.05, 0.6)
        lps = [math.log(p)] * rng.randint(5, 20)
        answer = "Paris is the capital." if sure else "Rome, probably."
        out.append({"id": f"s:{split}:{i}", "source": "sharegpt", "split": split,
                    "messages": [{"role": "user", "content": f"question {i}"}],
                    "scout": {"text": answer, "finish_reason": "stop", "completion_tokens": len(lps),
                              "token_logprobs": lps, "top_logprobs": None},
                    "validator": {"text": "Paris is the capital.", "finish_reason": "stop", "completion_tokens": 30},
                    "analyzer": {"complexity": 0.2 if sure else 0.8},
                    "models": {"scout": "small", "validator": "large"}})
    return out


def test_fit_certifies_a_reliable_scout_and_the_evaluation_replays_it():
    cal_rows, ev_rows = rows(1400, 0, "calibration"), rows(400, 1, "evaluation")
    judge = default_panel()
    agrees = asyncio.run(label(cal_rows, judge))
    assert 0.5 < sum(agrees) / len(agrees) < 0.7
    cal = fit(cal_rows, agrees, profile="t", scout_model="small", validator_model="large", epsilon=0.01,
              delta=0.05, data={"sha256": "ab" * 32}, judge_name=judge.name, max_tokens=64)
    assert cal.scout.bound is not None and cal.scout.upper <= 0.01 and cal.scout.coverage > 0.4
    assert cal.data["fit_rows"] + cal.data["test_rows"] == 1400
    assert cal.pre_generation is not None and cal.pre_generation.coverage_lost <= 0.05
    assert cal.early_stop is not None and cal.early_stop.coverage_lost == 0.0
    result = evaluate(cal, ev_rows, asyncio.run(label(ev_rows, judge)))
    assert result["split"] == "evaluation" and result["disagreements"] == 0
    assert 0.45 < result["coverage"] < 0.75
    assert result["validator_compute_ratio"] == round(1 - result["coverage"], 4)


def test_too_few_calibration_prompts_certify_no_coverage(tmp_path):
    path = tmp_path / "cal.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows(200, 2, "calibration")))
    cal, _ = run_fit(path, tmp_path / "c.json", profile="t", epsilon=0.01, delta=0.05, embedder_path=None,
                     max_tokens=64)
    assert cal.scout.bound is None and cal.scout.coverage == 0.0  # 100 test rows cannot certify 1%
    assert Calibration.load(tmp_path / "c.json").version == cal.version


def test_early_stop_rule_is_sound():
    lp_low, lp_high = math.log(0.1), math.log(0.99)
    # max_tokens 11: k_max = floor(0.1 * 10) = 1, so the second low token settles it.
    assert q10_reachable([lp_high, lp_low, lp_high, lp_low, lp_high], 11, 0.5) == 4
    assert q10_reachable([lp_high] * 10, 11, 0.5) is None


def test_collect_warns_when_the_calibration_split_is_too_small_to_certify_anything():
    from infopt.calibrate import power_note

    # At ε = 1%, δ = 5%: 299 agreeing answers in the test half, so 598+ prompts; make calibrate's 240 cannot.
    note = power_note(240, 0.01, 0.05)
    assert note is not None and "299" in note and "120 of these 240" in note
    assert power_note(600, 0.01, 0.05) is None
    assert power_note(240, 0.05, 0.05) is None  # 59 needed: 120 in the test half suffice
