"""Each judge's agreement with the hand labels (tests/data/judge_labels.jsonl, rule in docs/labels.md).

    python scripts/eval_judge.py [--pairs reports/calibration/labelled_pairs.jsonl] [--base-url URL]

The pairs (with their answers) come from the calibration collection of the tiny profile
(calibration split); the labels hold only ids. Judges: identical text, the final number
(GSM8K), the embedding cosine (all-MiniLM, >= 0.9), the default panel (identical, final
number, embedding) and, with `--base-url` of a running service, the Validator as judge
(`model: validator`, one token, yes/no log-probabilities). Prints a table and writes
reports/eval_judge.{json,md}.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from infopt.calibrate import _kind, _question  # noqa: E402
from serving.quality.judge import (  # noqa: E402
    EmbeddingJudge,
    FinalNumberJudge,
    IdenticalJudge,
    Judge,
    JudgePanel,
    ValidatorJudge,
)


def scores(labels: list[bool], verdicts: list[bool | None]) -> dict[str, Any]:
    """Accuracy over all pairs (an undecided verdict counts as 'disagree', as the panel's does), the share
    the judge decided, and precision/recall of 'agree'."""
    said = [bool(v) for v in verdicts]
    tp = sum(s and t for s, t in zip(said, labels, strict=True))
    fp = sum(s and not t for s, t in zip(said, labels, strict=True))
    fn = sum(t and not s for s, t in zip(said, labels, strict=True))
    correct = sum(s == t for s, t in zip(said, labels, strict=True))
    return {"pairs": len(labels), "decided": sum(v is not None for v in verdicts),
            "accuracy": round(correct / len(labels), 4),
            "agree_precision": round(tp / (tp + fp), 4) if tp + fp else None,
            "agree_recall": round(tp / (tp + fn), 4) if tp + fn else None,
            "false_agree": fp}


async def run_judge(judge: Judge, rows: list[dict[str, Any]]) -> tuple[list[bool | None], list[float | None]]:
    """Each pair's verdict (None: undecided) and the judge's score where it has one."""
    verdicts: list[bool | None] = []
    scores: list[float | None] = []
    for r in rows:
        v = await judge.judge(_question(r), r["validator"]["text"], r["scout"]["text"], _kind(r))
        verdicts.append(None if v is None else v.agree)
        scores.append(None if v is None else v.score)
    return verdicts, scores


def ranking(labels: list[bool], scores: list[float | None]) -> float | None:
    """ROC AUC of the judge's score against the labels, over the pairs it scored: whether the score carries the
    signal even where its fixed cut-off says nothing (None: too few scored, or one class only)."""
    from sklearn.metrics import roc_auc_score

    pairs = [(t, s) for t, s in zip(labels, scores, strict=True) if s is not None]
    if len(pairs) < 10 or len({t for t, _ in pairs}) < 2:
        return None
    return round(float(roc_auc_score([t for t, _ in pairs], [s for _, s in pairs])), 3)


class _HttpValidator:
    """The Validator of a running service as an `LLMEngine`-like object for `ValidatorJudge`."""

    model_id = "validator"

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url

    async def generate(self, request):
        import httpx

        from serving.engines.base import Generation, TokenLogprob, Usage

        body = {"model": "validator", "messages": request.messages, "max_tokens": 1, "temperature": 0,
                "logprobs": True, "top_logprobs": min(request.top_logprobs, 20), "cache": {"mode": "bypass"}}
        async with httpx.AsyncClient(timeout=300) as c:
            data = (await c.post(f"{self.base_url}/v1/chat/completions", json=body)).json()
        content = data["choices"][0]["logprobs"]["content"]
        tokens = [TokenLogprob(t["token"], t["logprob"], [(a["token"], a["logprob"]) for a in t["top_logprobs"]])
                  for t in content]
        return Generation(text=data["choices"][0]["message"]["content"], finish_reason="length", usage=Usage(),
                          tokens=tokens)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", default=str(REPO / "reports" / "calibration" / "labelled_pairs.jsonl"))
    ap.add_argument("--labels", default=str(REPO / "tests" / "data" / "judge_labels.jsonl"))
    ap.add_argument("--base-url", help="a running service whose Validator judges too")
    ap.add_argument("--profile", default="tiny", help="whose embedder to use")
    args = ap.parse_args()
    labels = {r["id"]: r["label"] == "agree" for r in map(json.loads, Path(args.labels).read_text().splitlines())}
    pairs_path = Path(args.pairs)
    if not pairs_path.exists():
        print(f"no labelled pairs at {pairs_path}: run `infopt calibrate collect --profile tiny --n 240 "
              "--split calibration` and keep its rows for the labelled ids", file=sys.stderr)
        return 1
    rows = [r for r in map(json.loads, pairs_path.read_text().splitlines()) if r["id"] in labels]
    truth = [labels[r["id"]] for r in rows]

    from serving.cache.embedder import SentenceTransformerEmbedder
    from serving.config import load_profile

    config = load_profile(args.profile)
    embedder = SentenceTransformerEmbedder(config.resolve_model(config.cache.embedder.model), device="cpu")
    judges: dict[str, Judge] = {
        "identical": IdenticalJudge(), "final_number": FinalNumberJudge(),
        "embedding>=0.9": EmbeddingJudge(embedder, 0.9), "embedding>=0.8": EmbeddingJudge(embedder, 0.8),
        "panel (identical, final number, embedding>=0.9)": JudgePanel(
            [IdenticalJudge(), FinalNumberJudge(), EmbeddingJudge(embedder, 0.9)]),
    }
    if args.base_url:
        judges["validator (yes/no logprobs)"] = ValidatorJudge(_HttpValidator(args.base_url))  # type: ignore[arg-type]
    results = {}
    for name, j in judges.items():
        verdicts, judged = asyncio.run(run_judge(j, rows))
        results[name] = {**scores(truth, verdicts), "score_auc": ranking(truth, judged)}
    lines = [f"Judges against {len(rows)} hand-labelled pairs (tiny profile, calibration split; "
             f"{sum(truth)} agree, {len(truth) - sum(truth)} disagree; rule: docs/labels.md)", "",
             "| judge | decided | accuracy | 'agree' precision | 'agree' recall | false 'agree' | score AUC |",
             "|---|---|---|---|---|---|---|"]
    for name, s in results.items():
        lines.append(f"| {name} | {s['decided']}/{s['pairs']} | {s['accuracy']} | {s['agree_precision']} "
                     f"| {s['agree_recall']} | {s['false_agree']} | {s['score_auc']} |")
    text = "\n".join(lines)
    print(text)
    out = REPO / "reports"
    out.mkdir(exist_ok=True)
    (out / "eval_judge.json").write_text(json.dumps(results, indent=1))
    (out / "eval_judge.md").write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
