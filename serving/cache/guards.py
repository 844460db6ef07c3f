"""Cheap checks that veto a semantic cache hit that would be a wrong answer.

Embeddings place "turn on the lights" next to "turn off the lights" and "what is 15% of
80" next to "what is 20% of 80": similar wording, different answers. Before a semantic
hit is served, the cached question and the new one are compared on what embeddings blur:

* negation and opposites — the negation cues ("not", "no", "never", "n't", "without",
  ...) must match, and no antonym pair ("on"/"off", "increase"/"decrease", ...) may be
  split between the two questions;
* numbers — the multiset of numbers (digits, decimals, percentages, number words up to
  twenty) must be equal;
* named things — quoted strings, and capitalised words that are not sentence-initial
  (a cheap proxy for named entities: "Paris" vs "Rome", "Python" vs "Java"), of either
  question must appear in the other (in any case: users do not capitalise reliably).

No model is called: each check is a regex over two short strings (microseconds).
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass

NEGATIONS = frozenset(
    "not no never none nobody nothing neither nor nowhere without cannot cant dont doesnt didnt isnt arent "
    "wasnt werent wont wouldnt shouldnt couldnt hasnt havent hadnt aint".split()
)
ANTONYMS: tuple[tuple[str, str], ...] = (
    ("on", "off"), ("enable", "disable"), ("enabled", "disabled"), ("increase", "decrease"),
    ("add", "remove"), ("before", "after"), ("max", "min"), ("maximum", "minimum"), ("true", "false"),
    ("open", "close"), ("start", "stop"), ("up", "down"), ("buy", "sell"), ("import", "export"),
    ("encrypt", "decrypt"), ("encode", "decode"), ("upload", "download"), ("push", "pull"),
    ("win", "lose"), ("best", "worst"), ("more", "less"), ("higher", "lower"), ("larger", "smaller"),
    ("first", "last"), ("install", "uninstall"), ("lock", "unlock"), ("include", "exclude"),
    ("ascending", "descending"), ("positive", "negative"), ("advantages", "disadvantages"),
    ("pros", "cons"), ("legal", "illegal"), ("possible", "impossible"), ("safe", "unsafe"),
    ("hot", "cold"), ("fast", "slow"), ("cheap", "expensive"), ("love", "hate"), ("male", "female"),
    ("men", "women"), ("boy", "girl"), ("north", "south"), ("east", "west"), ("left", "right"),
)
NUMBER_WORDS = {
    w: str(i) for i, w in enumerate(
        "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
        "sixteen seventeen eighteen nineteen twenty".split()
    )
}
_WORD = re.compile(r"[A-Za-z][A-Za-z'’]*")
_NUMBER = re.compile(r"(?<![\w.])[-+]?\d[\d,]*(?:\.\d+)?%?")
_QUOTED = re.compile(r"\"([^\"]+)\"|“([^”]+)”|'([^']{2,})'|`([^`]+)`")
_POSSESSIVE = re.compile(r"['’]s?$")
_SENTENCE_START = re.compile(r"(?:^|[.!?]\s+|\n)\s*[\"'“(]*([A-Z][\w'’-]*)")


@dataclass(frozen=True)
class GuardResult:
    """Whether a hit may be served; `reason` names the first check that vetoed it."""

    ok: bool
    reason: str | None = None


PASS = GuardResult(True)


def _words(text: str) -> list[str]:
    return [w.lower().replace("’", "'") for w in _WORD.findall(text)]


def negations(text: str) -> Counter[str]:
    """Negation cues, with contractions folded ("don't" -> "dont", "n't" counted)."""
    out: Counter[str] = Counter()
    for w in _words(text):
        bare = w.replace("'", "")
        if bare in NEGATIONS:
            out[bare] += 1
        elif w.endswith("n't"):
            out["n't"] += 1
    return out


def numbers(text: str) -> Counter[str]:
    """Numbers as written (commas dropped, trailing zeros of decimals kept out), plus number words."""
    out: Counter[str] = Counter()
    for raw in _NUMBER.findall(text):
        n = raw.replace(",", "").lstrip("+")
        if "." in n and not n.endswith("%"):
            n = n.rstrip("0").rstrip(".")
        out[n] += 1
    for w in _words(text):
        if w in NUMBER_WORDS:
            out[NUMBER_WORDS[w]] += 1
    return out


def named(text: str) -> frozenset[str]:
    """Quoted strings and capitalised words that do not start a sentence."""
    quoted = {next(g for g in m.groups() if g).strip() for m in _QUOTED.finditer(text)}
    starts = {m.start(1) for m in _SENTENCE_START.finditer(text)}
    caps = {
        _POSSESSIVE.sub("", m.group(0)) for m in re.finditer(r"\b[A-Z][\w'’-]*", text)
        if m.start() not in starts and m.group(0) not in ("I", "I'm", "I've", "I'd", "I'll")
    }
    return frozenset(quoted | caps)


def _unmatched(names: frozenset[str], other: str) -> bool:
    """A name of one question that the other does not mention at all (in any case)."""
    low = other.lower()
    return any(n.lower() not in low for n in names)


def _antonym_split(a: set[str], b: set[str]) -> tuple[str, str] | None:
    for x, y in ANTONYMS:
        if (x in a and y in b and y not in a) or (y in a and x in b and x not in a):
            return x, y
    return None


def check(cached: str, new: str) -> GuardResult:
    """Veto a semantic hit of `new` on an entry cached for `cached` when their meaning may differ."""
    if negations(cached) != negations(new):
        return GuardResult(False, "negation")
    split = _antonym_split(set(_words(cached)), set(_words(new)))
    if split is not None:
        return GuardResult(False, "opposite")
    if numbers(cached) != numbers(new):
        return GuardResult(False, "numbers")
    if _unmatched(named(cached), new) or _unmatched(named(new), cached):
        return GuardResult(False, "entities")
    return GuardResult(True)
