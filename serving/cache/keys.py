"""Cache keys: when two requests are the same question.

A request is split into what must match exactly and what may match by meaning:

* ``exact`` — a hash of the normalised request: namespace, model (and the engines'
  fingerprint), kind, every message
  (or the prompt) and the sampling parameters that change the output. Equal ``exact``
  keys are the same request; an exact hit needs no similarity and no guard.
* ``context`` — a hash of everything *around* the question: the system prompt and earlier
  turns (with the kind of request). A semantic hit must have the same context: the same
  question after a different conversation is a different question.
* ``params`` — a hash of the output-changing parameters (temperature, max_tokens, stop, ...):
  a semantic hit must have been generated the same way.
* ``question`` — the normalised last user turn (or the prompt): what is embedded and
  compared by similarity. ``None`` when the request does not end with a user turn, which
  leaves only exact hits possible.

Normalisation is Unicode NFKC plus collapsed whitespace; case is kept ("US" is not "us").
"""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from dataclasses import dataclass
from typing import Any

from serving.engines.base import GenerationRequest

_SPACE = re.compile(r"\s+")


def normalize(text: str) -> str:
    """NFKC, whitespace runs collapsed to one space, ends stripped."""
    return _SPACE.sub(" ", unicodedata.normalize("NFKC", text)).strip()


def digest(obj: Any) -> str:
    """sha256 of the canonical JSON of `obj`."""
    data = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(data.encode()).hexdigest()


def output_params(request: GenerationRequest) -> dict[str, Any]:
    """The sampling parameters that change what is generated (or how it is returned)."""
    return {
        "max_tokens": request.max_tokens,
        "temperature": request.temperature,
        "top_p": request.top_p,
        "seed": request.seed,
        "stop": sorted(request.stop),
        "presence_penalty": request.presence_penalty,
        "frequency_penalty": request.frequency_penalty,
        "logprobs": request.logprobs,
        "top_logprobs": request.top_logprobs if request.logprobs else 0,
    }


def is_deterministic(request: GenerationRequest) -> bool:
    """Greedy or seeded: the same request gives the same answer, so a cached one is faithful."""
    return request.temperature == 0 or request.seed is not None


@dataclass(frozen=True)
class CacheKey:
    """The parts of a request the cache matches on (see the module docstring)."""

    namespace: str
    model: str
    fingerprint: str
    exact: str
    context: str
    params: str
    question: str | None


def _messages(request: GenerationRequest) -> list[dict[str, str]]:
    return [{"role": m["role"], "content": normalize(str(m.get("content") or ""))} for m in request.messages or []]


def cache_key(
    request: GenerationRequest, *, model: str, namespace: str = "default", fingerprint: str = ""
) -> CacheKey:
    """The key of `request` to routing model `model` in `namespace` (a tenant or an application).

    `fingerprint` names the engines behind the route (their model ids): answers cached for
    other engines never match, so a model upgrade starts from a cold cache, not a stale one.
    """
    params = output_params(request)
    if request.kind == "completion":
        question: str | None = normalize(request.prompt or "")
        context: list[Any] = []
        body: Any = question
    else:
        messages = _messages(request)
        body = messages
        if messages and messages[-1]["role"] == "user":
            question, context = messages[-1]["content"], messages[:-1]
        else:
            question, context = None, messages
    return CacheKey(
        namespace=namespace,
        model=model,
        fingerprint=fingerprint,
        exact=digest(
            {"ns": namespace, "model": model, "fp": fingerprint, "kind": request.kind, "body": body, "params": params}
        ),
        context=digest({"kind": request.kind, "context": context}),
        params=digest(params),
        question=question,
    )
