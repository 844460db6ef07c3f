"""Train the semantic cache's pair verifier: a cross-encoder that reads both questions together.

Two questions embedded apart and compared by cosine cannot tell "How do I learn Python?" from
"How do I learn Java?" well enough: on QQP the cosine finds about one paraphrase in six at a
1% false-hit rate. A cross-encoder attends across the pair. This module fine-tunes one
(sentence-transformers' `CrossEncoder`, trained by its `CrossEncoderTrainer`) from the bundled
all-MiniLM-L6-v2 encoder on:

* the **train** split of QQP dev (`infopt.calibrate.qqp_split` with `train_share`: pairs grouped
  by shared question, a group's split fixed by a hash of its smallest question id), with each
  pair's order drawn at random (the verifier must not care which question was cached);
* STS-B's train file, with the gold similarity / 5 as a soft label.

The other QQP splits stay apart: **calibration** (where `infopt calibrate cache` chooses the
verifier's operating point by risk control) and **evaluation** (where `scripts/eval_cache.py`
reports the frontier), as do STS-B's dev and test files. The result is a sentence-transformers
folder in the model cache with a marker naming the base weights, the data, the split rule and
the seed, and the sha256 of its weights.

    infopt models prepare --verifier       # trains it when absent (minutes on a CPU)
"""

from __future__ import annotations

import csv
import hashlib
import json
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from infopt.calibrate import QQP_FILE, SPLIT_RULE, load_qqp, qqp_split, weights_sha256
from serving.cache.keys import normalize
from serving.cache.verifier import TRAINED_MARKER, TRAINED_VERIFIER

NAME = TRAINED_VERIFIER
BASE = "all-minilm-l6-v2"
STSB_TRAIN = Path("stsb") / "sts-train.tsv"
MARKER = TRAINED_MARKER
# Bump when the recipe changes so that an old folder is retrained.
RECIPE_VERSION = 1
# The split shares of QQP dev's question groups: [0, TRAIN) train, [TRAIN, CALIBRATION) calibration, the rest
# evaluation: the evaluation split is the one `infopt calibrate cache` replays on.
TRAIN_SHARE = 0.3
CALIBRATION_SHARE = 0.5


@dataclass(frozen=True)
class Recipe:
    """How the verifier is trained (recorded in its marker)."""

    epochs: int = 1
    batch_size: int = 32
    learning_rate: float = 5e-5
    warmup_ratio: float = 0.1
    max_length: int = 64
    seed: int = 12
    train_share: float = TRAIN_SHARE
    calibration_share: float = CALIBRATION_SHARE
    stsb: bool = True


def load_stsb(path: Path) -> list[tuple[str, str, float]]:
    """STS-B pairs (original release layout) with the gold similarity scaled to 0-1."""
    out = []
    with Path(path).open(newline="", encoding="utf-8") as f:
        for row in csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE):
            if len(row) >= 7:
                try:
                    out.append((normalize(row[5]), normalize(row[6]), float(row[4]) / 5.0))
                except ValueError:
                    continue
    return out


def training_pairs(data_dir: Path, recipe: Recipe) -> tuple[list[tuple[str, str, float]], dict[str, Any]]:
    """The labelled pairs the verifier learns from, and what they are (for the marker)."""
    qqp = Path(data_dir) / QQP_FILE
    pairs = load_qqp(qqp)
    split = qqp_split(pairs, recipe.calibration_share, train_share=recipe.train_share)["train"]
    rng = random.Random(recipe.seed)
    out = []
    for p in split:
        a, b = normalize(p.q1), normalize(p.q2)
        if rng.random() < 0.5:
            a, b = b, a
        out.append((a, b, float(p.duplicate)))
    data: dict[str, Any] = {"qqp": {"file": str(QQP_FILE), "sha256": hashlib.sha256(qqp.read_bytes()).hexdigest(),
                                    "split": SPLIT_RULE, "train_share": recipe.train_share,
                                    "calibration_share": recipe.calibration_share, "train_pairs": len(out),
                                    "train_duplicates": sum(1 for p in split if p.duplicate)}}
    if recipe.stsb:
        sts_file = Path(data_dir) / STSB_TRAIN
        sts = load_stsb(sts_file)
        out.extend(sts)
        data["stsb"] = {"file": str(STSB_TRAIN), "sha256": hashlib.sha256(sts_file.read_bytes()).hexdigest(),
                        "pairs": len(sts), "label": "gold similarity / 5"}
    rng.shuffle(out)
    return out, data


def is_trained(folder: Path, recipe: Recipe | None = None) -> bool:
    """True when `folder` holds a verifier trained by this recipe version (and, given one, this recipe)."""
    try:
        info = json.loads((Path(folder) / MARKER).read_text())
    except (OSError, ValueError):
        return False
    if info.get("recipe_version") != RECIPE_VERSION:
        return False
    if recipe is not None and info.get("recipe") != recipe.__dict__:
        return False
    sha = weights_sha256(folder)
    return sha is not None and info.get("sha256") == sha


def train(base: Path, out: Path, data_dir: Path, recipe: Recipe | None = None, *, limit: int | None = None,
          log=print) -> dict[str, Any]:
    """Fine-tune the cross-encoder from the encoder folder `base` into `out`; return the marker written."""
    import torch
    from datasets import Dataset
    from sentence_transformers.cross_encoder import CrossEncoder, CrossEncoderTrainer, CrossEncoderTrainingArguments
    from sentence_transformers.cross_encoder.losses import BinaryCrossEntropyLoss

    recipe = recipe or Recipe()
    torch.manual_seed(recipe.seed)
    pairs, data = training_pairs(data_dir, recipe)
    if limit:
        pairs = pairs[:limit]
    log(f"{NAME}: training on {len(pairs)} pairs from {base} ({recipe.epochs} epochs)")
    model = CrossEncoder(str(base), num_labels=1, max_length=recipe.max_length, device="cpu")
    dataset = Dataset.from_dict({"sentence1": [a for a, _, _ in pairs], "sentence2": [b for _, b, _ in pairs],
                                 "label": [y for _, _, y in pairs]})
    work = Path(out).with_name(Path(out).name + ".training")
    args = CrossEncoderTrainingArguments(
        output_dir=str(work), num_train_epochs=recipe.epochs, per_device_train_batch_size=recipe.batch_size,
        learning_rate=recipe.learning_rate, warmup_steps=recipe.warmup_ratio, seed=recipe.seed,
        save_strategy="no", logging_steps=50, report_to="none", use_cpu=True, dataloader_drop_last=False)
    started = time.perf_counter()
    CrossEncoderTrainer(model=model, args=args, train_dataset=dataset, loss=BinaryCrossEntropyLoss(model)).train()
    seconds = time.perf_counter() - started
    shutil.rmtree(work, ignore_errors=True)  # the trainer's scratch folder (nothing saved there)
    Path(out).mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out))
    marker = {"name": NAME, "recipe_version": RECIPE_VERSION, "recipe": recipe.__dict__, "base": BASE,
              "base_sha256": weights_sha256(base), "data": data, "pairs": len(pairs),
              "train_seconds": round(seconds), "sha256": weights_sha256(out)}
    (Path(out) / MARKER).write_text(json.dumps(marker, indent=2) + "\n")
    log(f"{NAME}: trained in {seconds:.0f} s -> {out}")
    return marker


def frontier(scores, duplicate, target: float = 0.01) -> dict[str, Any]:
    """The recall / false-hit frontier of a scored decision on labelled pairs.

    `scores`: one per pair, -inf where the pair can never be served (below the proposal floor, or vetoed by a
    guard); a pair is served at threshold t when its score >= t. Returns the curve (recall on duplicates and
    false-hit rate on non-duplicates at every distinct threshold, strictest first) and the largest recall whose
    false-hit rate is at most `target`, with its threshold and precision (None when no threshold serves any pair
    within it)."""
    import numpy as np

    s = np.asarray(scores, dtype=float)
    d = np.asarray(duplicate, dtype=bool)
    order = np.argsort(-s, kind="stable")
    s, d = s[order], d[order]
    finite = np.isfinite(s)
    s, d_f = s[finite], d[finite]
    tp, fp = np.cumsum(d_f), np.cumsum(~d_f)
    last = np.r_[s[1:] != s[:-1], True] if len(s) else np.zeros(0, dtype=bool)  # the end of each tie group
    n_dup, n_non = max(int(d.sum()), 1), max(int((~d).sum()), 1)
    curve = [{"threshold": float(t), "recall": int(a) / n_dup, "false_hit_rate": int(b) / n_non,
              "precision": int(a) / max(int(a + b), 1)} for t, a, b in zip(s[last], tp[last], fp[last], strict=True)]
    within = [p for p in curve if p["false_hit_rate"] <= target]
    best = max(within, key=lambda p: p["recall"], default=None)
    return {"pairs": len(d), "duplicates": int(d.sum()), "target": target, "best": best, "curve": curve}
