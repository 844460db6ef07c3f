"""The judge: does a shortcut's answer say what the Validator's answer to the same request says?

One interface (`Judge`), implementations chosen per kind of request by `JudgePanel`:

* `IdenticalJudge` — the same text (after whitespace normalisation) agrees: under greedy
  decoding the Validator would have written exactly this. It only ever says "agree";
  different text goes to the next judge.
* `FinalNumberJudge` — maths: the same final number agrees, another disagrees (the GSM8K
  check; a truncated answer is judged by the last figure it reached).
* `EmbeddingJudge` — the cosine of the two answers' sentence embeddings at or above a
  threshold agrees: the same meaning in other words. Cheap and reproducible; it reads
  "says the same", not "is as good".
* `ValidatorJudge` — the Validator itself, asked in one short pass whether answer B says
  the same as answer A; its verdict is read from the log-probabilities of "Yes" and "No"
  (one generated token with alternatives), not from free text.

Their agreement with hand labels is measured by `scripts/eval_judge.py` (docs/benchmarks.md).
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np

from serving.answers import final_number
from serving.cache.embedder import Embedder
from serving.engines.base import GenerationRequest, LLMEngine, yes_probability

_SPACE = re.compile(r"\s+")


@dataclass(frozen=True)
class Verdict:
    """Agree or not, how sure (a similarity or probability when the judge has one), and which judge said so."""

    agree: bool
    score: float | None
    method: str


class Judge(ABC):
    """Compares a candidate answer with the Validator's reference answer to the same question."""

    name: str = "judge"

    @abstractmethod
    async def judge(self, question: str, reference: str, candidate: str, kind: str | None = None) -> Verdict | None:
        """The verdict, or None when this judge cannot decide this pair (the panel asks the next one)."""


class IdenticalJudge(Judge):
    name = "identical"

    async def judge(self, question, reference, candidate, kind=None):
        same = _SPACE.sub(" ", reference).strip() == _SPACE.sub(" ", candidate).strip()
        return Verdict(True, 1.0, self.name) if same else None


class FinalNumberJudge(Judge):
    """For maths requests (`kind` 'math' or 'gsm8k'); other kinds are left to the next judge."""

    name = "final_number"

    async def judge(self, question, reference, candidate, kind=None):
        if kind not in ("math", "gsm8k"):
            return None
        a, b = final_number(reference), final_number(candidate)
        if a is None or b is None:
            return None
        return Verdict(a == b, None, self.name)


class EmbeddingJudge(Judge):
    name = "embedding"

    def __init__(self, embedder: Embedder, threshold: float = 0.9) -> None:
        self.embedder = embedder
        self.threshold = threshold

    async def judge(self, question, reference, candidate, kind=None):
        va, vb = (np.asarray(v, dtype=float) for v in await self.embedder.embed([reference, candidate]))
        sim = float(va @ vb / max(np.linalg.norm(va) * np.linalg.norm(vb), 1e-12))
        return Verdict(sim >= self.threshold, sim, f"{self.name}>={self.threshold:g}")


_JUDGE_PROMPT = (
    "Two answers to the same question follow. Decide whether answer B says the same thing as answer A: "
    "the same result, facts and conclusions (wording and style may differ).\n\n"
    "Question:\n{question}\n\nAnswer A:\n{reference}\n\nAnswer B:\n{candidate}\n\n"
    "Does answer B say the same thing as answer A? Reply with Yes or No."
)


class ValidatorJudge(Judge):
    """The Validator as judge: P(Yes) from the top log-probabilities of its first answer token (`yes_probability`)."""

    name = "validator"

    def __init__(self, engine: LLMEngine, max_chars: int = 4000) -> None:
        self.engine = engine
        self.max_chars = max_chars

    async def judge(self, question, reference, candidate, kind=None):
        cut = self.max_chars
        prompt = _JUDGE_PROMPT.format(question=question[:cut], reference=reference[:cut], candidate=candidate[:cut])
        gen = await self.engine.generate(GenerationRequest(
            messages=[{"role": "user", "content": prompt}], max_tokens=1, temperature=0, logprobs=True,
            top_logprobs=10, priority=100))
        token = (gen.tokens or [None])[0]
        p_yes = None if token is None else yes_probability(token.alternatives())
        if p_yes is None:  # it said neither word: undecided, the panel's next judge decides
            return None
        return Verdict(p_yes >= 0.5, p_yes, self.name)


class JudgePanel(Judge):
    """Asks its judges in order; the first that decides gives the verdict (none decides: disagree)."""

    def __init__(self, judges: list[Judge]) -> None:
        self.judges = judges
        self.name = "+".join(j.name for j in judges)

    async def judge(self, question, reference, candidate, kind=None):
        for j in self.judges:
            verdict = await j.judge(question, reference, candidate, kind)
            if verdict is not None:
                return verdict
        return Verdict(False, None, "undecided")


def default_panel(embedder: Embedder | None = None, validator: LLMEngine | None = None,
                  embedding_threshold: float = 0.9) -> JudgePanel:
    """Identical text, then the final number for maths, then the Validator or the embedding judge."""
    judges: list[Judge] = [IdenticalJudge(), FinalNumberJudge()]
    if validator is not None:
        judges.append(ValidatorJudge(validator))
    if embedder is not None:
        judges.append(EmbeddingJudge(embedder, embedding_threshold))
    return JudgePanel(judges)
