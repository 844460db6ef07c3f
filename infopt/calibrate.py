"""`infopt calibrate fit` / `evaluate` / `cache`: from collected Scout and Validator answers, and from labelled
paraphrase pairs, to a calibration file and its reports.

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

`cache` (`run_cache`) calibrates the semantic cache's similarity threshold on Quora Question
Pairs (`../shared/data/qqp/qqp_dev.tsv`, GLUE dev): each pair is a cached question and a new
one; both are normalised as the cache does (`serving.policy.cache.normalize`) and embedded by
the profile's embedder, and the cache's own guards judge them (`serving.policy.cache.vetoed_by`,
what `judge_candidate` asks). At threshold t a pair is *served* when no guard vetoes it and its
cosine is >= t; a served non-duplicate is a false hit. The pairs are cut in two splits by
question: pairs sharing a question are one group, and a group is in the calibration split when
sha256("qqp:" + its smallest question id) falls in the first `calibration_share` of the hash
range, else in the evaluation split (no question is in both). On the calibration split,
Learn-then-Test (`serving.quality.risk.learn_then_test`, strictest threshold first) chooses the
lowest threshold whose false-hit rate among served pairs is <= ε with confidence 1 - δ; the
evaluation split replays it (recall = duplicates served / duplicates, and the false-hit rate
with its Clopper-Pearson bound). The cache part is written into the profile's calibration
file (a Scout part there is kept as it is); the report goes to
reports/calibration/cache-<profile>.{json,md,png}.
"""

from __future__ import annotations

import asyncio
import csv
import datetime as dt
import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from serving.config.cache import CacheConfig
from serving.engines.base import TokenLogprob
from serving.policy.cache import normalize, vetoed_by
from serving.quality.calibration import (
    FEATURES,
    CacheCalibration,
    CacheCurvePoint,
    CacheSplitResult,
    Calibration,
    CurvePoint,
    EarlyStop,
    EmbedderIdentity,
    PreGeneration,
    ShortcutCalibration,
    VerifierIdentity,
    fit_logistic,
    q10_reachable,
    scout_features,
)
from serving.quality.judge import Judge, default_panel
from serving.quality.risk import (
    ThresholdChoice,
    clopper_pearson_upper,
    learn_then_test,
    min_certifiable,
    risk_curve,
)

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


def power_note(n: int, epsilon: float, delta: float) -> str | None:
    """A warning when `n` calibration prompts cannot certify any bound at (ε, δ), else None.

    About half of them (the test half, `_half`) choose the bound, and certifying a disagreement rate of at most
    ε with confidence 1 - δ needs at least `min_certifiable(ε, δ)` served answers there, all agreeing (299 at
    ε = 1%, δ = 5%). With fewer, the calibration reports no bound whatever the Scout does."""
    need = min_certifiable(epsilon, delta)
    if n // 2 >= need:
        return None
    return (f"note: about {n // 2} of these {n} prompts choose the bound; certifying a disagreement of at most "
            f"{epsilon:g} with confidence {1 - delta:g} needs at least {need} served answers there, all agreeing, "
            f"so no bound can be certified at this size (draw {2 * need} or more, e.g. CAL_N={2 * need + 100}, or "
            f"allow a larger quality.max_disagreement)")


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
    cal = _keep_cache_part(cal, out)
    cal.save(out)
    result = None
    if evaluation_file is not None:
        ev_rows = load_rows(evaluation_file)
        result = evaluate(cal, ev_rows, asyncio.run(label(ev_rows, judge)))
        result["calibration_agreement"] = round(sum(agrees) / max(len(agrees), 1), 4)
    if report is not None:
        write_report(cal, result, report)
    return cal, result


def _keep_cache_part(cal: Calibration, out: Path) -> Calibration:
    """`cal` with the cache part of the file it replaces (`infopt calibrate cache` made it; it does not depend on
    the Scout's models). An unreadable old file is replaced whole."""
    try:
        previous = Calibration.load(out) if Path(out).exists() else None
    except (OSError, ValueError):
        previous = None
    return cal.with_cache(previous.cache) if previous is not None and previous.cache is not None else cal


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


# -- the semantic cache's similarity threshold (`infopt calibrate cache`) -------------------------------------

QQP_FILE = Path("qqp") / "qqp_dev.tsv"
# Candidate thresholds, 0.70 to 1.00 in steps of 0.0025 (tested strictest first: the grid's size costs no δ).
CACHE_THRESHOLDS = tuple(round(0.70 + 0.0025 * i, 4) for i in range(121))
# The verifier's score thresholds, 0.05 to 0.9975 in steps of 0.0025.
VERIFIER_THRESHOLDS = tuple(round(0.05 + 0.0025 * i, 4) for i in range(380))
# What the report also shows: the ε these labels can certify, and the threshold each gives.
EPSILON_LADDER = (0.01, 0.02, 0.05, 0.1)
MIN_PLOTTED = 30  # the plot leaves out thresholds serving fewer pairs (their bounds say nothing)
SPLIT_RULE = ("pairs sharing a question form one group; a group is in the calibration split when "
              "sha256('qqp:' + its smallest question id) is in the first `calibration_share` of the hash range, "
              "else in the evaluation split (no question is in both)")


@dataclass(frozen=True)
class QQPPair:
    """One QQP pair: `q1` is taken as the cached question, `q2` as the new one."""

    id: str
    qid1: str
    qid2: str
    q1: str
    q2: str
    duplicate: bool


def load_qqp(path: Path) -> list[QQPPair]:
    """QQP in GLUE layout (no header: id, qid1, qid2, question1, question2, is_duplicate); malformed lines skipped."""
    pairs = []
    with Path(path).open(newline="", encoding="utf-8") as f:
        for row in csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE):
            if len(row) == 6 and row[5] in ("0", "1"):
                pairs.append(QQPPair(row[0], row[1], row[2], row[3], row[4], row[5] == "1"))
    return pairs


def _in_share(key: str, share: float) -> bool:
    return int(hashlib.sha256(f"qqp:{key}".encode()).hexdigest()[:16], 16) / 16**16 < share


def qqp_split(pairs: Sequence[QQPPair], calibration_share: float = 0.5, *, train_share: float = 0.0
              ) -> dict[str, list[QQPPair]]:
    """The calibration and evaluation splits (`SPLIT_RULE`): a pure function of the question ids. With
    `train_share`, the groups in the first `train_share` of the hash range form a train split (the cache's
    pair verifier learns there) carved from the calibration share; the evaluation split is unchanged."""
    if not 0 <= train_share <= calibration_share:
        raise ValueError(f"train_share {train_share} must be within [0, calibration_share {calibration_share}]")
    parent: dict[str, str] = {}

    def root(q: str) -> str:
        parent.setdefault(q, q)
        while parent[q] != q:
            parent[q] = parent[parent[q]]
            q = parent[q]
        return q

    for p in pairs:
        a, b = root(p.qid1), root(p.qid2)
        if a != b:
            parent[max(a, b)] = min(a, b)  # the smallest id becomes the group's root
    out: dict[str, list[QQPPair]] = {"calibration": [], "evaluation": []}
    if train_share:
        out = {"train": [], **out}
    for p in pairs:
        group = root(p.qid1)
        if train_share and _in_share(group, train_share):
            out["train"].append(p)
        else:
            out["calibration" if _in_share(group, calibration_share) else "evaluation"].append(p)
    return out


def pair_similarities(embed: Callable[[list[str]], Sequence[Sequence[float]]], pairs: Sequence[QQPPair]
                      ) -> np.ndarray:
    """Cosine similarity of each pair's questions as the cache compares them: normalised, then embedded by
    `embed` (unit vectors, each distinct text once)."""
    texts = sorted({normalize(t) for p in pairs for t in (p.q1, p.q2)})
    index = {t: i for i, t in enumerate(texts)}
    vecs = np.asarray(embed(texts), dtype=np.float32).reshape(len(texts), -1)
    a = vecs[[index[normalize(p.q1)] for p in pairs]]
    b = vecs[[index[normalize(p.q2)] for p in pairs]]
    return (a * b).sum(axis=1).astype(float)


def guards_pass(config: CacheConfig, pairs: Sequence[QQPPair]) -> np.ndarray:
    """Whether the cache's guards (as `config` has them) let each pair be served above the threshold."""
    return np.array([vetoed_by(config, normalize(p.q1), normalize(p.q2)) is None for p in pairs], dtype=bool)


def cache_scores(sims: np.ndarray, ok: np.ndarray) -> np.ndarray:
    """The score a served pair must clear: its similarity, or -inf when a guard vetoes it (never served)."""
    return np.where(np.asarray(ok, dtype=bool), np.asarray(sims, dtype=float), -np.inf)


def cache_curve(sims: np.ndarray, dup: np.ndarray, ok: np.ndarray, thresholds: Sequence[float],
                *, delta: float, epsilon: float) -> list[CacheCurvePoint]:
    """False hits among served pairs, their bound and the recall, per threshold (strictest first)."""
    dup = np.asarray(dup, dtype=bool)
    scores = cache_scores(sims, ok)
    n_dup = max(int(dup.sum()), 1)
    out = []
    for p in risk_curve(scores, dup, sorted(thresholds, reverse=True), delta, epsilon):
        out.append(CacheCurvePoint(threshold=p.threshold, served=p.served, false_hits=p.disagreements,
                                   risk=round(p.risk, 6), upper=round(p.upper, 6),
                                   recall=round(int(((scores >= p.threshold) & dup).sum()) / n_dup, 6)))
    return out


def choose_cache_threshold(sims: np.ndarray, dup: np.ndarray, ok: np.ndarray, *, epsilon: float, delta: float,
                           thresholds: Sequence[float] = CACHE_THRESHOLDS) -> ThresholdChoice:
    """Learn-then-Test on labelled pairs: the lowest threshold whose false-hit rate among served pairs is <= ε
    with confidence 1 - δ (None: no threshold is certifiable on these pairs)."""
    return learn_then_test(cache_scores(sims, ok), np.asarray(dup, dtype=bool), epsilon=epsilon, delta=delta,
                           thresholds=thresholds)


def replay_cache(threshold: float | None, sims: np.ndarray, dup: np.ndarray, ok: np.ndarray, *, delta: float,
                 split: str) -> CacheSplitResult:
    """The decision at `threshold` on one split: served pairs, false hits with their bound, recall."""
    dup = np.asarray(dup, dtype=bool)
    served = (cache_scores(sims, ok) >= threshold) if threshold is not None else np.zeros(len(dup), dtype=bool)
    n, k = int(served.sum()), int((served & ~dup).sum())
    return CacheSplitResult(split=split, pairs=len(dup), duplicates=int(dup.sum()), threshold=threshold, served=n,
                            false_hits=k, false_hit_rate=round(k / n, 6) if n else None,
                            upper=round(clopper_pearson_upper(k, n, delta), 6),
                            recall=round(int((served & dup).sum()) / max(int(dup.sum()), 1), 6))


@dataclass
class LabelledSplit:
    """One split's pairs as the cache sees them: similarities, duplicate labels, guard verdicts."""

    name: str
    sims: np.ndarray
    dup: np.ndarray
    ok: np.ndarray


def _whole_hundredth(t: float) -> bool:
    return abs(t * 100 - round(t * 100)) < 1e-6


def calibrate_cache(cal: LabelledSplit, ev: LabelledSplit | None, *, embedder: EmbedderIdentity, guards: bool,
                    epsilon: float, delta: float, data: dict[str, Any],
                    thresholds: Sequence[float] = CACHE_THRESHOLDS,
                    verifier: VerifierIdentity | None = None) -> CacheCalibration:
    """The cache part of a calibration file: chosen on `cal`, replayed on `ev` (see the module docstring). The
    file keeps the curve at whole hundredths and the chosen threshold (the report has every point)."""
    choice = choose_cache_threshold(cal.sims, cal.dup, cal.ok, epsilon=epsilon, delta=delta, thresholds=thresholds)
    curve = [p for p in cache_curve(cal.sims, cal.dup, cal.ok, thresholds, delta=delta, epsilon=epsilon)
             if _whole_hundredth(p.threshold) or p.threshold == choice.threshold]
    at = replay_cache(choice.threshold, cal.sims, cal.dup, cal.ok, delta=delta, split=cal.name)
    today = dt.date.today().isoformat()
    ident = json.dumps([data.get("sha256"), embedder.model_dump(), guards, epsilon, delta]
                       + ([verifier.model_dump()] if verifier is not None else []), sort_keys=True)
    return CacheCalibration(
        version=f"cache-{today}-{hashlib.sha256(ident.encode()).hexdigest()[:8]}", created=today,
        embedder=embedder, guards=guards, data=data, epsilon=epsilon, delta=delta, threshold=choice.threshold,
        rule="verifier" if verifier is not None else "threshold", verifier=verifier,
        served=at.served, false_hits=at.false_hits, upper=at.upper, recall=at.recall,
        curve=curve,
        evaluation=replay_cache(choice.threshold, ev.sims, ev.dup, ev.ok, delta=delta, split=ev.name)
        if ev is not None else None)


def embedder_identity(model: str, path: str, dimension: int) -> EmbedderIdentity:
    """The configured embedder and the sha256 of its weights (the catalog's pin, else model.safetensors hashed)."""
    from serving.models import CATALOG

    sha = CATALOG[model].sha256 if model in CATALOG else None
    return EmbedderIdentity(model=model, dimension=dimension, sha256=sha or weights_sha256(path))


def weights_sha256(folder: str | Path) -> str | None:
    """sha256 of a model folder's model.safetensors (None when it has none: a hub ID, a fake)."""
    weights = Path(folder) / "model.safetensors"
    if not weights.is_file():
        return None
    digest = hashlib.sha256()
    with weights.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def run_cache(config: Any, out: Path, *, data_dir: Path, embedder_path: str, epsilon: float, delta: float,
              calibration_share: float = 0.5, report_dir: Path | None = None, limit: int | None = None,
              reembed: bool = False, embed: Callable[[list[str]], Sequence[Sequence[float]]] | None = None,
              verifier_path: str | None = None,
              verify: Callable[[list[tuple[str, str]]], Sequence[float]] | None = None,
              ) -> tuple[Calibration, dict[str, Any]]:
    """Calibrate `config`'s (an AppConfig) semantic cache on QQP, write the cache part into the calibration
    file `out` (keeping its Scout part) and the report; return the file and the report's figures.

    When the profile's cache decides by a pair verifier (`cache.verifier.model`), the verifier's score threshold
    is what is calibrated: pairs at similarity >= its proposal floor that the guards let through are scored by the
    verifier at `verifier_path`, and the calibration split leaves out the train split the verifier learned from
    (`infopt.verifier_training.TRAIN_SHARE`); the evaluation split is the same.

    `embed` and `verify` replace the profile's embedder and verifier (tests); similarities are kept in
    `report_dir` and reused (the embedding is the slow part) unless `reembed`."""
    qqp = Path(data_dir) / QQP_FILE
    if not qqp.exists():
        raise FileNotFoundError(f"{qqp} not found: the shared data folder beside the repository (../shared/data)")
    pairs = load_qqp(qqp)[:limit] if limit else load_qqp(qqp)
    data_sha = hashlib.sha256(qqp.read_bytes()).hexdigest()
    emb = config.cache.embedder
    identity = embedder_identity(emb.model, embedder_path, emb.dimension)

    sims = None
    sims_file = None
    if report_dir is not None:
        key = hashlib.sha256(f"{identity.model}|{identity.sha256}|{data_sha}|{len(pairs)}".encode()).hexdigest()[:12]
        sims_file = Path(report_dir) / f"cache-qqp-similarities-{key}.npy"
        if sims_file.exists() and not reembed:
            sims = np.load(sims_file)
    if sims is None:
        if embed is None:
            from serving.cache.embedder import SentenceTransformerEmbedder

            model = SentenceTransformerEmbedder(embedder_path, device="cpu")
            if model.dimension != emb.dimension:
                raise ValueError(f"{emb.model} makes {model.dimension}-d vectors; cache.embedder.dimension says "
                                 f"{emb.dimension}")
            embed = lambda texts: model.embed_sync(texts, batch_size=128)  # noqa: E731
        sims = pair_similarities(embed, pairs)
        if sims_file is not None:
            sims_file.parent.mkdir(parents=True, exist_ok=True)
            np.save(sims_file, sims)

    ok = guards_pass(config.cache, pairs)
    dup = np.array([p.duplicate for p in pairs], dtype=bool)
    thresholds: Sequence[float] = CACHE_THRESHOLDS
    verifier = None
    train_share = 0.0
    if config.cache.verifier.model is not None:
        from infopt.verifier_training import TRAIN_SHARE

        train_share = TRAIN_SHARE
        verifier, sims, ok = _verifier_scores(config.cache.verifier, pairs, sims, ok, verifier_path, verify,
                                              report_dir)
        thresholds = VERIFIER_THRESHOLDS
    splits = qqp_split(pairs, calibration_share, train_share=train_share)
    cal_ids = {p.id for p in splits["calibration"]}
    ev_ids = {p.id for p in splits["evaluation"]}
    in_cal = np.array([p.id in cal_ids for p in pairs], dtype=bool)
    in_ev = np.array([p.id in ev_ids for p in pairs], dtype=bool)

    def split(name: str, mask: np.ndarray) -> LabelledSplit:
        return LabelledSplit(name, sims[mask], dup[mask], ok[mask])

    cal, ev = split("calibration", in_cal), split("evaluation", in_ev)
    data = {"source": "QQP (GLUE dev layout), Quora terms (research use)", "file": str(QQP_FILE),
            "sha256": data_sha, "pairs": len(pairs), "split": SPLIT_RULE, "calibration_share": calibration_share,
            "train_share": train_share, "train_pairs": len(splits.get("train", [])),
            "calibration_pairs": len(cal.dup), "calibration_duplicates": int(cal.dup.sum()),
            "evaluation_pairs": len(ev.dup), "evaluation_duplicates": int(ev.dup.sum())}
    part = calibrate_cache(cal, ev, embedder=identity, guards=config.cache.guards, epsilon=epsilon, delta=delta,
                           data=data, thresholds=thresholds, verifier=verifier)

    previous = Calibration.load(out) if Path(out).exists() else None
    if previous is not None:
        calibration = previous.with_cache(part)
    else:
        calibration = Calibration(version=f"{config.profile}+{part.version}", created=part.created,
                                  profile=config.profile, epsilon=epsilon, delta=delta, cache=part)
    calibration.save(out)

    configured = config.cache.verifier.threshold if verifier is not None else config.cache.similarity_threshold
    ladder = []
    for eps in EPSILON_LADDER:
        t = choose_cache_threshold(cal.sims, cal.dup, cal.ok, epsilon=eps, delta=delta, thresholds=thresholds).threshold
        ladder.append({"epsilon": eps, "threshold": t,
                       "evaluation": replay_cache(t, ev.sims, ev.dup, ev.ok, delta=delta,
                                                  split="evaluation").model_dump()})
    report = {
        "profile": config.profile, "file": str(out), "version": calibration.version, "cache": part.model_dump(),
        "configured_threshold": configured,
        "at_configured": [replay_cache(configured, s.sims, s.dup, s.ok, delta=delta, split=s.name).model_dump()
                          for s in (cal, ev)],
        "calibration_curve": [p.model_dump() for p in cache_curve(cal.sims, cal.dup, cal.ok, thresholds,
                                                                  delta=delta, epsilon=epsilon)],
        "evaluation_curve": [p.model_dump() for p in cache_curve(ev.sims, ev.dup, ev.ok, thresholds,
                                                                 delta=delta, epsilon=epsilon)],
        "epsilon_ladder": ladder,
    }
    if report_dir is not None:
        write_cache_report(report, Path(report_dir) / f"cache-{config.profile}")
    return calibration, report


def _verifier_scores(settings: Any, pairs: Sequence[QQPPair], sims: np.ndarray, ok: np.ndarray,
                     path: str | None, verify: Callable[[list[tuple[str, str]]], Sequence[float]] | None,
                     cache_dir: Path | None = None) -> tuple[VerifierIdentity, np.ndarray, np.ndarray]:
    """The verifier's identity, its score of every proposed pair (similarity >= its floor, no guard veto), and which
    pairs were proposed (the others can never be served)."""
    from serving.cache.verifier import ENGINE_VERIFIERS

    proposed = (np.asarray(sims) >= settings.propose_threshold) & np.asarray(ok, dtype=bool)
    sha = None
    if verify is None and settings.model in ENGINE_VERIFIERS:
        # A cascade model as the cross-checker: `path` is its folder, scored offline with serving's prompt.
        if path is None:
            raise ValueError(f"the profile's cache asks the {settings.model}: give its model folder (verifier_path)")
        from infopt.cross_check import score_pairs

        sha = weights_sha256(path)
        stem = hashlib.sha256(f"{sha}|{settings.propose_threshold}|{len(pairs)}".encode()).hexdigest()[:12]
        cache_file = Path(cache_dir or ".") / f"cache-cross-check-{settings.model}-{stem}.npy"
        verify = lambda p: score_pairs(path, p, cache_file)[0]  # noqa: E731
    if verify is None:
        if path is None:
            raise ValueError("the profile's cache decides by a verifier: give its folder (verifier_path)")
        from serving.cache.verifier import CrossEncoderVerifier

        model = CrossEncoderVerifier(path)
        verify = lambda p: model.score_sync(p, batch_size=64)  # noqa: E731
        sha = weights_sha256(path)
    index = np.flatnonzero(proposed)
    scores = np.full(len(pairs), -np.inf)
    scores[index] = verify([(normalize(pairs[i].q1), normalize(pairs[i].q2)) for i in index])
    identity = VerifierIdentity(model=settings.model, sha256=sha, propose_threshold=settings.propose_threshold)
    return identity, scores, proposed


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x:.2%}"


def write_cache_report(report: dict[str, Any], stem: Path) -> None:
    """`<stem>.json`, `.md` and `.png` (false hits among served pairs and their bound vs recall, both splits)."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps(report, indent=1) + "\n")
    part = CacheCalibration.model_validate(report["cache"])
    cal_curve = [CacheCurvePoint.model_validate(p) for p in report["calibration_curve"]]
    ev_curve = [CacheCurvePoint.model_validate(p) for p in report["evaluation_curve"]]
    d = part.data
    lines = [
        f"# Semantic cache calibration, profile `{report['profile']}` ({report['version']})", "",
        f"Embedder `{part.embedder.model}` ({part.embedder.dimension}-d, sha256 {str(part.embedder.sha256)[:12]}); "
        f"guards {'on' if part.guards else 'off'}; normalisation `{part.normalisation}`. "
        f"ε = {part.epsilon} (false hits among served pairs), δ = {part.delta}. Made {part.created}.", "",
        f"Data: {d['source']}, `{d['file']}` ({d['pairs']} pairs). Split: {d['split']} (share "
        f"{d['calibration_share']}): **calibration** {d['calibration_pairs']} pairs ({d['calibration_duplicates']} "
        f"duplicates), **evaluation** {d['evaluation_pairs']} pairs ({d['evaluation_duplicates']} duplicates).", "",
    ]
    if part.threshold is None:
        lines.append(f"**No threshold is certifiable** at ε = {part.epsilon}, δ = {part.delta} on the calibration "
                     f"split: serving keeps `cache.similarity_threshold` ({report['configured_threshold']}) and "
                     f"reports the cache part as not in force.")
    else:
        lines.append(f"**Calibrated threshold {part.threshold}** (Learn-then-Test on the calibration split).")
    lines += ["", "| split | threshold | served | false hits | false-hit rate (served) | upper limit "
              f"({1 - part.delta:.0%}) | recall (duplicates served) |", "|---|---:|---:|---:|---:|---:|---:|"]
    rows = [("calibration", part.threshold, part.served, part.false_hits, part.false_hits / part.served
             if part.served else None, part.upper, part.recall)]
    if part.evaluation is not None:
        e = part.evaluation
        rows.append(("evaluation", e.threshold, e.served, e.false_hits, e.false_hit_rate, e.upper, e.recall))
    for r in report["at_configured"]:
        rows.append((f"{r['split']} (configured)", r["threshold"], r["served"], r["false_hits"],
                     r["false_hit_rate"], r["upper"], r["recall"]))
    for name, t, n, k, rate, up, rec in rows:
        lines.append(f"| {name} | {t if t is not None else '-'} | {n} | {k} | {_pct(rate)} | {_pct(up)} | "
                     f"{_pct(rec)} |")
    lines += ["", "What these labels can certify (chosen on the calibration split, replayed on the evaluation "
              "split):", "", "| ε | threshold | evaluation: served | false-hit rate | upper limit | recall |",
              "|---:|---:|---:|---:|---:|---:|"]
    for row in report["epsilon_ladder"]:
        e = row["evaluation"]
        lines.append(f"| {row['epsilon']} | {row['threshold'] if row['threshold'] is not None else 'none'} | "
                     f"{e['served']} | {_pct(e['false_hit_rate'])} | {_pct(e['upper'])} | {_pct(e['recall'])} |")
    lines += ["", "Per threshold (upper limits are pointwise; only the Learn-then-Test choice carries the "
              "guarantee):", "", "| threshold | calibration: served | false-hit rate | upper | recall | "
              "evaluation: served | false-hit rate | upper | recall |",
              "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    ev_at = {p.threshold: p for p in ev_curve}

    def cells(p: CacheCurvePoint | None) -> str:
        if p is None:
            return "| | | |"
        return f"{p.served} | {_pct(p.risk if p.served else None)} | {_pct(p.upper)} | {_pct(p.recall)} |"

    for p in cal_curve:
        if _whole_hundredth(p.threshold) or p.threshold in (part.threshold, report["configured_threshold"]):
            lines.append(f"| {p.threshold} | {cells(p)} {cells(ev_at.get(p.threshold))}")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, 2, figsize=(11, 4))
        for curve, name, colour in ((cal_curve, "calibration", "tab:blue"), (ev_curve, "evaluation", "tab:orange")):
            pts = [p for p in curve if p.served >= MIN_PLOTTED]
            axes[0].plot([p.recall for p in pts], [p.risk for p in pts], color=colour, label=f"false-hit rate, {name}")
            axes[0].plot([p.recall for p in pts], [p.upper for p in pts], "--", color=colour,
                         label=f"upper limit {1 - part.delta:.0%}, {name}")
            ts = [p.threshold for p in pts]
            axes[1].plot(ts, [p.risk for p in pts], color=colour, label=f"false-hit rate, {name}")
            axes[1].plot(ts, [p.upper for p in pts], "--", color=colour)
            axes[1].plot(ts, [p.recall for p in pts], ":", color=colour, label=f"recall, {name}")
        for ax in axes:
            ax.axhline(part.epsilon, color="red", lw=0.8, label=f"ε = {part.epsilon}")
        for t, colour, name in ((report["configured_threshold"], "gray", "configured"),
                                (part.threshold, "green", "calibrated")):
            if t is not None:
                axes[1].axvline(t, color=colour, lw=0.8, label=f"{name} {t}")
        axes[0].set(xlabel="recall (duplicates served / duplicates)", ylabel="false hits among served pairs",
                    title=f"QQP dev splits, {part.embedder.model}: risk vs recall")
        axes[1].set(xlabel="similarity threshold", ylabel="rate",
                    title=f"per threshold (points serving >= {MIN_PLOTTED} pairs)")
        axes[0].legend(fontsize=7)
        axes[1].legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(stem.with_suffix(".png"), dpi=90)
        lines += ["", f"![risk-recall]({stem.with_suffix('.png').name})"]
    except ImportError:
        pass
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
