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

What is deterministic and what the compared question is are the cache policy's
(`serving.policy.cache`).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from serving.engines.base import GenerationRequest
from serving.policy.cache import compared_question, normalize


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
    question = compared_question(request)
    context: list[Any]
    if request.kind == "completion":
        context, body = [], question
    else:
        body = _messages(request)
        context = body[:-1] if question is not None else body
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
