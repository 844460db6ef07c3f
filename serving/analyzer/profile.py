"""What a request looks like before any model reads it: size, turns, kind of task.

`profile_request` is cheap (regular expressions and one tokenizer call) and pure. Its
signals are deliberately simple and explainable; the complexity model
(`serving.analyzer.complexity`) weighs them together with the sentence embedding, so a
signal that fires wrongly costs little on its own.

* code — code fences, common keywords of programming languages, or a request to write,
  fix or explain code;
* maths — arithmetic with numbers, equations, LaTeX, or words of quantitative problems;
* multi-step reasoning — explicit asks (step by step, prove, compare, explain why) or a
  question made of several sentences and conditions.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from typing import Any, Literal

from pydantic import BaseModel, Field

from serving.engines.base import GenerationRequest
from serving.policy.cache import last_user_turn

TaskKind = Literal["short_answer", "chat", "math", "code", "reasoning"]

_CODE = re.compile(
    r"```|\bdef \w+\(|\bclass \w+[:(]|\bimport \w+|#include\b|\bfunction\s*\w*\(|=>|\bconsole\.log\b|"
    r"\bpublic static\b|\bSELECT\b.+\bFROM\b|\breturn\b.*;|[{};]\s*$|"
    r"\b(python|javascript|typescript|java|c\+\+|rust|golang|sql|bash|regex|html|css|json|api|"
    r"function|algorithm|compile[sr]?|debug|bug|stack trace|exception|recursion|snippet|script|code)\b",
    re.IGNORECASE | re.MULTILINE,
)
_MATH_WORDS = re.compile(
    r"\b(calculate|compute|solve|equation|integral|derivative|probability|percent(age)?|average|sum|product|"
    r"how (many|much)|total|ratio|remainder|divided|multiply|fraction|prime|theorem|matrix|polynomial|"
    r"logarithm|variance|expected value|geometry|triangle|area|volume|perimeter|speed|interest rate)\b",
    re.IGNORECASE,
)
_MATH_SYMBOLS = re.compile(r"\d\s*[-+*/^=×÷%]\s*\d|\\frac|\\sqrt|\$\d|\b[xyzn]\s*[=^]\s*\d|\d+\s*%|\^\d")
_REASONING = re.compile(
    r"\b(step[- ]by[- ]step|explain (why|how)|why (does|do|is|are|would)|prove|show that|justify|derive|"
    r"compare|contrast|analy[sz]e|evaluate|pros and cons|trade-?offs?|reason(ing)?|implications?|"
    r"what would happen|first\b.+\bthen|plan|design|critique|argue)\b",
    re.IGNORECASE,
)
_SHORT = re.compile(
    r"(^|\n)\s*\(?[A-D][.)]\s|\banswer:\s*$|\b(yes or no|true or false|one word|single word|"
    r"which of the following|name (the|a))\b",
    re.IGNORECASE,
)
_NUMBER = re.compile(r"\d+(?:[.,]\d+)*")
# A sentence end, but not the dot of a choice label ("A. Mars") or an initial.
_SENTENCE = re.compile(r"(?<!\b[A-Za-z])[.!?](?=\s|$)")


class TokenCounter(ABC):
    """Counts prompt tokens the way the engine will (its tokenizer and chat template)."""

    @abstractmethod
    def count(self, request: GenerationRequest) -> int:
        """Prompt tokens of `request`."""


class HFTokenCounter(TokenCounter):
    """A Hugging Face tokenizer loaded lazily (transformers is imported on first use)."""

    def __init__(self, model: str) -> None:
        self.model = model
        self._tokenizer: Any = None

    @property
    def tokenizer(self) -> Any:
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            self._tokenizer = AutoTokenizer.from_pretrained(self.model)
        return self._tokenizer

    def count(self, request: GenerationRequest) -> int:
        tok = self.tokenizer
        if request.kind == "completion":
            return len(tok(request.prompt or "", add_special_tokens=True)["input_ids"])
        messages = [{"role": m["role"], "content": _text(m.get("content"))} for m in request.messages or []]
        if getattr(tok, "chat_template", None):
            ids = tok.apply_chat_template(messages, tokenize=True, add_generation_prompt=True)
            # transformers 5 returns a BatchEncoding, older versions a list of ids.
            return len(ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids)
        return len(tok("\n".join(m["content"] for m in messages))["input_ids"])


class RequestProfile(BaseModel):
    """Cheap facts about one request (recorded in the route trace with the plan)."""

    prompt_tokens: int = Field(description="Prompt tokens with the engine's tokenizer and chat template.")
    turns: int = Field(description="User turns in the conversation (1 for a text completion).")
    words: int = Field(description="Words in the last user turn (or the prompt).")
    numbers: int = Field(description="Numbers in the last user turn.")
    questions: int = Field(description="Question marks in the last user turn.")
    sentences: int = Field(description="Sentences in the last user turn.")
    code: bool = Field(description="Looks like code or a programming task.")
    math: bool = Field(description="Looks like a quantitative problem.")
    reasoning: bool = Field(description="Asks for multi-step reasoning (explain, prove, compare, step by step).")
    short_answer: bool = Field(description="Asks for a short answer (multiple choice, yes/no, one word).")
    task: TaskKind = Field(description="The kind of task, which sets the expected answer length.")
    expected_output_tokens: int = Field(description="Expected answer length in tokens for this kind of task.")


def _text(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "".join(p.get("text", "") if isinstance(p, dict) else str(getattr(p, "text", "")) for p in content)


def question_text(request: GenerationRequest) -> str:
    """What is scanned for signals: the last user turn, or the prompt (`serving.policy.cache.last_user_turn`)."""
    return last_user_turn(request)


def task_kind(code: bool, math: bool, reasoning: bool, short: bool) -> TaskKind:
    """One kind per request, most demanding first: code, then maths, reasoning, short answers, chat."""
    if code:
        return "code"
    if math:
        return "math"
    if reasoning:
        return "reasoning"
    if short:
        return "short_answer"
    return "chat"


def profile_request(
    request: GenerationRequest, tokens: TokenCounter | None, expected_output_tokens: dict[str, int]
) -> RequestProfile:
    """Profile `request`. `tokens=None` counts words instead (only for offline training features)."""
    text = question_text(request)
    turns = 1 if request.kind == "completion" else max(1, sum(m.get("role") == "user" for m in request.messages or []))
    code = bool(_CODE.search(text))
    math = bool(_MATH_SYMBOLS.search(text)) or (bool(_MATH_WORDS.search(text)) and bool(_NUMBER.search(text)))
    reasoning = bool(_REASONING.search(text)) or len(_SENTENCE.findall(text)) >= 4
    short = bool(_SHORT.search(text))
    kind = task_kind(code, math, reasoning, short)
    words = len(text.split())
    return RequestProfile(
        prompt_tokens=tokens.count(request) if tokens is not None else words,
        turns=turns,
        words=words,
        numbers=len(_NUMBER.findall(text)),
        questions=text.count("?"),
        sentences=max(1, len(_SENTENCE.findall(text))),
        code=code,
        math=math,
        reasoning=reasoning,
        short_answer=short,
        task=kind,
        expected_output_tokens=expected_output_tokens[kind],
    )
