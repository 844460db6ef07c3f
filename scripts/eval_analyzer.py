"""Evaluate the request analyzer: complexity AUC, what `validator_direct` saves and costs, and overhead.

On the held-out split of ../shared/data/routellm (the split `scripts/train_analyzer.py`
never trained on), with the shipped artifact (serving/analyzer/complexity-v1.json):

1. **AUC** of the complexity estimate (label: only the strong model was right), overall
   and per source.
2. **validator_direct on a mixed prompt set** (the held-out split: MMLU, GSM8K, MT-Bench
   as they come), for direct thresholds 0.2-0.5. With `scout_first` every prompt costs a
   Scout call and the escalated ones a Validator call too; a prompt sent direct skips the
   Scout. So, per threshold:
   * *Scout calls saved* = prompts sent direct;
   * of those, *hard* ones (the weak model was wrong, the strong right): a Scout call that
     could only have been wasted (or worse, a wrong answer served);
   * *extra Validator calls* = direct prompts the weak model got right: the Scout would
     have answered them alone (an upper bound: it assumes the Scout is confident on every
     prompt it gets right);
   * net cost in Validator-call units, with a Scout call costing `--scout-cost` of one.
3. **max_tokens prediction**: GSM8K answers of both models, in the Validator's tokens,
   against the predicted budget of their task kind.
4. **Overhead** p50/p99: profile + features + scoring given an embedding (the real
   tokenizer, one request at a time); and the whole `RequestAnalyzer.analyze` with the real
   all-MiniLM-L6-v2 embedder in this process (one request at a time, one torch thread).

Writes reports/eval_analyzer.json and prints the figures.

    python scripts/eval_analyzer.py [--scout-cost 0.3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from infopt.training import EMBEDDER, auc, cache_dir, dataset, load_routellm  # noqa: E402
from serving.analyzer import ComplexityModel, HFTokenCounter, RequestAnalyzer, profile_request  # noqa: E402
from serving.config import AnalyzerConfig  # noqa: E402
from serving.config.analyzer import DEFAULT_OUTPUT_TOKENS  # noqa: E402

DATA = REPO.parent / "shared" / "data"
THRESHOLDS = (0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5)
TOKENIZER = "qwen2.5-coder-0.5b-instruct"  # the tiny profile's Validator (same tokenizer as the laptop's)


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def direct_table(scores: np.ndarray, weak_ok: np.ndarray, strong_ok: np.ndarray, scout_cost: float) -> list[dict]:
    hard = strong_ok & ~weak_ok
    rows = []
    n = len(scores)
    for t in THRESHOLDS:
        direct = scores >= t
        saved = int(direct.sum())
        extra = int((direct & weak_ok).sum())
        # scout_first: every prompt pays a Scout call; direct ones pay a Validator call instead. Escalations
        # of the direct prompts are not counted on either side (they pay a Validator call both ways).
        net = saved * scout_cost - extra * 1.0
        rows.append({
            "threshold": t, "direct_share": saved / n, "scout_calls_saved": saved,
            "hard_among_direct": int((direct & hard).sum()), "both_wrong_among_direct": int((direct & ~strong_ok
                                                                                             & ~weak_ok).sum()),
            "extra_validator_calls": extra, "hard_recall": float((direct & hard).sum() / max(hard.sum(), 1)),
            "net_saving_validator_calls": net,
        })
    return rows


def overhead(prompts, x_held, model: ComplexityModel, tokens: HFTokenCounter | None, n: int) -> dict:
    """Profile + features + scoring of one request at a time, given its embedding."""
    cfg = AnalyzerConfig()
    times = []
    for p, row in zip(prompts[:n], x_held[:n], strict=False):
        emb = row[-model.embedding_dim:].reshape(1, -1)
        t0 = time.perf_counter()
        prof = profile_request(p.request, tokens, cfg.expected_output_tokens)
        model.score([prof], emb)
        times.append((time.perf_counter() - t0) * 1000)
    return {"n": len(times), "p50_ms": pct(times, 50), "p99_ms": pct(times, 99)}


def overhead_with_embedder(prompts, model: ComplexityModel, tokens: HFTokenCounter | None, n: int) -> dict:
    from serving.cache.embedder import SentenceTransformerEmbedder
    from serving.models import resolve

    embedder = SentenceTransformerEmbedder(resolve(EMBEDDER, cache_dir()), torch_threads=1)
    analyzer = RequestAnalyzer(AnalyzerConfig(timeout_s=30), embedder, tokens, model)

    async def run() -> list[float]:
        await analyzer.analyze(prompts[0].request)  # warm-up
        out = []
        for p in prompts[:n]:
            t0 = time.perf_counter()
            await analyzer.analyze(p.request)
            out.append((time.perf_counter() - t0) * 1000)
        return out

    times = asyncio.run(run())
    return {"n": len(times), "p50_ms": pct(times, 50), "p99_ms": pct(times, 99)}


def output_lengths(data: Path, tokens: HFTokenCounter) -> dict:
    """GSM8K answer lengths (Validator tokens) of both models vs the 'math' budget."""
    import csv

    from infopt.training import STRONG, WEAK

    csv.field_size_limit(1 << 24)
    out: dict = {}
    with (data / "gsm8k_responses.csv").open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    tok = tokens.tokenizer
    budget = DEFAULT_OUTPUT_TOKENS["math"]
    for name, col in (("weak", WEAK), ("strong", STRONG)):
        lengths = [len(tok(r[f"{col}_response"], add_special_tokens=False)["input_ids"]) for r in rows]
        out[name] = {"p50": pct(lengths, 50), "p90": pct(lengths, 90), "p99": pct(lengths, 99),
                     "within_budget": float(np.mean(np.asarray(lengths) <= budget))}
    out["budget"] = budget
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DATA / "routellm")
    ap.add_argument("--artifact", type=Path, default=None)
    ap.add_argument("--scout-cost", type=float, default=0.3, help="cost of a Scout call in Validator calls")
    ap.add_argument("--overhead-n", type=int, default=1000)
    ap.add_argument("--embedder-n", type=int, default=300)
    ap.add_argument("--report", type=Path, default=REPO / "reports" / "eval_analyzer.json")
    args = ap.parse_args()
    if not args.data.is_dir():
        print(f"RouteLLM labels not found at {args.data}", file=sys.stderr)
        return 2
    model = ComplexityModel.load(args.artifact)
    prompts = load_routellm(args.data)
    x, y, held = dataset(prompts)
    scores = model.score_features(x[held])
    held_prompts = [p for p, h in zip(prompts, held, strict=True) if h]
    weak_ok = np.array([p.weak_ok for p in held_prompts])
    strong_ok = np.array([p.strong_ok for p in held_prompts])
    report: dict = {"artifact": model.version, "trained_held_out_auc": model.meta.get("held_out_auc"),
                    "held_out": int(held.sum()), "hard_rate": float(y[held].mean()),
                    "auc": auc(y[held], scores), "auc_by_source": {}}
    for src in ("gsm8k", "mmlu", "mt_bench"):
        m = np.array([p.source.split("/")[0] == src for p in held_prompts])
        report["auc_by_source"][src] = {"n": int(m.sum()), "auc": auc(y[held][m], scores[m])}
    print(f"complexity model {model.version}: held-out AUC {report['auc']:.4f} on {report['held_out']} prompts "
          f"({report['hard_rate']:.1%} hard)")
    for src, r in report["auc_by_source"].items():
        print(f"  {src:<9} n={r['n']:<5} AUC {r['auc']:.4f}")

    rows = direct_table(scores, weak_ok, strong_ok, args.scout_cost)
    report["validator_direct"] = rows
    print(f"validator_direct on the mixed held-out set (n={len(scores)}; a Scout call costs {args.scout_cost:g} "
          "Validator calls)")
    print(f"  {'threshold':>9}{'direct':>8}{'Scout saved':>13}{'of them hard':>14}{'extra Validator':>17}"
          f"{'hard recall':>13}{'net (V calls)':>15}")
    for r in rows:
        print(f"  {r['threshold']:>9.2f}{r['direct_share']:>8.1%}{r['scout_calls_saved']:>13}"
              f"{r['hard_among_direct']:>14}{r['extra_validator_calls']:>17}{r['hard_recall']:>13.1%}"
              f"{r['net_saving_validator_calls']:>15.1f}")

    try:
        from serving.models import resolve

        tokens: HFTokenCounter | None = HFTokenCounter(resolve(TOKENIZER, cache_dir()))
        _ = tokens.tokenizer
    except Exception as exc:  # the tokenizer is prepared by `make test`; without it, word counts
        print(f"(tokenizer {TOKENIZER} unavailable: {exc}; overhead measured with word counts)")
        tokens = None
    if tokens is not None:
        report["output_lengths"] = lengths = output_lengths(args.data, tokens)
        print(f"GSM8K answers in Validator tokens vs the 'math' budget of {lengths['budget']}:")
        for who in ("weak", "strong"):
            r = lengths[who]
            print(f"  {who:<7} p50 {r['p50']:.0f}  p90 {r['p90']:.0f}  p99 {r['p99']:.0f}  within budget "
                  f"{r['within_budget']:.1%}")

    report["overhead_given_embedding"] = o1 = overhead(held_prompts, x[held], model, tokens, args.overhead_n)
    print(f"analysis overhead given the embedding (profile with the real tokenizer + scoring), n={o1['n']}: "
          f"p50 {o1['p50_ms']:.3f} ms, p99 {o1['p99_ms']:.3f} ms")
    report["overhead_with_embedder"] = o2 = overhead_with_embedder(held_prompts, model, tokens, args.embedder_n)
    print(f"RequestAnalyzer.analyze with the real embedder in-process (1 torch thread), n={o2['n']}: "
          f"p50 {o2['p50_ms']:.2f} ms, p99 {o2['p99_ms']:.2f} ms")
    args.report.parent.mkdir(parents=True, exist_ok=True)
    args.report.write_text(json.dumps(report, indent=1))
    print(f"report: {args.report}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
