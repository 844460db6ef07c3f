"""Train the request analyzer's complexity model and write its artifact.

Label (from ../shared/data/routellm): 1 when only the strong model (GPT-4) answered
correctly, 0 otherwise (see `infopt/training.py`). Features: the profile
features of `serving.analyzer.complexity` plus the all-MiniLM-L6-v2 embedding of the
question (the Embedder's model, prepared by `infopt models prepare --embedder`).

The held-out split is by prompt group (a stable hash, 20%). The regularisation C is
chosen by grouped 5-fold cross-validation on the training split only; the final model is
refit on the whole training split and scored on the held-out split with the same numpy
code that serves it. Embeddings are cached outside the repo
(<cache_dir>/analyzer/embeddings-<model>.npz); the first run embeds ~15k prompts (minutes on
one core: run it while nothing else uses the CPU). Training uses one BLAS thread, so the same data and seed
give the same artifact bytes.

    python scripts/train_analyzer.py [--out serving/analyzer/complexity-v1.json]
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from infopt.training import EMBEDDER, auc, data_digest, dataset, load_routellm  # noqa: E402
from serving.analyzer.complexity import DEFAULT_ARTIFACT, ComplexityModel, feature_names  # noqa: E402

DATA = REPO.parent / "shared" / "data"
C_GRID = (0.03, 0.1, 0.3, 1.0, 3.0)


def fit(x: np.ndarray, y: np.ndarray, c: float, seed: int, n_profile: int) -> tuple[np.ndarray, float]:
    """Logistic regression on standardised profile features + raw embedding; coefficients for raw features."""
    from sklearn.linear_model import LogisticRegression

    mean = np.zeros(x.shape[1])
    scale = np.ones(x.shape[1])
    mean[:n_profile] = x[:, :n_profile].mean(axis=0)
    scale[:n_profile] = x[:, :n_profile].std(axis=0) + 1e-9
    clf = LogisticRegression(C=c, max_iter=5000, random_state=seed)
    clf.fit((x - mean) / scale, y)
    w = clf.coef_[0] / scale
    b = float(clf.intercept_[0] - (clf.coef_[0] * mean / scale).sum())
    return w, b


def score(w: np.ndarray, b: float, x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-(x @ w + b)))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DATA / "routellm")
    ap.add_argument("--out", type=Path, default=DEFAULT_ARTIFACT)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--version", default="complexity-v1")
    args = ap.parse_args()
    if not args.data.is_dir():
        print(f"RouteLLM labels not found at {args.data}", file=sys.stderr)
        return 2
    import sklearn
    from threadpoolctl import threadpool_limits

    # One BLAS thread: the same bytes on every machine (and one core, beside the others' work).
    threadpool_limits(1)
    prompts = load_routellm(args.data)
    x, y, held = dataset(prompts)
    n_profile = x.shape[1] - 384
    train = ~held
    print(f"{len(prompts)} prompts, {y.mean():.1%} hard; train {train.sum()}, held-out {held.sum()}")

    # C by grouped 5-fold CV on the training split (folds by the same stable group hash).
    groups = np.array([int(hashlib.sha256(("fold:" + p.group).encode()).hexdigest()[:8], 16) % 5 for p in prompts])
    cv: dict[float, float] = {}
    for c in C_GRID:
        aucs = []
        for k in range(5):
            tr, va = train & (groups != k), train & (groups == k)
            w, b = fit(x[tr], y[tr], c, args.seed, n_profile)
            aucs.append(auc(y[va], score(w, b, x[va])))
        cv[c] = float(np.mean(aucs))
        print(f"  C={c:<5g} cv AUC {cv[c]:.4f}")
    best_c = max(C_GRID, key=lambda c: (round(cv[c], 4), -c))
    w, b = fit(x[train], y[train], best_c, args.seed, n_profile)

    model = ComplexityModel(version=args.version, names=feature_names(384), coef=w, intercept=b, embedding_dim=384)
    # Round-trip through the artifact so the reported AUC is the served model's.
    model = ComplexityModel.from_json(model.to_json())
    held_scores = model.score_features(x[held])
    held_auc = auc(y[held], held_scores)
    sources = sorted({p.source.split("/")[0] for p in prompts})
    per_source = {}
    for s in sources:
        m = held & np.array([p.source.split("/")[0] == s for p in prompts])
        per_source[s] = {"n": int(m.sum()), "hard": int(y[m].sum()),
                         "auc": round(auc(y[m], model.score_features(x[m])), 4)}
    model.meta = {
        "label": "1 = only the strong model (gpt-4-1106-preview) was right; weak: Mixtral-8x7B-Instruct-v0.1",
        "training_data": "lm-sys/RouteLLM evals (gsm8k, mmlu, mt_bench) in ../shared/data/routellm",
        "training_data_sha256": data_digest(args.data),
        "embedder": EMBEDDER,
        "seed": args.seed,
        "C": best_c,
        "cv_auc": {str(c): round(v, 4) for c, v in cv.items()},
        "n_train": int(train.sum()),
        "n_held_out": int(held.sum()),
        "hard_rate": round(float(y.mean()), 4),
        "held_out_auc": round(held_auc, 4),
        "held_out_auc_by_source": per_source,
        "split": "sha256(group) % 100 < 20 held out; groups: prompt text, MT-Bench question id",
        "sklearn": sklearn.__version__,
        "script": "scripts/train_analyzer.py",
    }
    args.out.write_text(model.to_json())
    print(f"C={best_c}; held-out AUC {held_auc:.4f} on {held.sum()} prompts; by source: {per_source}")
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
