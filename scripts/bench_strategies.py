"""Inference strategies on GSM8K: accuracy against compute, side by side in one run.

    python scripts/bench_strategies.py --profile tiny [--problems 30] [--max-tokens 128] [--ns 2,4,8]
                                       [--search-n 8] [--frontier cluster/frontier-tiny.json]

The profile's application runs on Ray Serve (cache off, so nothing is answered from memory; the analyzer on
when its model is prepared, for each problem's difficulty). For each of the first `--problems` GSM8K test
problems (`../shared/data/gsm8k/test.jsonl`, the only split there: every figure is from test[0:problems]):

- Validator greedy (`model=validator`, temperature 0) and Scout greedy (`model=scout`);
- for each N in `--ns`: one `weighted_vote` request with N candidates: its candidates (the Scout's samples,
  each with its final answer, its own mean log-probability and the Validator's one-pass score) give the
  majority vote (unscored), the weighted vote and best-of-N at that N, as the service's own vote functions
  choose them; compute is measured per tier in the route trace (engine seconds): the Scout's sampling for the
  majority vote, sampling plus the Validator's scoring for the scored two;
- the Validator-scored step search (`search`, `--search-n` expansions in all).

Correct = the final number of the answer equals GSM8K's. Prints the table, says plainly whether any Scout
strategy reaches Validator-greedy accuracy at less compute, and writes reports/bench_strategies.{json,md,png}
and the frontier file `strategies.frontier` reads (accuracy and mean engine seconds per strategy and N, in
two difficulty buckets split at the median analyzer complexity when the analyzer ran, else one).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))

from bench_tiers import pyplot  # noqa: E402

DATA = REPO.parent / "shared" / "data" / "gsm8k" / "test.jsonl"
INSTRUCTION = "Solve the problem step by step, one short step per line. End with a line '#### <number>'."


def problems(n: int) -> list[dict]:
    rows = [json.loads(line) for line in DATA.read_text().splitlines() if line.strip()]
    return rows[:n]


def gold(row: dict) -> str:
    from serving.strategies import final_number

    return final_number(row["answer"].split("####")[-1]) or ""


def ask(c, row: dict, model: str, max_tokens: int, strategy: dict | None = None) -> dict:
    body = {"model": model, "temperature": 0, "max_tokens": max_tokens,
            "messages": [{"role": "user", "content": f"{row['question']}\n\n{INSTRUCTION}"}]}
    if strategy is not None:
        body["strategy"] = strategy
    t0 = time.perf_counter()
    r = c.post("/v1/chat/completions", json=body)
    r.raise_for_status()
    out = r.json()
    out["_wall_s"] = time.perf_counter() - t0
    return out


def engine_s(route: dict, tiers: tuple[str, ...] = ("scout", "validator")) -> float:
    return sum((route.get("cost") or {}).get(t, {}).get("engine_s", 0.0) for t in tiers)


def complexity(route: dict) -> float | None:
    for s in route["stages"]:
        if s["stage"] == "analyzer":
            return s["detail"].get("complexity")
    return None


def offline_votes(stage: dict) -> dict[str, str]:
    """Majority, weighted and best-of over a strategy's traced candidates, by the service's own functions."""
    from serving.strategies import Candidate, best_of, majority_vote, weighted_vote

    cands = [Candidate(text="", answer=c["answer"], own_logprob=c["own_logprob"], score=c["score"])
             for c in stage["detail"]["candidates"]]
    unscored = [Candidate(text="", answer=c.answer, own_logprob=c.own_logprob) for c in cands]
    return {"majority_vote": cands[majority_vote(unscored).index].answer,
            "weighted_vote": cands[weighted_vote(cands).index].answer,
            "best_of_n": cands[best_of(cands).index].answer}


def run_bench(base: str, rows: list[dict], ns: list[int], search_n: int, max_tokens: int) -> list[dict]:
    import httpx

    from serving.strategies import extract_answer

    records = []
    with httpx.Client(base_url=base, timeout=900) as c:
        for i, row in enumerate(rows):
            rec: dict = {"id": i, "gold": gold(row), "points": {}}
            t0 = time.perf_counter()
            for tier in ("validator", "scout"):
                out = ask(c, row, tier, max_tokens)
                choice = out["choices"][0]
                rec["points"][(tier, 1)] = {"answer": extract_answer(choice["message"]["content"], "number"),
                                            "cost_s": engine_s(out["route"]), "finish_reason": choice["finish_reason"],
                                            "text": choice["message"]["content"][-300:]}
            for n in ns:
                out = ask(c, row, "auto", max_tokens, {"name": "weighted_vote", "n": n})
                route = out["route"]
                stage = next(s for s in route["stages"] if s["stage"] == "strategy")
                rec["complexity"] = complexity(route) if rec.get("complexity") is None else rec["complexity"]
                sample_s, score_s = engine_s(route, ("scout",)), engine_s(route, ("validator",))
                for name, answer in offline_votes(stage).items():
                    rec["points"][(name, n)] = {"answer": answer,
                                                "cost_s": sample_s + (score_s if name != "majority_vote" else 0.0)}
            if search_n:
                out = ask(c, row, "auto", max_tokens, {"name": "search", "n": search_n})
                rec["points"][("search", search_n)] = {
                    "answer": extract_answer(out["choices"][0]["message"]["content"], "number"),
                    "cost_s": engine_s(out["route"])}
            for p in rec["points"].values():
                p["correct"] = bool(p["answer"]) and p["answer"] == rec["gold"]
            right = {f"{k[0]}@{k[1]}": int(p["correct"]) for k, p in rec["points"].items()}
            print(f"problem {i + 1}/{len(rows)} ({time.perf_counter() - t0:.0f} s): {right}", flush=True)
            rec["points"] = {f"{k[0]}@{k[1]}": v for k, v in rec["points"].items()}
            records.append(rec)
    return records


def summarize(records: list[dict]) -> list[dict]:
    """One row per strategy point: accuracy, mean engine seconds, and a 95% Wilson interval on accuracy."""
    from scipy.stats import binomtest

    keys = list(records[0]["points"]) if records else []
    rows = []
    for k in keys:
        name, n = k.rsplit("@", 1)
        ok = sum(r["points"][k]["correct"] for r in records)
        lo, hi = binomtest(ok, len(records)).proportion_ci(method="wilson")
        rows.append({"strategy": name, "n": int(n), "accuracy": ok / len(records), "correct": ok,
                     "ci95": [round(lo, 3), round(hi, 3)],
                     "cost_s": statistics.mean(r["points"][k]["cost_s"] for r in records)})
    return rows


def truncated(records: list[dict]) -> dict[str, float]:
    """The share of greedy answers cut off at max_tokens (their last number is not their answer)."""
    out = {}
    for tier in ("validator", "scout"):
        reasons = [r["points"][f"{tier}@1"].get("finish_reason") for r in records]
        out[tier] = round(sum(x == "length" for x in reasons) / len(reasons), 3) if reasons else 0.0
    return out


def verdict(rows: list[dict]) -> str:
    ref = next(r for r in rows if r["strategy"] == "validator")
    scout = [r for r in rows if r["strategy"] != "validator"]
    if ref["correct"] == 0:
        return "No comparison: Validator greedy solved none of these problems."
    reaching = [r for r in scout if r["accuracy"] >= ref["accuracy"]]
    cheaper = [r for r in reaching if r["cost_s"] < ref["cost_s"]]
    if cheaper:
        best = min(cheaper, key=lambda r: r["cost_s"])
        return (f"Yes: {best['strategy']} at N={best['n']} reaches Validator-greedy accuracy "
                f"({best['accuracy']:.1%} vs {ref['accuracy']:.1%}) at {best['cost_s'] / ref['cost_s']:.2f}x its "
                "engine seconds.")
    if reaching:
        best = min(reaching, key=lambda r: r["cost_s"])
        return (f"Only at more compute: {best['strategy']} at N={best['n']} reaches Validator-greedy accuracy "
                f"({best['accuracy']:.1%}) at {best['cost_s'] / ref['cost_s']:.2f}x its engine seconds.")
    top = max(scout, key=lambda r: r["accuracy"])
    return (f"No: no Scout strategy reaches Validator-greedy accuracy ({ref['accuracy']:.1%}) on these pairs; the "
            f"best, {top['strategy']} at N={top['n']}, gets {top['accuracy']:.1%} at "
            f"{top['cost_s'] / ref['cost_s']:.2f}x the Validator's engine seconds.")


def frontier(records: list[dict], meta: dict) -> dict:
    """The frontier file: accuracy and cost per point, in difficulty buckets split at the median complexity."""
    known = [r["complexity"] for r in records if r.get("complexity") is not None]
    buckets = []
    if len(known) >= 10:
        median = statistics.median(known)
        easy = [r for r in records if r.get("complexity") is not None and r["complexity"] <= median]
        hard = [r for r in records if r not in easy]
        buckets = [(median, easy), (None, hard)]
    else:
        buckets = [(None, records)]
    out = []
    for edge, rs in buckets:
        if rs:
            out.append({"max_complexity": edge, "problems": len(rs),
                        "entries": [{k: r[k] for k in ("strategy", "n", "accuracy", "cost_s")} for r in summarize(rs)]})
    return {"version": f"frontier-{meta['profile']}-{datetime.now(UTC):%Y-%m-%d}", **meta, "buckets": out}


def render(result: dict) -> str:
    lines = [f"# Strategies on GSM8K ({result['profile']}: Scout {result['scout']}, Validator {result['validator']})",
             "", f"{result['problems']} problems of GSM8K test (the first ones), max_tokens {result['max_tokens']}; "
             "compute is engine seconds from the route traces (all tiers), measured side by side in one run.", "",
             "| strategy | N | accuracy | 95% CI | engine s / problem | vs Validator greedy |",
             "|---|---|---|---|---|---|"]
    ref = next(r for r in result["rows"] if r["strategy"] == "validator")
    for r in sorted(result["rows"], key=lambda r: r["cost_s"]):
        lines.append(f"| {r['strategy']} | {r['n']} | {r['accuracy']:.1%} ({r['correct']}) | "
                     f"{r['ci95'][0]:.0%}–{r['ci95'][1]:.0%} | {r['cost_s']:.2f} | "
                     f"{r['cost_s'] / ref['cost_s']:.2f}x |")
    cut = result.get("truncated") or {}
    lines += ["", f"Greedy answers cut off at max_tokens: Validator {cut.get('validator', 0):.0%}, Scout "
              f"{cut.get('scout', 0):.0%}.", "", f"**{result['verdict']}**"]
    return "\n".join(lines)


def plot(result: dict, path: Path) -> bool:
    plt = pyplot()
    if plt is None:
        return False
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    by: dict[str, list[dict]] = {}
    for r in result["rows"]:
        by.setdefault(r["strategy"], []).append(r)
    for name, rs in sorted(by.items()):
        rs = sorted(rs, key=lambda r: r["cost_s"])
        ax.plot([r["cost_s"] for r in rs], [r["accuracy"] for r in rs], marker="o", label=name)
        for r in rs:
            if r["n"] > 1:
                ax.annotate(f"N={r['n']}", (r["cost_s"], r["accuracy"]), fontsize=7, xytext=(3, 3),
                            textcoords="offset points")
    # The Pareto frontier over all points.
    pts = sorted(result["rows"], key=lambda r: (r["cost_s"], -r["accuracy"]))
    front, best = [], -1.0
    for r in pts:
        if r["accuracy"] > best:
            front.append(r)
            best = r["accuracy"]
    ax.step([r["cost_s"] for r in front], [r["accuracy"] for r in front], where="post", color="grey", alpha=0.5,
            linestyle="--", label="Pareto frontier")
    ax.set_xscale("log")
    ax.set_xlabel("engine seconds per problem (log)")
    ax.set_ylabel("accuracy")
    ax.set_title(f"GSM8K test[0:{result['problems']}], {result['profile']} profile")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return True


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--profile", default="tiny")
    ap.add_argument("--problems", type=int, default=30)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--ns", default="2,4,8", help="candidate counts of the votes and best-of-N")
    ap.add_argument("--search-n", type=int, default=8, help="expansions of the step search (0: skip it)")
    ap.add_argument("--port", type=int, default=8021)
    ap.add_argument("--out", default=str(REPO / "reports"))
    ap.add_argument("--frontier", default=None, help="where to write the frontier (default: <out>/frontier.json)")
    args = ap.parse_args()
    if not DATA.exists():
        print(f"skipped: {DATA} is absent (GSM8K is read from ../shared/data)")
        return 0

    import ray
    from ray import serve

    from deployments.app import build_app
    from serving.config import load_profile
    from serving.models import is_prepared

    config = load_profile(args.profile)
    config.cache.enabled = False
    config.analyzer.enabled = is_prepared(config.cache.embedder.model, config.cache_dir)
    config.api.max_tokens_limit = max(config.api.max_tokens_limit, args.max_tokens)
    config.strategies.max_steps = 8
    rows = problems(args.problems)
    ns = [int(x) for x in args.ns.split(",") if x]
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(address="local", include_dashboard=False, log_to_driver=False)
    t0 = time.perf_counter()
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": args.port})
        serve.run(build_app(config.model_dump(mode="json")), name="infopt", route_prefix="/")
        print(f"deployed in {time.perf_counter() - t0:.0f} s", flush=True)
        records = run_bench(f"http://127.0.0.1:{args.port}", rows, ns, args.search_n, args.max_tokens)
    finally:
        serve.shutdown()
        ray.shutdown()
    meta = {"profile": config.profile, "scout": config.scout.served_name(), "validator": config.validator.served_name(),
            "data": f"gsm8k/test.jsonl[0:{len(rows)}]", "max_tokens": args.max_tokens,
            "created": datetime.now(UTC).isoformat(timespec="seconds")}
    summary = summarize(records)
    result = {**meta, "problems": len(records), "rows": summary, "verdict": verdict(summary),
              "truncated": truncated(records),
              "analyzer": config.analyzer.enabled, "wall_s": round(time.perf_counter() - t0, 1), "records": records}
    table = render(result)
    print("\n" + table)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench_strategies.json").write_text(json.dumps(result, indent=2))
    (out / "bench_strategies.md").write_text(table + "\n")
    path = Path(args.frontier) if args.frontier else out / "frontier.json"
    path.write_text(json.dumps(frontier(records, meta), indent=2) + "\n")
    if plot(result, out / "bench_strategies.png"):
        print(f"\nplot: {out / 'bench_strategies.png'}")
    print(f"report: {out / 'bench_strategies.md'}; frontier: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
