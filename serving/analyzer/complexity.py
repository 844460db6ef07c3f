"""Complexity: the probability that the Scout's answer will not be good enough.

A logistic regression over the sentence embedding of the question (all-MiniLM-L6-v2,
384-d, from the Embedder) and a few profile features. It is trained offline by
`scripts/train_analyzer.py` on RouteLLM's per-prompt correctness labels (positive: only
the strong model was right) and stored as a small JSON artifact: coefficients, feature
names, the digest of the training data, the seed and the held-out AUC. Serving computes
``sigmoid(intercept + w · x)`` with numpy; scikit-learn is needed only to train.

The profile features are tokenizer-independent (words, not tokens), so one artifact
serves every engine pair.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from serving.analyzer.profile import RequestProfile

DEFAULT_ARTIFACT = Path(__file__).resolve().parent / "complexity-v1.json"

PROFILE_FEATURES = (
    "log_words",
    "extra_turns",
    "log_numbers",
    "log_questions",
    "log_sentences",
    "code",
    "math",
    "reasoning",
    "short_answer",
)


def profile_features(profile: RequestProfile) -> list[float]:
    """The profile part of the feature vector, in `PROFILE_FEATURES` order."""
    return [
        math.log1p(profile.words),
        float(min(profile.turns - 1, 4)),
        math.log1p(profile.numbers),
        math.log1p(profile.questions),
        math.log1p(profile.sentences),
        float(profile.code),
        float(profile.math),
        float(profile.reasoning),
        float(profile.short_answer),
    ]


def feature_names(embedding_dim: int) -> list[str]:
    """Names of the full feature vector: the profile features, then the embedding's dimensions."""
    return [*PROFILE_FEATURES, *(f"emb_{i}" for i in range(embedding_dim))]


@dataclass
class ComplexityModel:
    """A trained logistic regression, scored with numpy (no scikit-learn at serve time)."""

    version: str
    names: list[str]
    coef: np.ndarray
    intercept: float
    embedding_dim: int
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.coef = np.asarray(self.coef, dtype=np.float64)
        if len(self.names) != len(self.coef):
            raise ValueError(f"{len(self.names)} feature names but {len(self.coef)} coefficients")
        if self.names != feature_names(self.embedding_dim):
            raise ValueError("the artifact's features are not this code's features; retrain with "
                             "scripts/train_analyzer.py")

    @classmethod
    def load(cls, path: Path | str | None = None) -> ComplexityModel:
        """Read an artifact written by `to_json` (default: the one shipped in this package)."""
        return cls.from_json(Path(path or DEFAULT_ARTIFACT).read_text())

    @classmethod
    def from_json(cls, text: str) -> ComplexityModel:
        """Parse an artifact's text."""
        doc = json.loads(text)
        return cls(version=doc["version"], names=list(doc["features"]), coef=np.array(doc["coef"]),
                   intercept=float(doc["intercept"]), embedding_dim=int(doc["embedding_dim"]),
                   meta=dict(doc.get("meta", {})))

    def to_json(self) -> str:
        """The artifact: stable key order and rounded floats, so the same training gives the same bytes."""
        doc = {
            "version": self.version,
            "embedding_dim": self.embedding_dim,
            "intercept": round(float(self.intercept), 8),
            "features": self.names,
            "coef": [round(float(c), 8) for c in self.coef],
            "meta": self.meta,
        }
        return json.dumps(doc, indent=1, sort_keys=True) + "\n"

    def features(self, profiles: Sequence[RequestProfile], embeddings: np.ndarray) -> np.ndarray:
        """The feature matrix of a batch (one row per request)."""
        emb = np.asarray(embeddings, dtype=np.float64).reshape(len(profiles), -1)
        if emb.shape[1] != self.embedding_dim:
            raise ValueError(f"embedding has {emb.shape[1]} dimensions; the model expects {self.embedding_dim}")
        prof = np.array([profile_features(p) for p in profiles], dtype=np.float64).reshape(len(profiles), -1)
        return np.hstack([prof, emb])

    def score_features(self, x: np.ndarray) -> np.ndarray:
        """P(hard) for each row of a feature matrix."""
        z = np.asarray(x, dtype=np.float64) @ self.coef + self.intercept
        return 1.0 / (1.0 + np.exp(-z))

    def score(self, profiles: Sequence[RequestProfile], embeddings: np.ndarray) -> np.ndarray:
        """P(hard) for a batch of profiled requests with their question embeddings."""
        return self.score_features(self.features(profiles, embeddings))
