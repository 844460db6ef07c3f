"""Training data of the complexity model: RouteLLM's per-prompt correctness labels.

Used by `scripts/train_analyzer.py` and `scripts/eval_analyzer.py` (offline only; the
serving path never imports it). `../shared/data/routellm/` records, per prompt, whether a
weak model (Mixtral-8x7B-Instruct) and a strong one (GPT-4) answered correctly:

* ``gsm8k_responses.csv`` and ``mmlu/*.csv`` — columns ``prompt``, then one boolean column
  per model;
* ``mt_bench_judgements.jsonl`` — a GPT-4 judge's 1-10 score per model, question and turn;
  an answer is "right" at a score of 8 or more.

A prompt is **hard** (label 1) when only the strong model was right: that is when skipping
the Scout pays. Prompts both models got right, or both wrong, are label 0: the Validator
would not do better there. Splits are by prompt group (an MT-Bench question's two turns stay
together), by a hash, so they are stable across runs and machines.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from serving.analyzer.complexity import profile_features
from serving.analyzer.profile import profile_request, question_text
from serving.config.analyzer import DEFAULT_OUTPUT_TOKENS
from serving.engines.base import GenerationRequest

WEAK = "mistralai/Mixtral-8x7B-Instruct-v0.1"
STRONG = "gpt-4-1106-preview"
MT_BENCH_RIGHT = 8
EMBEDDER = "all-minilm-l6-v2"


@dataclass
class LabeledPrompt:
    """One prompt with both models' correctness."""

    source: str  # 'gsm8k', 'mmlu/<subject>', 'mt_bench'
    group: str  # split unit
    request: GenerationRequest
    weak_ok: bool
    strong_ok: bool

    @property
    def hard(self) -> bool:
        """Only the strong model was right."""
        return self.strong_ok and not self.weak_ok


def _csv_rows(path: Path) -> Iterable[dict[str, str]]:
    csv.field_size_limit(1 << 24)
    with path.open(newline="", encoding="utf-8") as f:
        yield from csv.DictReader(f)


def _bool(v: str) -> bool:
    return v.strip().lower() == "true"


def _chat(text: str) -> GenerationRequest:
    return GenerationRequest(messages=[{"role": "user", "content": text}])


def load_routellm(root: Path, mt_bench_questions: Path | None = None) -> list[LabeledPrompt]:
    """All labelled prompts under `root` (`../shared/data/routellm`)."""
    out: list[LabeledPrompt] = []
    for row in _csv_rows(root / "gsm8k_responses.csv"):
        out.append(LabeledPrompt("gsm8k", "gsm8k:" + row["prompt"], _chat(row["prompt"]),
                                 _bool(row[WEAK]), _bool(row[STRONG])))
    for path in sorted((root / "mmlu").glob("*.csv")):
        subject = path.stem.removeprefix("mmlu_")
        for row in _csv_rows(path):
            out.append(LabeledPrompt(f"mmlu/{subject}", "mmlu:" + row["prompt"], _chat(row["prompt"]),
                                     _bool(row[WEAK]), _bool(row[STRONG])))
    out.extend(_mt_bench(root / "mt_bench_judgements.jsonl",
                         mt_bench_questions or root.parent / "mt_bench" / "mt_bench_question.jsonl"))
    return out


_ASSISTANT = re.compile(r"### Assistant A:\n(.*?)\n\n### User:", re.DOTALL)


def _mt_bench(judgements: Path, questions: Path) -> list[LabeledPrompt]:
    turns = {q["question_id"]: q["turns"] for q in map(json.loads, questions.read_text().splitlines()) if q}
    scores: dict[tuple[int, int], dict[str, float]] = {}
    first_answer: dict[int, str] = {}
    for line in judgements.read_text().splitlines():
        j = json.loads(line)
        scores.setdefault((j["question_id"], j["turn"]), {})[j["model"]] = j["score"]
        if j["turn"] == 2 and j["model"] == WEAK and (m := _ASSISTANT.search(j["user_prompt"])):
            first_answer[j["question_id"]] = m.group(1)
    out = []
    for (qid, turn), s in sorted(scores.items()):
        if WEAK not in s or STRONG not in s or qid not in turns:
            continue
        q = turns[qid]
        messages = [{"role": "user", "content": q[0]}]
        if turn == 2:
            messages += [{"role": "assistant", "content": first_answer.get(qid, "")},
                         {"role": "user", "content": q[1]}]
        out.append(LabeledPrompt("mt_bench", f"mt_bench:{qid}", GenerationRequest(messages=messages),
                                 s[WEAK] >= MT_BENCH_RIGHT, s[STRONG] >= MT_BENCH_RIGHT))
    return out


def is_held_out(group: str, percent: int = 20) -> bool:
    """Whether a prompt group is in the held-out split (a stable hash, independent of order and seed)."""
    return int(hashlib.sha256(group.encode()).hexdigest()[:8], 16) % 100 < percent


def data_digest(root: Path) -> str:
    """sha256 over the label files, in name order: names the data an artifact was trained on."""
    h = hashlib.sha256()
    for path in sorted([root / "gsm8k_responses.csv", root / "mt_bench_judgements.jsonl",
                        *(root / "mmlu").glob("*.csv")]):
        h.update(path.relative_to(root).as_posix().encode())
        h.update(hashlib.sha256(path.read_bytes()).digest())
    return h.hexdigest()


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U with average ranks for ties)."""
    labels = np.asarray(labels, dtype=bool)
    scores = np.asarray(scores, dtype=np.float64)
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores), dtype=np.float64)
    sorted_scores = scores[order]
    i = 0
    while i < len(scores):
        j = i
        while j + 1 < len(scores) and sorted_scores[j + 1] == sorted_scores[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2 + 1
        i = j + 1
    n_pos, n_neg = labels.sum(), (~labels).sum()
    if not n_pos or not n_neg:
        return float("nan")
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def cache_dir() -> Path:
    """The project's cache folder (INFOPT_CACHE_DIR, else ~/.cache/inference-optimizer)."""
    from serving.config.app import default_cache_dir

    return Path(os.environ.get("INFOPT_CACHE_DIR") or default_cache_dir())


def _text_key(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def embed_cached(texts: list[str], store: Path | None = None, log: Callable[[str], None] = print) -> np.ndarray:
    """Embeddings of `texts` with the Embedder's model, computing only those not in the `store` file yet.

    The store (<cache_dir>/analyzer/embeddings-<model>.npz) lives outside the repo; the
    first run embeds everything (minutes on one core: run it under the heavy lock).
    """
    store = store or cache_dir() / "analyzer" / f"embeddings-{EMBEDDER}.npz"
    known: dict[str, np.ndarray] = {}
    if store.exists():
        with np.load(store) as z:
            known = dict(zip(z["keys"].tolist(), z["vectors"], strict=True))
    keys = [_text_key(t) for t in texts]
    todo = sorted({k: t for k, t in zip(keys, texts, strict=True) if k not in known}.items())
    if todo:
        from serving.cache.embedder import SentenceTransformerEmbedder
        from serving.models import resolve

        model = SentenceTransformerEmbedder(resolve(EMBEDDER, cache_dir()), torch_threads=1)
        log(f"embedding {len(todo)} texts with {EMBEDDER} (cached: {len(known)}) ...")
        t0 = time.perf_counter()
        step = 512
        for i in range(0, len(todo), step):
            chunk = todo[i:i + step]
            vectors = model.embed_sync([t for _, t in chunk], batch_size=64)
            known.update({k: np.asarray(v, dtype=np.float32) for (k, _), v in zip(chunk, vectors, strict=True)})
            log(f"  {min(i + step, len(todo))}/{len(todo)} ({time.perf_counter() - t0:.0f} s)")
        store.parent.mkdir(parents=True, exist_ok=True)
        ks = sorted(known)
        tmp = store.with_suffix(".partial.npz")
        np.savez(tmp, keys=np.array(ks), vectors=np.stack([known[k] for k in ks]))
        tmp.replace(store)
    return np.stack([known[k] for k in keys]).astype(np.float64)


def dataset(prompts: list[LabeledPrompt], log: Callable[[str], None] = print) -> tuple[np.ndarray, ...]:
    """(features, labels, held-out mask) of `prompts`: profile features (word counts, no tokenizer) + embedding."""
    emb = embed_cached([question_text(p.request) for p in prompts], log=log)
    prof = np.array([profile_features(profile_request(p.request, None, DEFAULT_OUTPUT_TOKENS)) for p in prompts])
    x = np.hstack([prof, emb])
    y = np.array([p.hard for p in prompts], dtype=int)
    held = np.array([is_held_out(p.group) for p in prompts])
    return x, y, held
