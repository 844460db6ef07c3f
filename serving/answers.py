"""What an answer says: the final number of a worked solution, or its normalised text.

Shared by the judge (`serving.quality.judge`: the same final number for maths), the strategies' votes
(`serving.strategies`) and the benchmarks, so an answer is read one way everywhere."""

from __future__ import annotations

import re
import unicodedata

# GSM8K's own marker, LaTeX's \boxed{} (Qwen's maths answers end in one), then the phrasings small models use
# for their conclusion.
_MARKED = re.compile(r"(?:####|\\boxed\{|answer is|answer:|=\s*\$?)\s*\$?\s*(-?[\d,]*\.?\d+)", re.IGNORECASE)
_NUMBER = re.compile(r"-?\d[\d,]*\.?\d*|-?\.\d+")
_SPACE = re.compile(r"\s+")


def _number(text: str) -> str:
    """A number as one canonical string: no thousands separators, no trailing zeros ("1,200.50" -> "1200.5")."""
    raw = text.replace(",", "").rstrip(".")
    try:
        value = float(raw)
    except ValueError:
        return raw
    return str(int(value)) if value.is_integer() else f"{value:g}"


def final_number(text: str) -> str | None:
    """The final numeric answer of a worked solution: the last one marked (GSM8K's `####`, `\\boxed{}`, "answer
    is", "= "), else the last number in the text (None: it has no number)."""
    marked = _MARKED.findall(text)
    if marked:
        return _number(marked[-1])
    numbers = _NUMBER.findall(text)
    return _number(numbers[-1]) if numbers else None


def normalised(text: str) -> str:
    """Text compared as an answer: NFKC, case-folded, whitespace collapsed, trailing punctuation dropped."""
    return _SPACE.sub(" ", unicodedata.normalize("NFKC", text)).strip().casefold().rstrip(".!")


def extract_answer(text: str, kind: str = "auto") -> str:
    """The answer a vote counts: `kind` 'number' (the final number, or "" when there is none), 'text' (the
    normalised text) or 'auto' (the final number when the text holds one, else the normalised text)."""
    if kind == "text":
        return normalised(text)
    number = final_number(text)
    if number is not None:
        return number
    return "" if kind == "number" else normalised(text)
