"""`infopt calibrate fit` / `evaluate`: from collected Scout and Validator answers to a calibration file and its report.

Input: the JSONL that `infopt calibrate collect` writes (`infopt.calibration_data`): one
calibration-split file to fit, one evaluation-split file to measure on. Every figure
says which split it comes from; nothing is fitted or chosen on the evaluation split.

Fitting (`fit`), on the calibration split only, itself cut in two halves by prompt id:

1. label each Scout answer with the judge (identical text; the final number for GSM8K;
   otherwise all-MiniLM cosine >= 0.9 — `serving.quality.judge`);
2. fit P(agree | the Scout's signals) with scikit-learn on the *fit* half;
3. choose the bound on that probability by Learn-then-Test on the other, *test* half
   (`serving.quality.risk`): disagreement among served answers <= ε at 1 - δ;
4. pre-generation: fit P(a servable Scout answer | the analyzer's complexity) on the fit
   half and pick the skip point that loses at most 5% of the test half's coverage;
5. early stop: the lowest q10 token probability of any answer served at the bound; a
   running answer that can no longer reach it is escalated at once (measured: the Scout
   tokens it saves and the coverage it loses, test half).

`evaluate` replays the calibrated decision on the evaluation split: coverage, measured
disagreement of the served answers with its Clopper-Pearson bound, and the Validator
compute ratio against validator-only (completion tokens the Validator generates).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from serving.engines.base import TokenLogprob
from serving.quality.calibration import (
    FEATURES,
    Calibration,
    CurvePoint,
    EarlyStop,
    PreGeneration,
    ShortcutCalibration,
    fit_logistic,
    q10_reachable,
    scout_features,
)
from serving.quality.judge import Judge, default_panel
from serving.quality.risk import clopper_pearson_upper, learn_then_test

MAX_COVERAGE_LOSS = 0.05


def load_rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def tokens_of(row: dict[str, Any]) -> list[TokenLogprob]:
    scout = row["scout"]
    tops = scout.get("top_logprobs") or [[] for _ in scout["token_logprobs"]]
    return [TokenLogprob("", lp, [(t, tlp) for t, tlp in top]) for lp, top in zip(scout["token_logprobs"], tops,
                                                                                  strict=False)]


def complexity_of(row: dict[str, Any]) -> float | None:
    analyzer = row.get("analyzer") or {}
    value = analyzer.get("complexity")
    return None if value is None else float(value)


def _question(row: dict[str, Any]) -> str:
    return str(row["messages"][-1]["content"])


def _kind(row: dict[str, Any]) -> str | None:
    return "gsm8k" if row.get("source") == "gsm8k" else None


async def label(rows: list[dict[str, Any]], judge: Judge) -> list[bool]:
    """Does each Scout answer say what the Validator's says?"""
    out = []
    for row in rows:
        verdict = await judge.judge(_question(row), row["validator"]["text"], row["scout"]["text"], _kind(row))
        out.append(bool(verdict and verdict.agree))
    return out


def _half(row_id: str) -> str:
    """fit / test, a pure function of the prompt id."""
    return "fit" if int(hashlib.sha256(f"half:{row_id}".encode()).hexdigest(), 16) % 2 == 0 else "test"


def fit(rows: list[dict[str, Any]], agrees: list[bool], *, profile: str, scout_model: str, validator_model: str,
        epsilon: float, delta: float, data: dict[str, Any], judge_name: str, max_tokens: int) -> Calibration:
    """A calibration from labelled calibration-split rows (see the module docstring)."""
    complexities = [complexity_of(r) for r in rows]
    known = [c for c in complexities if c is not None]
    default_c = float(np.mean(known)) if known else 0.5
    x = [scout_features(tokens_of(r), r["scout"].get("finish_reason"), c, default_c)
         for r, c in zip(rows, complexities, strict=True)]
    halves = [_half(r["id"]) for r in rows]
    fit_i = [i for i, h in enumerate(halves) if h == "fit"]
    test_i = [i for i, h in enumerate(halves) if h == "test"]
    model = fit_logistic([x[i] for i in fit_i], [agrees[i] for i in fit_i], FEATURES)
    p_test = [model.predict(x[i]) for i in test_i]
    a_test = [agrees[i] for i in test_i]
    choice = learn_then_test(p_test, a_test, epsilon=epsilon, delta=delta)
    chosen = choice.chosen
    curve = [CurvePoint(threshold=p.threshold, coverage=round(p.coverage, 5), risk=round(p.risk, 5),
                        upper=round(p.upper, 5)) for p in choice.curve[::5]]
    scout = ShortcutCalibration(model=model, bound=choice.threshold, coverage=round(choice.coverage, 5),
                                served=chosen.served if chosen else 0,
                                disagreements=chosen.disagreements if chosen else 0,
                                upper=round(chosen.upper, 5) if chosen else 1.0, curve=curve)
    bound = choice.threshold
    served_test = [bound is not None and p >= bound for p in p_test]

    pre = None
    if known:
        # Label: the Scout's answer would be served and agree (at the chosen bound; all False without one).
        p_fit = [model.predict(x[i]) for i in fit_i]
        y_fit = [bound is not None and p >= bound and agrees[i] for p, i in zip(p_fit, fit_i, strict=True)]
        c_fit = [[x[i][FEATURES.index("complexity")]] for i in fit_i]
        pre_model = fit_logistic(c_fit, y_fit, ["complexity"])
        pre_test = [pre_model.predict([x[i][FEATURES.index("complexity")]]) for i in test_i]
        n_served = sum(served_test)
        skip_below, saved, lost = None, 0.0, 0.0
        for cut in sorted(set(np.round(pre_test, 4)), reverse=True):
            skipped = [p < cut for p in pre_test]
            loss = sum(s and v for s, v in zip(skipped, served_test, strict=True)) / max(n_served, 1)
            if n_served == 0 or loss <= MAX_COVERAGE_LOSS:
                skip_below, saved, lost = float(cut), sum(skipped) / len(skipped), loss
                break
        pre = PreGeneration(model=pre_model, skip_below=skip_below, scout_work_saved=round(saved, 4),
                            coverage_lost=round(lost, 4))

    early = None
    if bound is not None and any(served_test):
        q10 = FEATURES.index("q10")
        floor = min(x[test_i[j]][q10] for j, s in enumerate(served_test) if s)
        total = saved_tokens = stopped_served = 0
        for j, i in enumerate(test_i):
            lps = rows[i]["scout"]["token_logprobs"]
            total += len(lps)
            at = q10_reachable(lps, int(rows[i].get("max_tokens") or max_tokens), floor)  # as it was asked
            if at is not None:
                saved_tokens += len(lps) - at
                stopped_served += served_test[j]
        early = EarlyStop(min_passing_q10=floor, scout_tokens_saved=round(saved_tokens / max(total, 1), 4),
                          coverage_lost=round(stopped_served / max(sum(served_test), 1), 4))

    today = dt.date.today().isoformat()
    digest = data.get("sha256", "")[:8]
    return Calibration(
        version=f"{profile}-{today}-{digest}", created=today, profile=profile, scout_model=scout_model,
        validator_model=validator_model, data={**data, "fit_rows": len(fit_i), "test_rows": len(test_i)},
        judge=judge_name, epsilon=epsilon, delta=delta, scout=scout, pre_generation=pre, early_stop=early,
        default_complexity=default_c)


def evaluate(cal: Calibration, rows: list[dict[str, Any]], agrees: list[bool]) -> dict[str, Any]:
    """The calibrated decision replayed on the evaluation split."""
    served = []
    for r in rows:
        p = cal.p_agree(tokens_of(r), r["scout"].get("finish_reason"), complexity_of(r))
        served.append(cal.scout.bound is not None and p >= cal.scout.bound)
    n = sum(served)
    k = sum(s and not a for s, a in zip(served, agrees, strict=True))
    only = sum(r["validator"]["completion_tokens"] for r in rows)
    used = sum(r["validator"]["completion_tokens"] for r, s in zip(rows, served, strict=True) if not s)
    raw_agree = sum(agrees) / max(len(agrees), 1)
    return {"split": "evaluation", "rows": len(rows), "served": n, "coverage": round(n / max(len(rows), 1), 4),
            "disagreements": k, "disagreement": round(k / n, 4) if n else None,
            "disagreement_upper": round(clopper_pearson_upper(k, n, cal.delta), 4),
            "scout_agreement_all": round(raw_agree, 4),
            "validator_completion_tokens": used, "validator_only_completion_tokens": only,
            "validator_compute_ratio": round(used / only, 4) if only else None,
            "validator_compute_saving": round(only / used, 3) if used else None}


def data_info(path: Path, rows: list[dict[str, Any]]) -> dict[str, Any]:
    sources: dict[str, int] = {}
    for r in rows:
        sources[r.get("source", "?")] = sources.get(r.get("source", "?"), 0) + 1
    return {"file": Path(path).name, "split": "calibration", "rows": len(rows), "sources": sources,
            "sha256": hashlib.sha256(Path(path).read_bytes()).hexdigest()}


def make_judge(embedder_path: str | None) -> Judge:
    embedder = None
    if embedder_path:
        from serving.cache.embedder import SentenceTransformerEmbedder

        embedder = SentenceTransformerEmbedder(embedder_path, device="cpu")
    return default_panel(embedder)


def run_fit(calibration_file: Path, out: Path, *, profile: str, epsilon: float, delta: float,
            embedder_path: str | None, max_tokens: int, evaluation_file: Path | None = None,
            report: Path | None = None) -> tuple[Calibration, dict[str, Any] | None]:
    """Label, fit, choose, write the file; evaluate on the evaluation split when given; write the report."""
    rows = load_rows(calibration_file)
    judge = make_judge(embedder_path)
    agrees = asyncio.run(label(rows, judge))
    models = {(r["models"]["scout"], r["models"]["validator"]) for r in rows}
    if len(models) != 1:
        raise ValueError(f"{calibration_file}: rows from several model pairs {sorted(map(str, models))}")
    ((scout_model, validator_model),) = models
    cal = fit(rows, agrees, profile=profile, scout_model=str(scout_model), validator_model=str(validator_model),
              epsilon=epsilon, delta=delta, data=data_info(calibration_file, rows), judge_name=judge.name,
              max_tokens=max_tokens)
    cal.save(out)
    result = None
    if evaluation_file is not None:
        ev_rows = load_rows(evaluation_file)
        result = evaluate(cal, ev_rows, asyncio.run(label(ev_rows, judge)))
        result["calibration_agreement"] = round(sum(agrees) / max(len(agrees), 1), 4)
    if report is not None:
        write_report(cal, result, report)
    return cal, result


def write_report(cal: Calibration, result: dict[str, Any] | None, path: Path) -> None:
    """Markdown with the figures and a risk-coverage plot next to it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [f"# Calibration {cal.version}", "",
             f"Profile `{cal.profile}`: Scout `{cal.scout_model}`, Validator `{cal.validator_model}`; "
             f"ε = {cal.epsilon}, δ = {cal.delta}; judge `{cal.judge}`.", "",
             f"Calibration split: {cal.data.get('rows')} prompts ({cal.data.get('sources')}), "
             f"{cal.data.get('fit_rows')} to fit, {cal.data.get('test_rows')} to choose the bound.", "",
             f"- bound on P(agree): {cal.scout.bound}; coverage {cal.scout.coverage} "
             f"({cal.scout.served} served, {cal.scout.disagreements} disagreeing, upper limit {cal.scout.upper})"]
    if cal.pre_generation is not None:
        p = cal.pre_generation
        lines.append(f"- pre-generation skip below {p.skip_below}: Scout work saved {p.scout_work_saved}, "
                     f"coverage lost {p.coverage_lost} (test half)")
    if cal.early_stop is not None:
        e = cal.early_stop
        lines.append(f"- early stop at q10 < {e.min_passing_q10:.4f}: Scout tokens saved {e.scout_tokens_saved}, "
                     f"coverage lost {e.coverage_lost} (test half)")
    if result is not None:
        lines += ["", "Evaluation split (prompts the calibration did not see):", "",
                  "```json", json.dumps(result, indent=1), "```"]
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(5, 3.2))
        cov = [p.coverage for p in cal.scout.curve]
        ax.plot(cov, [p.risk for p in cal.scout.curve], label="disagreement (test half)")
        ax.plot(cov, [p.upper for p in cal.scout.curve], "--", label=f"upper limit, {1 - cal.delta:.0%}")
        ax.axhline(cal.epsilon, color="red", lw=0.8, label=f"ε = {cal.epsilon}")
        ax.set_xlabel("coverage (share served by the Scout)")
        ax.set_ylabel("disagreement with the Validator")
        ax.set_title(f"Risk-coverage, {cal.profile}")
        ax.legend(fontsize=7)
        fig.tight_layout()
        png = path.with_suffix(".png")
        fig.savefig(png, dpi=90)
        lines += ["", f"![risk-coverage]({png.name})"]
    except ImportError:
        pass
    path.write_text("\n".join(lines) + "\n")
