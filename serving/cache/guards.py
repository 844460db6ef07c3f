"""Cheap checks that veto a semantic cache hit that would be a wrong answer.

Embeddings place "turn on the lights" next to "turn off the lights" and "what is 15% of
80" next to "what is 20% of 80": similar wording, different answers. Before a semantic
hit is served, the cached question and the new one are compared on what embeddings blur:

* negation and opposites — the negation cues ("not", "no", "never", "n't", "without",
  ...) must match, and no antonym pair ("on"/"off", "increase"/"decrease", ...) may be
  split between the two questions;
* numbers — the multiset of numbers (digits, decimals, percentages, number words up to
  twenty, and whole tokens that carry a digit: "iPhone 5" is not "iPhone 5s") must be equal;
* qualifiers — a word that narrows the question ("first", "latest", "only", "best", ...)
  in one question and not the other: "Who was the president?" is not "Who was the first
  president?";
* named things — quoted strings, and capitalised words that are not sentence-initial
  (a cheap proxy for named entities: "Paris" vs "Rome", "Python" vs "Java"), of either
  question must appear in the other (in any case: users do not capitalise reliably);
* swapped roles — the same content words with two parts exchanged around the rest ("Can a
  hospital sue you?" vs "Can I sue a hospital?", "Was Darth Vader more powerful than Anakin
  Skywalker?" vs the reverse): same words, who does what to whom changed.

Each check raises precision at the chosen similarity threshold on real paraphrase data
(QQP; the ablation is printed by scripts/eval_cache.py, figures in docs/benchmarks.md).

No model is called: each check is a regex over two short strings (microseconds).
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass

NEGATIONS = frozenset(
    "not no never none nobody nothing neither nor nowhere without cannot cant dont doesnt didnt isnt arent "
    "wasnt werent wont wouldnt shouldnt couldnt hasnt havent hadnt aint non".split()
)
# Words that narrow what is asked about. Superlatives of degree ("fastest way to learn X"
# = "how to learn X quickly") cost some true hits, but leaving them out let more wrong
# hits through than it saved right ones on QQP (docs/benchmarks.md).
QUALIFIERS = frozenset(
    "first last best worst most least only new newest latest original oldest next previous former current top "
    "biggest largest smallest cheapest fastest easiest hardest".split()
)
# Function words: what is left after them is what a question is about.
STOPWORDS = frozenset(
    "a an the is are was were be been being do does did done doing have has had having i me my mine we us our you "
    "your he him his she her it its they them their what which who whom whose when where why how that this these "
    "those there here of in on at to for from by with about as into onto over under than then so if or and but "
    "can could should would will shall may might must get got some any many much more very just also too "
    "s t".split()
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
_NUMBER = re.compile(r"(?<![\w.])[-+]?\d[\d,]*(?:\.\d+)?%?(?![\w])")
_SPACED_PERCENT = re.compile(r"(\d)\s+%")
_DIGIT_TOKEN = re.compile(r"\b(?=\w*\d)(?=\w*[A-Za-z])\w+\b")
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
        elif bare.startswith("non") and "-" in w:
            out["non"] += 1
        elif w.endswith("n't"):
            out["n't"] += 1
    return out


def numbers(text: str) -> Counter[str]:
    """Numbers as written (commas dropped, trailing zeros of decimals kept out), plus number words."""
    out: Counter[str] = Counter()
    text = _SPACED_PERCENT.sub(r"\1%", text)
    for raw in _NUMBER.findall(text):
        n = raw.replace(",", "").lstrip("+")
        if "." in n and not n.endswith("%"):
            n = n.rstrip("0").rstrip(".")
        out[n] += 1
    for w in _words(text):
        if w in NUMBER_WORDS:
            out[NUMBER_WORDS[w]] += 1
    for tok in _DIGIT_TOKEN.findall(text):
        out[tok.lower()] += 1
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


def content_words(text: str) -> list[str]:
    """The words a question is about, in order (function words and negations left out)."""
    return [w for w in (x.replace("'", "") for x in _words(text)) if w not in STOPWORDS and w not in NEGATIONS]


def _swapped(a: list[str], b: list[str]) -> bool:
    """The same content words with two parts exchanged: who does what to whom changed.

    After the common beginning and end, `a` reads X M Y and `b` reads Y M X ("Darth Vader
    | more powerful | Anakin Skywalker"), with a middle M, or X and Y single words
    ("hospital sue" / "sue hospital"). Moving one block past another with nothing between
    them is how rephrasings reorder ("import data into MySQL from Excel" = "import Excel
    data into MySQL"), so that is not counted.
    """
    if len(a) < 2 or len(a) != len(b) or a == b or sorted(a) != sorted(b):
        return False
    start = 0
    while a[start] == b[start]:
        start += 1
    end = 0
    while a[-1 - end] == b[-1 - end]:
        end += 1
    x_m_y, y_m_x = a[start:len(a) - end], b[start:len(b) - end]
    n = len(x_m_y)
    for i in range(1, n):  # len(X)
        for j in range(1, n - i + 1):  # len(Y)
            x, y, m = x_m_y[:i], x_m_y[n - j:], x_m_y[i:n - j]
            if y_m_x == y + m + x and (m or i == j == 1):
                return True
    return False


def _unmatched(names: frozenset[str], other: str) -> bool:
    """A name of one question that the other does not mention at all (in any case)."""
    low = other.lower()
    return any(n.lower() not in low for n in names)


def _antonym_split(a: set[str], b: set[str]) -> tuple[str, str] | None:
    for x, y in ANTONYMS:
        if (x in a and y in b and y not in a) or (y in a and x in b and x not in a):
            return x, y
    return None


def vetoes(cached: str, new: str) -> set[str]:
    """Every check that would veto (for evaluation: `check` stops at the first)."""
    out = set()
    if negations(cached) != negations(new):
        out.add("negation")
    if _antonym_split(set(_words(cached)), set(_words(new))) is not None:
        out.add("opposite")
    if numbers(cached) != numbers(new):
        out.add("numbers")
    if QUALIFIERS.intersection(_words(cached)) != QUALIFIERS.intersection(_words(new)):
        out.add("qualifier")
    if _unmatched(named(cached), new) or _unmatched(named(new), cached):
        out.add("entities")
    if _swapped(content_words(cached), content_words(new)):
        out.add("swapped")
    return out


def check(cached: str, new: str) -> GuardResult:
    """Veto a semantic hit of `new` on an entry cached for `cached` when their meaning may differ."""
    if negations(cached) != negations(new):
        return GuardResult(False, "negation")
    split = _antonym_split(set(_words(cached)), set(_words(new)))
    if split is not None:
        return GuardResult(False, "opposite")
    if numbers(cached) != numbers(new):
        return GuardResult(False, "numbers")
    if QUALIFIERS.intersection(_words(cached)) != QUALIFIERS.intersection(_words(new)):
        return GuardResult(False, "qualifier")
    if _unmatched(named(cached), new) or _unmatched(named(new), cached):
        return GuardResult(False, "entities")
    if _swapped(content_words(cached), content_words(new)):
        return GuardResult(False, "swapped")
    return GuardResult(True)
