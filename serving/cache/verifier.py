"""The semantic cache's second opinion: do two questions ask the same thing?

The vector search *proposes* cached questions near the new one; a `PairVerifier` reads each
proposed pair together and says how likely they are paraphrases, so that the cache can look
further out (a looser similarity floor) and still serve only what the verifier accepts
(`serving.policy.cache.judge_verified`). Two kinds:

* `CrossEncoderVerifier` runs the cross-encoder that `infopt models prepare --verifier` trains
  (`infopt.verifier_training`) in this process (the `SemanticCache` deployment holds one);
* `EngineVerifier` asks one of the cascade's own models (`cache.verifier.model: validator` or
  `scout`) "do these two questions ask the same thing?" and reads the answer's probability from
  the log-probabilities of its first token: one short prefill, no decoding.

Tests use fakes that subclass `PairVerifier` (and `LLMEngine`).

A verifier may be slow or absent; the cache degrades, never fails: see `SemanticCache`.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from serving.engines.base import GenerationRequest, Usage, yes_probability

if TYPE_CHECKING:
    from serving.config.cache import VerifierConfig
    from serving.engines.base import LLMEngine

logger = logging.getLogger(__name__)

# The verifier `infopt models prepare --verifier` trains, by name, and the marker its folder holds when done.
TRAINED_VERIFIER = "qqp-cross-encoder-minilm-l6"
TRAINED_MARKER = ".infopt-trained.json"
# `cache.verifier.model` values that name one of the cascade's engines rather than a cross-encoder.
ENGINE_VERIFIERS = ("scout", "validator")
# How a cascade model is asked (the same words in `scripts/eval_cache.py`, which measured them).
CROSS_CHECK_PROMPT = ("Question 1: {cached}\nQuestion 2: {new}\n\nDo these two questions ask the same thing, so "
                      "that one answer would answer both? Reply with Yes or No.")
# Alternatives asked for at the first token: "Yes" and "No" are among them unless the model says something else.
CROSS_CHECK_TOP_LOGPROBS = 20


class PairVerifier(ABC):
    """Scores question pairs: the probability that the second asks what the first asked."""

    name: str
    # The cascade engine whose time a score spends ("validator" or "scout"), booked to that tier in the request's
    # cost; None: the scoring runs in the cache's own process (a cross-encoder), no engine's time.
    tier: str | None = None

    @abstractmethod
    async def score(self, pairs: list[tuple[str, str]]) -> list[float]:
        """One probability in [0, 1] per (cached question, new question) pair, in order."""

    async def score_costed(self, pairs: list[tuple[str, str]]) -> tuple[list[float], Usage | None]:
        """`score`, with the engine tokens it spent (None for a verifier that spends no engine's time)."""
        return await self.score(pairs), None


class VerifierBusy(RuntimeError):
    """Recoverable: the verifier's thread is still on earlier work (e.g. calls that timed out); the lookup goes on
    without it (a miss), rather than queueing more work behind it."""


class ThreadedVerifier(PairVerifier):
    """A verifier whose scoring blocks (a model's forward pass): it runs in one thread of its own, off the event
    loop. A call that times out cannot stop that thread's work, so at most `max_pending` calls may be running or
    queued; beyond that `score` raises `VerifierBusy` at once instead of piling work onto the cores."""

    max_pending: int = 2

    @abstractmethod
    def score_sync(self, pairs: list[tuple[str, str]]) -> list[float]:
        """Score in the calling thread."""

    async def score(self, pairs: list[tuple[str, str]]) -> list[float]:
        from concurrent.futures import ThreadPoolExecutor

        if getattr(self, "_pool", None) is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cache-verifier")
            self._pending, self._lock = 0, threading.Lock()
        with self._lock:  # the count goes down in the worker thread
            if self._pending >= self.max_pending:
                raise VerifierBusy(f"{self._pending} verifications still running or queued")
            self._pending += 1
        future = self._pool.submit(self.score_sync, pairs)
        # Counted down when the work ends, not when the caller stops waiting (a timeout leaves it running).
        future.add_done_callback(lambda _: self._done())
        return await asyncio.wrap_future(future)

    def _done(self) -> None:
        with self._lock:
            self._pending -= 1


class CrossEncoderVerifier(ThreadedVerifier):
    """A sentence-transformers `CrossEncoder` loaded from a folder (or a hub ID on clusters).

    torch is imported here, not at module import; `predict` runs in the verifier's own thread so
    the event loop keeps serving while a batch is scored. The model's sigmoid output is the score.
    """

    def __init__(self, model: str, *, name: str | None = None, device: str = "cpu",
                 torch_threads: int | None = None) -> None:
        import torch
        from sentence_transformers.cross_encoder import CrossEncoder

        if torch_threads:
            torch.set_num_threads(torch_threads)
        self.name = name or model
        self._model = CrossEncoder(model, device=device)

    def score_sync(self, pairs: list[tuple[str, str]], batch_size: int = 64) -> list[float]:
        """Score in the calling thread (scripts and batch jobs)."""
        if not pairs:
            return []
        scores = self._model.predict([list(p) for p in pairs], batch_size=batch_size, show_progress_bar=False,
                                     convert_to_numpy=True)
        return [float(s) for s in scores.reshape(-1)]


def cross_check_messages(cached: str, new: str) -> list[dict[str, str]]:
    """The chat that asks a cascade model whether two questions ask the same thing."""
    return [{"role": "user", "content": CROSS_CHECK_PROMPT.format(cached=cached.strip(), new=new.strip())}]


def cross_check_score(alternatives: Sequence[tuple[str, float]] | Mapping[str, float]) -> float:
    """A pair's score from the cross-checker's first token: `yes_probability`, or 0.5 when the model said neither
    word (the threshold, above 0.5 in practice, then refuses the pair)."""
    p_yes = yes_probability(alternatives)
    return 0.5 if p_yes is None else p_yes


class EngineVerifier(PairVerifier):
    """One of the cascade's models as the cross-checker: a greedy one-token answer per pair, with its alternatives'
    log-probabilities; the score is `cross_check_score`. The pairs of one lookup go to the engine concurrently (the
    engine batches them). It costs that model's prefill of about 70 tokens a pair: measured in docs/benchmarks.md
    (Propose, then verify)."""

    def __init__(self, engine: LLMEngine, *, name: str, tier: str | None = None, priority: int = 0) -> None:
        self.engine = engine
        self.name = name
        self.tier = tier
        self.priority = priority

    async def _one(self, cached: str, new: str) -> tuple[float, Usage]:
        request = GenerationRequest(messages=cross_check_messages(cached, new), max_tokens=1, temperature=0.0,
                                    logprobs=True, top_logprobs=CROSS_CHECK_TOP_LOGPROBS, priority=self.priority)
        generation = await self.engine.generate(request)
        first = (generation.tokens or [None])[0]
        return (0.5 if first is None else cross_check_score(first.alternatives())), generation.usage

    async def score_costed(self, pairs: list[tuple[str, str]]) -> tuple[list[float], Usage | None]:
        got = await asyncio.gather(*(self._one(a, b) for a, b in pairs))
        return [score for score, _ in got], Usage(sum(u.prompt_tokens for _, u in got),
                                                   sum(u.completion_tokens for _, u in got))

    async def score(self, pairs: list[tuple[str, str]]) -> list[float]:
        return (await self.score_costed(pairs))[0]


def trained_verifier_dir(cache_dir: Path) -> Path:
    """Where `infopt models prepare --verifier` puts the trained cross-encoder."""
    return Path(cache_dir) / "models" / TRAINED_VERIFIER


def open_verifier(config: VerifierConfig, cache_dir: Path, engines: Mapping[str, LLMEngine] | None = None,
                  ) -> tuple[PairVerifier | None, str]:
    """The configured verifier, or None with the reason the cache decides by its threshold instead.

    `engines`: the cascade's engines by role ('scout', 'validator'), for `model: validator` / `scout`.
    A verifier that is not prepared, or fails to load, does not stop the cache: it logs why, and the similarity
    threshold decides as it does without one (`stats()` and `/healthz` say which rule is in force)."""
    if config.model is None:
        return None, "off"
    model = config.model
    if model in ENGINE_VERIFIERS:
        engine = (engines or {}).get(model)
        if engine is None:
            why = f"'{model}' names a cascade engine, but the cache was given none"
            logger.warning("semantic cache: %s; the similarity threshold decides", why)
            return None, why
        return EngineVerifier(engine, name=f"{model}:{engine.model_id}", tier=model), "ready"
    if model == TRAINED_VERIFIER:
        folder = trained_verifier_dir(cache_dir)
        if not (folder / TRAINED_MARKER).exists():
            why = f"'{model}' is not prepared in {cache_dir}: run `infopt models prepare --verifier`"
            logger.warning("semantic cache: %s; the similarity threshold decides", why)
            return None, why
        model = str(folder)
    try:
        return CrossEncoderVerifier(model, name=config.model, torch_threads=config.torch_threads), "ready"
    except Exception as exc:  # a verifier that cannot load leaves the threshold rule
        why = f"'{config.model}' could not be loaded: {type(exc).__name__}: {exc}"[:300]
        logger.warning("semantic cache: %s; the similarity threshold decides", why)
        return None, why
