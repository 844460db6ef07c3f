"""Running a strategy: sample candidates, score them with the Validator, vote or rank, or search by steps."""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass, field, replace
from typing import Any

from serving.answers import extract_answer
from serving.config import StrategiesConfig
from serving.engines.base import Generation, GenerationRequest, LLMEngine, Usage
from serving.strategies._policy import StrategyName
from serving.strategies._vote import Candidate, Choice, best_of, majority_vote, weighted_vote


@dataclass
class Spent:
    """One engine's work on a strategy: tokens and wall seconds of its calls."""

    usage: Usage = field(default_factory=Usage)
    seconds: float = 0.0

    def add(self, usage: Usage, seconds: float) -> None:
        self.usage = Usage(self.usage.prompt_tokens + usage.prompt_tokens,
                           self.usage.completion_tokens + usage.completion_tokens)
        self.seconds += seconds


@dataclass
class StrategyResult:
    """A strategy's answer, its candidates and their tally, and what each engine spent."""

    name: StrategyName
    answer: Generation
    candidates: list[Candidate]
    choice: Choice
    sampler: Spent = field(default_factory=Spent)
    scorer: Spent = field(default_factory=Spent)
    steps: int = 0  # a search's steps

    @property
    def engine_s(self) -> float:
        return self.sampler.seconds + self.scorer.seconds

    def trace(self) -> dict[str, Any]:
        """The route trace's view: each candidate's answer and score, the tally, the winner."""
        detail: dict[str, Any] = {
            "candidates": [{"answer": c.answer[:64], "score": _finite(c.score), "own_logprob": _finite(c.own_logprob),
                            "tokens": c.tokens} for c in self.candidates],
            "tally": {a[:64]: _finite(v) for a, v in self.choice.tally.items()},
            "chosen": self.choice.index,
        }
        if self.steps:
            detail["steps"] = self.steps
        return detail


def _finite(x: float | None) -> float | None:
    """A figure for the trace (JSON has no infinities: a candidate without tokens has no mean)."""
    return round(x, 4) if x is not None and math.isfinite(x) else None


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else -math.inf


class StrategyRunner:
    """Runs the strategies over a sampler (the Scout, or the tier a request named) and a scorer (the Validator,
    when it can score: `LLMEngine.can_verify`)."""

    def __init__(self, sampler: LLMEngine, scorer: LLMEngine | None, config: StrategiesConfig | None = None,
                 answer_kind: str = "auto") -> None:
        self.sampler = sampler
        self.scorer = scorer if scorer is not None and scorer.can_verify else None
        self.config = config or StrategiesConfig()
        self.answer_kind = answer_kind

    async def run(self, request: GenerationRequest, name: StrategyName, n: int) -> StrategyResult:
        """`name` over `n` candidates (GREEDY and AUTO are decided before: see `StrategyPolicy`)."""
        if name is StrategyName.SEARCH:
            return await self._search(request, n)
        sampler, scorer = Spent(), Spent()
        candidates = await self._sample(request, n, sampler)
        if name.scored:
            await self._score(request, candidates, scorer)
        choose = {StrategyName.MAJORITY_VOTE: majority_vote, StrategyName.WEIGHTED_VOTE: weighted_vote,
                  StrategyName.BEST_OF_N: best_of}[name]
        choice = choose(candidates)
        return StrategyResult(name, self._answer(candidates[choice.index], sampler, scorer), candidates, choice,
                              sampler, scorer)

    # -- parts ----------------------------------------------------------------------------

    def _sampling(self, request: GenerationRequest, **changes: Any) -> GenerationRequest:
        temperature = request.temperature if request.temperature > 0 else self.config.temperature
        return replace(request, temperature=temperature, logprobs=True, top_logprobs=0, **changes)

    async def _generate(self, request: GenerationRequest, spent: Spent) -> Generation:
        t0 = time.perf_counter()
        gen = await self.sampler.generate(request)
        spent.add(gen.usage, time.perf_counter() - t0)
        return gen

    async def _sample(self, request: GenerationRequest, n: int, spent: Spent) -> list[Candidate]:
        """`n` candidates from one engine request (vLLM's `n`: one shared prefill)."""
        gen = await self._generate(self._sampling(request, n=n), spent)
        return [self._candidate(g.text, g) for g in gen.choices]

    def _candidate(self, text: str, gen: Generation | None = None) -> Candidate:
        tokens = gen.tokens or [] if gen is not None else []
        return Candidate(text=text, answer=extract_answer(text, self.answer_kind),
                         own_logprob=_mean([t.logprob for t in tokens]), tokens=len(tokens),
                         finish_reason=gen.finish_reason if gen is not None else None)

    async def _score(self, request: GenerationRequest, candidates: list[Candidate], spent: Spent) -> None:
        """The Validator's mean token log-probability of each distinct candidate text, in one engine request."""
        if self.scorer is None or not candidates:
            return  # without a scorer, weights and ranks fall back to the sampler's own log-probabilities
        texts = list(dict.fromkeys(c.text for c in candidates))
        t0 = time.perf_counter()
        scored = await self.scorer.score(replace(request, n=1, prefix=""), texts)
        by_text = {s.text: s for s in scored}
        spent.add(Usage(sum(s.prompt_tokens + len(s.logprobs) for s in scored), 0),  # a prefill: nothing decoded
                  time.perf_counter() - t0)
        for c in candidates:
            c.score = by_text[c.text].mean

    def _answer(self, chosen: Candidate, sampler: Spent, scorer: Spent) -> Generation:
        """The chosen candidate as the response; its usage is what the strategy spent in all."""
        usage = Usage(sampler.usage.prompt_tokens + scorer.usage.prompt_tokens,
                      sampler.usage.completion_tokens + scorer.usage.completion_tokens)
        return Generation(text=chosen.text, finish_reason=chosen.finish_reason or "stop", usage=usage,
                          model=self.sampler.model_id)

    # -- step-level search ------------------------------------------------------------------

    def _step_tokens(self, request: GenerationRequest, node: Candidate) -> int:
        """One step's most tokens: `step_tokens`, never past what the request allows in all."""
        return max(1, min(self.config.step_tokens, request.max_tokens - node.tokens))

    async def _search(self, request: GenerationRequest, n: int) -> StrategyResult:
        """A step-level search in the spirit of REBASE (Wu et al., 2024): each step, `search_width` expansions
        (at most `n` in all) are shared among the partial solutions in proportion to exp(score / T) of their
        Validator score; the Scout writes one more step (a line) of each; the Validator scores the new partial
        solutions in one pass; the best `search_width` go on. Finished solutions are voted on, weighted by
        their scores; if none finished, the best partial one is completed by the Scout."""
        cfg = self.config
        sampler, scorer = Spent(), Spent()
        beam: list[Candidate] = [Candidate(text="", answer="", score=0.0)]
        finished: list[Candidate] = []
        left, steps = n, 0
        while beam and left > 0 and steps < cfg.max_steps:
            steps += 1
            share = _balance([c.score or 0.0 for c in beam], min(left, cfg.search_width), cfg.balance_temperature)
            left -= sum(share)
            calls = [self._generate(self._sampling(request, n=k, prefix=node.text, stop=[cfg.step_stop],
                                                   max_tokens=self._step_tokens(request, node)), sampler)
                     for node, k in zip(beam, share, strict=True) if k > 0]
            parents = [node for node, k in zip(beam, share, strict=True) if k > 0]
            children: list[Candidate] = []
            for node, gen in zip(parents, await asyncio.gather(*calls), strict=True):
                for g in gen.choices:
                    done = g.finish_reason == "stop" and g.stop_reason is None  # end of sequence, not a line
                    text = node.text + g.text + ("" if done or g.finish_reason != "stop" else cfg.step_stop)
                    c = self._candidate(text, g)
                    c.tokens += node.tokens  # the whole partial solution's
                    c.finish_reason = "stop" if done else None
                    if not done and c.tokens >= request.max_tokens:
                        c.finish_reason = "length"
                    children.append(c)
            await self._score(request, children, scorer)
            finished += [c for c in children if c.finish_reason is not None]
            beam = sorted((c for c in children if c.finish_reason is None), key=lambda c: -(c.score or -math.inf))
            beam = beam[: cfg.search_width]
        if not finished:
            best = beam[0] if beam else Candidate(text="", answer="")
            rest = await self._generate(replace(request, n=1, prefix=best.text, temperature=0.0, logprobs=True,
                                                top_logprobs=0, max_tokens=max(request.max_tokens - best.tokens, 1)),
                                        sampler)
            done = self._candidate(best.text + rest.text, rest)
            done.tokens += best.tokens
            await self._score(request, [done], scorer)
            finished = [done]
        for c in finished:
            c.answer = extract_answer(c.text, self.answer_kind)
        choice = weighted_vote(finished)
        return StrategyResult(StrategyName.SEARCH, self._answer(finished[choice.index], sampler, scorer), finished,
                              choice, sampler, scorer, steps)


def _balance(scores: list[float], budget: int, temperature: float) -> list[int]:
    """REBASE's allocation: `budget` expansions in proportion to softmax(score / T), largest remainders first."""
    if budget <= 0 or not scores:
        return [0] * len(scores)
    top = max(scores)
    weights = [math.exp((s - top) / temperature) for s in scores]
    total = sum(weights)
    raw = [budget * w / total for w in weights]
    share = [int(r) for r in raw]
    for i in sorted(range(len(raw)), key=lambda i: raw[i] - share[i], reverse=True)[: budget - sum(share)]:
        share[i] += 1
    return share
