"""Cache policy: which requests may use the cache, what is compared, what is served, what is kept.

Every rule of the semantic cache lives here; the cache stage (`serving.pipeline`) and the
cache itself (`serving.cache.semantic`) ask.

* **Deterministic** (`is_deterministic`): greedy (temperature 0) or seeded. Only such a
  request has *the* answer, so only it is served from the cache or shares a computation
  in flight — unless the request opts in (`cache.allow_sampled`) or the operator does
  (`admit_sampled`): a sampled request asks for *a* sample, and a cached one is a fair
  sample only if the user says so. Requests for logprobs are not cached (entries keep
  text, not token probabilities).
* **The compared question** (`compared_question`): the last user turn (or the prompt),
  normalised (`normalize`: NFKC, whitespace collapsed; case kept, "US" is not "us"). It is
  what is embedded — once, by the analyzer when it runs, and the cache reuses that vector —
  and compared by similarity; everything around it (system prompt, earlier turns) must
  match exactly (`serving.cache.keys`). A chat that does not end with a user turn has no
  compared question: only exact hits.
* **Skipping** (`skip_reason`): ``cache.mode`` bypass, logprobs, sampled requests.
* **TTL limits** (`check_ttl`): a request may shorten or lengthen its entry's life up to
  `max_ttl_s`.
* **Serving a candidate** (`judge_candidate`): the vector search proposes the nearest
  entries with the same context and parameters; one is served when its similarity reaches
  `similarity_threshold` and the guards (`serving.cache.guards`: negations, numbers,
  qualifiers, named things, swapped roles) find no difference in meaning. A candidate
  above `draft_threshold` that is not served is a *near miss*: a draft the Validator may
  verify (`serving.verify`).
* **Verifying a candidate** (`judge_verified`): with a pair verifier (`cache.verifier`,
  `serving.cache.verifier`), the search reaches down to `verifier.propose_threshold`; the guards
  stay a cheap pre-filter, and a candidate they let through is served when the verifier's score
  (the probability that both questions ask the same thing) reaches `verifier.threshold`, whatever
  its similarity. The verifier reads both questions together, so it can tell paraphrases far
  apart in the embedding from near-identical questions about different things.
* **The threshold in force** (`threshold_in_force`): `similarity_threshold` as configured,
  or, when the profile's calibration file (`quality.calibration`) has a cache part made for
  the configured embedder and guards, the risk-controlled threshold it certified (`infopt
  calibrate cache`: at most ε false hits among served QQP pairs, with confidence 1 - δ); with a
  verifier, the verifier's score threshold it certified. A cache part for another embedder, or
  another rule or verifier, is refused; one that certified no threshold leaves the
  configured one, and a warning and the reported calibration version (without `+cache-...`)
  say so.
* **Admission** (`rejection_reason`): only answers that are *final* are kept — the
  Validator's, or the Scout's with confidence at or above `admit_scout_min_confidence`
  (stricter than the escalation threshold, so a borderline Scout answer is served once but
  not repeated); never an error, never an empty answer, and not one cut by max_tokens
  unless `admit_truncated`.
"""

from __future__ import annotations

import logging
import re
import unicodedata
from enum import StrEnum
from typing import TYPE_CHECKING

from serving.engines.base import GenerationRequest
from serving.errors import InvalidRequestError

if TYPE_CHECKING:
    from serving.api import CacheControl
    from serving.cache.semantic import CachedAnswer
    from serving.config.cache import CacheConfig
    from serving.quality.calibration import Calibration

_SPACE = re.compile(r"\s+")
logger = logging.getLogger(__name__)


def normalize(text: str) -> str:
    """NFKC, whitespace runs collapsed to one space, ends stripped."""
    return _SPACE.sub(" ", unicodedata.normalize("NFKC", text)).strip()


def is_deterministic(request: GenerationRequest) -> bool:
    """Greedy or seeded: the same request gives the same answer, so a cached or shared one is faithful."""
    return request.temperature == 0 or request.seed is not None


def _text(content: object) -> str:
    if isinstance(content, list):  # content parts
        return "".join(str(p.get("text", "")) if isinstance(p, dict) else str(p) for p in content)
    return str(content or "")


def last_user_turn(request: GenerationRequest) -> str:
    """The last user turn anywhere in a chat (or the prompt), as sent: what the analyzer reads."""
    if request.kind == "completion":
        return request.prompt or ""
    for m in reversed(request.messages or []):
        if m.get("role") == "user":
            return _text(m.get("content"))
    return ""


def compared_question(request: GenerationRequest) -> str | None:
    """The normalised question the cache compares by meaning (None: the chat does not end with a user turn)."""
    if request.kind == "completion":
        return normalize(request.prompt or "")
    messages = request.messages or []
    if messages and messages[-1].get("role") == "user":
        return normalize(_text(messages[-1].get("content")))
    return None


def embedded_question(request: GenerationRequest) -> str:
    """What the analyzer embeds: the compared question, or the last user turn when there is none.
    Whenever the cache has a compared question it is this very text, so the cache reuses the vector."""
    question = compared_question(request)
    return question if question is not None else normalize(last_user_turn(request))


def skip_reason(request: GenerationRequest, control: CacheControl, config: CacheConfig) -> str | None:
    """Why `request` must not use the cache at all (None: it may)."""
    if control.mode == "bypass":
        return "bypass_requested"
    if request.logprobs:
        return "logprobs"
    if request.n > 1:
        return "n"
    if not is_deterministic(request) and not (control.allow_sampled or config.admit_sampled):
        return "sampled"
    return None


def may_share(request: GenerationRequest) -> bool:
    """Whether identical requests in flight may share one computation (as they would share a cache entry)."""
    return is_deterministic(request) and not request.logprobs and request.n == 1


def check_ttl(control: CacheControl, config: CacheConfig) -> None:
    """A 400 when the request asks for an entry lifetime above the limit."""
    if control.ttl_s is not None and control.ttl_s > config.max_ttl_s:
        raise InvalidRequestError(f"cache.ttl_s is {control.ttl_s:g}, above the limit of {config.max_ttl_s:g} s",
                                  param="cache.ttl_s")


# The reason a candidate is not served when its own audited bound refuses it (`judge_candidate`).
AUDITED = "audited"
# Added to the similarity or score a wrong hit was served at: the trace it is read from rounds them to 4 places.
BOUND_MARGIN = 1e-4


def raised_bound(current: float | None, failed_at: float) -> float:
    """An entry's new bound after an audit found a hit from it wrong at `failed_at`: bounds only rise (relaxing one
    would need evidence an entry's own hits cannot give: each is a different question)."""
    return failed_at if current is None else max(current, failed_at)


class Candidate(StrEnum):
    """The verdict on one entry the vector search proposed."""

    SERVE = "serve"
    NEAR_MISS = "near_miss"  # not served, but close enough to be a draft
    REJECTED = "rejected"  # neither


def search_floor(config: CacheConfig, *, verifying: bool = False) -> float:
    """The lowest similarity worth fetching: the serving threshold (the verifier's proposal floor when a verifier
    decides), or the draft threshold when lower."""
    floor = config.verifier.propose_threshold if verifying else config.similarity_threshold
    if config.draft_threshold is None:
        return floor
    return min(config.draft_threshold, floor)


def vetoed_by(config: CacheConfig, cached_question: str, question: str) -> str | None:
    """The guard that vetoes serving `cached_question`'s answer for `question` (None: none does, or the guards
    are off). Whatever the similarity: `judge_candidate` asks it above the threshold, `infopt calibrate cache`
    of every labelled pair."""
    from serving.cache import guards  # here: the cache package itself imports this module

    if not config.guards:
        return None
    verdict = guards.check(cached_question, question)
    return None if verdict.ok else verdict.reason or "guard"


def judge_candidate(config: CacheConfig, similarity: float, cached_question: str, question: str,
                    floor: float | None = None) -> tuple[Candidate, str | None]:
    """Serve the candidate, keep it as a near miss, or reject it; with the guard's reason when one vetoed it.

    `floor`: the entry's own bound, learned from a failed audit (`CacheEntry.min_similarity`): it serves only
    above it (the reason is then `audited`)."""
    vetoed: str | None = None
    if similarity >= config.similarity_threshold:
        vetoed = vetoed_by(config, cached_question, question)
        if vetoed is None and floor is not None and similarity <= floor:
            vetoed = AUDITED
        if vetoed is None:
            return Candidate.SERVE, None
    if config.draft_threshold is not None and similarity >= config.draft_threshold:
        return Candidate.NEAR_MISS, vetoed
    return Candidate.REJECTED, vetoed


def judge_verified(config: CacheConfig, similarity: float, score: float | None, vetoed: str | None,
                   floor: float | None = None) -> tuple[Candidate, str | None]:
    """The verdict when a verifier decides, with the reason a passing score was refused, as `judge_candidate`.

    Served on a score at or above `verifier.threshold` (`score` None: the candidate was not scored, being below
    the proposal floor, vetoed, or the verifier did not answer) and above the entry's own bound `floor`
    (`CacheEntry.min_score`, learned from a failed audit; a score the threshold passes but the floor refuses gives
    the reason `audited`)."""
    if vetoed is None and score is not None and score >= config.verifier.threshold:
        if floor is None or score > floor:
            return Candidate.SERVE, None
        vetoed = AUDITED
    if config.draft_threshold is not None and similarity >= config.draft_threshold:
        return Candidate.NEAR_MISS, vetoed
    return Candidate.REJECTED, vetoed


def threshold_in_force(config: CacheConfig, calibration: Calibration | None
                       ) -> tuple[CacheConfig, Calibration | None]:
    """The cache configuration serving uses, and the calibration as serving reports it (see the module docstring).

    The reported calibration leaves out a cache part that is not in force (the cache off, or no threshold
    certified), so the version in the route trace and `/healthz` names `+cache-...` only when the calibrated
    threshold decides. A cache part made for another embedder, or with the guards set otherwise, raises
    `CalibrationMismatchError` (serving refuses to start, as for a Scout part made for other models).
    """
    part = calibration.cache if calibration is not None else None
    if part is None:
        return config, calibration
    if not config.enabled:
        return config, calibration.with_cache(None) if calibration.scout is not None else None
    part.check(config.embedder.model, config.embedder.dimension, config.guards, config.verifier.model,
               config.verifier.propose_threshold)
    verified = part.rule == "verifier"
    configured = config.verifier.threshold if verified else config.similarity_threshold
    name = "cache.verifier.threshold" if verified else "cache.similarity_threshold"
    if part.threshold is None:
        logger.warning("calibration %s certified no %s threshold for the semantic cache (false hits <= %g at %g%% "
                       "confidence): %s %g stays, uncalibrated", calibration.version,
                       "verifier" if verified else "similarity", part.epsilon, 100 * (1 - part.delta), name, configured)
        return config, calibration.with_cache(None) if calibration.scout is not None else None
    if verified:
        logger.info("semantic cache: verifier threshold %g from calibration %s (configured: %g)", part.threshold,
                    part.version, configured)
        return config.model_copy(update={"verifier": config.verifier.model_copy(
            update={"threshold": part.threshold})}), calibration
    if part.threshold != config.similarity_threshold:
        logger.info("semantic cache: similarity threshold %g from calibration %s (configured: %g)",
                    part.threshold, part.version, config.similarity_threshold)
    return config.model_copy(update={"similarity_threshold": part.threshold}), calibration


def rejection_reason(answer: CachedAnswer, config: CacheConfig) -> str | None:
    """Why `answer` must not be admitted (None: admit it)."""
    if answer.tier not in ("scout", "validator"):
        return "not_generated"
    if not answer.text.strip():
        return "empty"
    if answer.finish_reason == "length":
        if not config.admit_truncated:
            return "truncated"
    elif answer.finish_reason != "stop":
        return "not_final"
    if answer.tier == "scout" and (answer.confidence or 0.0) < config.admit_scout_min_confidence:
        return "low_confidence"
    return None
