"""The semantic cache's second opinion: do two questions ask the same thing?

The vector search *proposes* cached questions near the new one; a `PairVerifier` reads each
proposed pair together and says how likely they are paraphrases, so that the cache can look
further out (a looser similarity floor) and still serve only what the verifier accepts
(`serving.policy.cache.judge_verified`). `CrossEncoderVerifier` runs the cross-encoder that
`infopt models prepare --verifier` trains (`infopt.verifier_training`) in this process (the
`SemanticCache` deployment holds one). Tests use fakes that subclass `PairVerifier`.

A verifier may be slow or absent; the cache degrades, never fails: see `SemanticCache`.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from abc import ABC, abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from serving.config.cache import VerifierConfig

logger = logging.getLogger(__name__)

# The verifier `infopt models prepare --verifier` trains, by name, and the marker its folder holds when done.
TRAINED_VERIFIER = "qqp-cross-encoder-minilm-l6"
TRAINED_MARKER = ".infopt-trained.json"


class PairVerifier(ABC):
    """Scores question pairs: the probability that the second asks what the first asked."""

    name: str

    @abstractmethod
    async def score(self, pairs: list[tuple[str, str]]) -> list[float]:
        """One probability in [0, 1] per (cached question, new question) pair, in order."""


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



def trained_verifier_dir(cache_dir: Path) -> Path:
    """Where `infopt models prepare --verifier` puts the trained cross-encoder."""
    return Path(cache_dir) / "models" / TRAINED_VERIFIER


def open_verifier(config: VerifierConfig, cache_dir: Path) -> tuple[PairVerifier | None, str]:
    """The configured verifier, or None with the reason the cache decides by its threshold instead.

    A verifier that is not prepared, or fails to load, does not stop the cache: it logs why, and the similarity
    threshold decides as it does without one (`stats()` and `/healthz` say which rule is in force)."""
    if config.model is None:
        return None, "off"
    model = config.model
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
